"""Solver snapshots in Caffe's two formats, written atomically.

BINARYPROTO: ``<prefix>_iter_N.caffemodel`` (NetParameter) and
``<prefix>_iter_N.solverstate`` (SolverState: iter, learned_net, history,
current_step).  HDF5: ``.caffemodel.h5`` and ``.solverstate.h5`` with
datasets ``iter``, ``learned_net``, ``current_step`` and group ``history``
holding ``0``, ``1``, ….  Both files go to temporary names first and are
renamed into place (model, then state), so a crash mid-snapshot leaves the
previous one intact, and a failure (full disk) leaves neither file of the
new pair.  Temporary files of a killed run are removed when the next run
starts under the same prefix.

History on the device (GPU mode) is copied to the host for writing; a restore
reads it on the host and, in GPU mode, puts it back on the device.
"""
import glob
import os
import re

import h5py
import numpy as np

from .. import fileio, protoio
from ..blob import _checked_shape
from ..errors import MinicaffeError, WeightsError
from ..protoio import pb


def filename(solver, extension):
    return '%s_iter_%d%s' % (solver.param.snapshot_prefix, solver.iter, extension)


def snapshot(solver):
    """Write the .caffemodel/.solverstate pair so that both exist under their
    final names or neither does: both go to temporary files (fsynced), then the
    model is renamed into place, then the state.  If anything fails (a full
    disk, an I/O error) the temporary files and a model already renamed are
    removed and a :class:`SnapshotError` says so; the previous snapshot is
    untouched.  Returns (model path, state path)."""
    from .. import weights
    p = solver.param
    d = os.path.dirname(p.snapshot_prefix)
    hdf5 = p.snapshot_format == pb.SolverParameter.HDF5
    kind = 'HDF5' if hdf5 else 'binary proto'
    model = filename(solver, '.caffemodel.h5' if hdf5 else '.caffemodel')
    state = filename(solver, '.solverstate.h5' if hdf5 else '.solverstate')
    model_tmp, state_tmp = protoio.temp_path(model), protoio.temp_path(state)
    placed = []
    try:
        if d and not os.path.isdir(d):
            os.makedirs(d, exist_ok=True)
        solver.log('Snapshotting to %s file %s' % (kind, model))
        if hdf5:
            weights.write_hdf5_synced(solver.net, model_tmp, p.snapshot_diff)
        else:
            weights.write_caffemodel_synced(solver.net, model_tmp, p.snapshot_diff)
        solver.log('Snapshotting solver state to %s file %s' % (kind, state))
        if hdf5:
            _write_state_hdf5(solver, state_tmp, model)
        else:
            msg = pb.SolverState(iter=solver.iter, learned_net=model, current_step=solver.current_step)
            for h in solver.host_history():
                protoio.blob_to_proto(h, msg.history.add())
            protoio.write_bytes_synced(state_tmp, msg.SerializeToString())
        os.replace(model_tmp, model)
        placed.append(model)
        os.replace(state_tmp, state)
        placed.append(state)
        _fsync_folder(d or '.')
    except (OSError, RuntimeError) as e:      # h5py reports some write failures as RuntimeError
        for f in [model_tmp, state_tmp] + placed:
            _remove_quietly(f)
        raise SnapshotError('cannot write snapshot %s + %s: %s; neither file was kept (the previous'
                            ' snapshot, if any, is intact)'
                            % (model, os.path.basename(state), getattr(e, 'strerror', None) or e)) from None
    return model, state


def check_prefix_writable(prefix, source):
    """Caffe's CheckSnapshotWritePermissions: a probe file under ``prefix``
    (its folder is created when missing); a clear error when it cannot be written."""
    folder = os.path.dirname(prefix) or '.'
    probe = '%s_iter_0.tempfile' % prefix
    try:
        os.makedirs(folder, exist_ok=True)
        with open(probe, 'wb'):
            pass
        os.remove(probe)
    except OSError as e:
        raise MinicaffeError("%s: cannot write to snapshot prefix '%s' (%s). Make sure that the"
                             " folder exists and is writable." % (source, prefix, e.strerror or e)) from None


class SnapshotError(MinicaffeError):
    """A snapshot could not be written (full disk, I/O error); nothing half-written is left."""


def _remove_quietly(path):
    try:
        os.remove(path)
    except OSError:
        pass


def _fsync_folder(folder):
    """Make the renames durable (POSIX: fsync the directory); best effort."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_TEMP = re.compile(r'\.tmp-(\d+)$')


def remove_stale_temp_files(prefix, log=None):
    """Remove ``<prefix>_iter_*.tmp-<pid>`` files whose writer is no longer
    running (left by a run killed mid-snapshot, e.g. by SIGKILL).  A file of a
    live process (another run writing under the same prefix) is kept.  Returns
    the removed paths."""
    removed = []
    if not prefix:
        return removed
    for f in glob.glob(glob.escape(prefix) + '_iter_*.tmp-*'):
        m = _TEMP.search(f)
        if not m or not os.path.isfile(f) or _process_alive(int(m.group(1))):
            continue
        try:
            os.remove(f)
        except OSError:
            continue
        removed.append(f)
        if log is not None:
            log('Removed %s, a temporary file left by process %s, which is no longer running'
                % (f, m.group(1)))
    return removed


def _process_alive(pid):
    if pid == os.getpid():
        return True
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:             # EPERM: it exists, owned by someone else
        return True
    return True


def _write_state_hdf5(solver, path, model):
    """The HDF5 solver state written to ``path`` itself and fsynced."""
    with h5py.File(path, 'w') as f:
        f.create_dataset('iter', data=np.array([solver.iter], np.int32))
        _save_string(f, 'learned_net', model)
        f.create_dataset('current_step', data=np.array([solver.current_step], np.int32))
        g = f.create_group('history')
        for i, h in enumerate(solver.host_history()):
            g.create_dataset(str(i), data=h)
    with open(path, 'rb+') as fh:        # on disk before it takes the final name
        os.fsync(fh.fileno())


def _save_string(f, name, text):
    """A scalar NUL-terminated fixed-length string, as HDF5's H5LTmake_dataset_string
    writes it (Caffe's hdf5_save_string); Caffe reads it back with H5LTread_dataset_string
    into a buffer of the stored size and expects the terminator inside it."""
    raw = text.encode('utf-8')
    tid = h5py.h5t.C_S1.copy()
    tid.set_size(len(raw) + 1)
    tid.set_strpad(h5py.h5t.STR_NULLTERM)
    space = h5py.h5s.create(h5py.h5s.SCALAR)
    ds = h5py.h5d.create(f.id, name.encode('ascii'), tid, space)
    ds.write(h5py.h5s.ALL, h5py.h5s.ALL, np.array(raw + b'\0', dtype='S%d' % (len(raw) + 1)), mtype=tid)


def _learned_net_path(state_path, learned):
    # Caffe opens learned_net relative to the working directory; a snapshot
    # moved with its folder is found beside the state file too.
    if os.path.exists(learned):
        return learned
    alt = os.path.join(os.path.dirname(state_path), os.path.basename(learned))
    return alt if os.path.exists(alt) else learned


# What Caffe's SnapshotSolverState always writes (iter, learned_net, current_step and
# one history blob per learnable param): a state without one of them is truncated
# or was not written by a solver, and restoring it would resume silently wrong.
_REQUIRED = ('iter', 'learned_net', 'current_step')


def _h5_int(f, path, name):
    """The first element of the integer dataset ``name``, read alone (a damaged
    file may declare any size)."""
    ds = f.get(name)
    if not isinstance(ds, h5py.Dataset) or ds.dtype.kind not in 'iu' or ds.size < 1:
        raise WeightsError('%s is not a valid HDF5 solver state: "%s" is not an integer dataset'
                           % (path, name))
    return int(ds[()] if ds.ndim == 0 else ds[(0,) * ds.ndim])


def _h5_string(f, path, name):
    ds = f.get(name)
    if not isinstance(ds, h5py.Dataset) or ds.dtype.kind not in 'SOU' or ds.size != 1:
        raise WeightsError('%s is not a valid HDF5 solver state: "%s" is not a string' % (path, name))
    value = ds[()] if ds.ndim == 0 else ds[(0,) * ds.ndim]
    return value.decode('utf-8', 'replace') if isinstance(value, bytes) else str(value)


def _read_state_hdf5(path, want):
    """(iter, learned_net, current_step, history arrays); each history dataset's
    shape is checked (and must hold as many values as ``want[i]``) before it is read."""
    with h5py.File(path, 'r') as f:
        missing = [k for k in _REQUIRED + ('history',) if k not in f]
        if missing:
            raise WeightsError('%s is not a complete solver state: it lacks %s (Caffe always writes'
                               ' iter, learned_net, current_step and history; truncated?)'
                               % (path, ', '.join(missing)))
        it, step = _h5_int(f, path, 'iter'), _h5_int(f, path, 'current_step')
        learned = _h5_string(f, path, 'learned_net')
        g = f['history']
        if not isinstance(g, h5py.Group):
            raise WeightsError('%s is not a valid HDF5 solver state: "history" is not a group' % path)
        _check_history_count(path, len(g), want)
        hist = []
        for i, dst in enumerate(want):
            ds = g.get(str(i))
            if not isinstance(ds, h5py.Dataset) or ds.dtype.kind not in 'fiu':
                raise WeightsError('%s: history/%d is not a numeric dataset' % (path, i))
            try:
                shape = _checked_shape(ds.shape)
            except ValueError as e:
                raise WeightsError('%s: history blob %d: %s' % (path, i, e)) from None
            _check_history_size(path, i, int(np.prod(shape, dtype=np.int64)), dst)
            arr = np.empty(shape, np.float32)
            if arr.size:
                ds.read_direct(arr)
            hist.append(arr)
    return it, learned, step, hist


def _check_history_count(path, n, want):
    if n != len(want):
        raise WeightsError('%s holds %d history blobs but this solver on this net needs %d'
                           ' (snapshot from another solver type or net?)' % (path, n, len(want)))


def _check_history_size(path, i, n, dst):
    if n != dst.size:
        raise WeightsError('%s: history blob %d has %d values, expected %d (shape %s)'
                           % (path, i, n, dst.size, dst.shape))


def restore(solver, path):
    if not os.path.exists(path):
        raise WeightsError('solver state %s does not exist' % path)
    fileio.check_regular_file(path, 'solver state', WeightsError,
                              limit=float('inf') if path.endswith('.h5') else None)
    want = solver.history
    if path.endswith('.h5'):
        try:
            it, learned, step, hist = _read_state_hdf5(path, want)
        except (OSError, KeyError, ValueError, IndexError, RuntimeError, TypeError, AttributeError) as e:
            raise WeightsError('%s is not a valid HDF5 solver state: %s' % (path, e)) from None
    else:
        state = protoio.read_binary(path, pb.SolverState, 'solver state')
        missing = [k for k in _REQUIRED if not state.HasField(k)]
        if missing:
            raise WeightsError('%s is not a complete solver state: it lacks %s (Caffe always writes'
                               ' iter, learned_net and current_step; truncated?)'
                               % (path, ', '.join(missing)))
        it, learned, step = state.iter, state.learned_net, state.current_step
        _check_history_count(path, len(state.history), want)
        hist = []
        for i, (b, dst) in enumerate(zip(state.history, want)):
            arr = protoio.blob_proto_array(b, '%s history blob %d' % (path, i))
            _check_history_size(path, i, arr.size, dst)
            hist.append(arr)
    if isinstance(learned, bytes):      # proto2 hands back invalid UTF-8 as bytes
        learned = learned.decode('utf-8', 'replace')
    if not learned:
        raise WeightsError('%s: its learned_net is empty, so it names no weights to resume from'
                           ' (a solver state holds only the solver\'s history; the weights are in'
                           ' the .caffemodel written with it)' % path)
    try:
        # a snapshot's weights hold every layer: a missing one means a truncated file
        solver.net.copy_from(_learned_net_path(path, learned), strict=True)
    except MinicaffeError as e:
        raise type(e)('solver state %s: loading its learned_net: %s' % (path, e)) from None
    # Into host arrays first (all checked above, so a bad file changes nothing),
    # then onto the device when the mode is GPU.
    host = solver.host_history()
    for dst, src in zip(host, hist):
        dst[...] = src.reshape(dst.shape)
    solver.history = host
    solver._place_history()
    solver.iter = it
    solver.current_step = step
    solver.log('Restored solver state from %s (iteration %d)' % (path, it))


_SNAP = re.compile(r'_iter_(\d+)\.solverstate(\.h5)?$')


def newest(prefix):
    """The newest snapshot state file under ``prefix`` (for ``--snapshot auto``)."""
    best = None
    for f in glob.glob(glob.escape(prefix) + '_iter_*.solverstate*'):
        m = _SNAP.search(f)
        if m and (best is None or int(m.group(1)) > best[0]):
            best = (int(m.group(1)), f)
    return best[1] if best else None
