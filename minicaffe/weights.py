"""Loading and saving a net's learnable blobs (Caffe's CopyTrainedLayersFrom,
ToProto and ToHDF5).

Binary ``.caffemodel`` (a NetParameter whose layers carry ``blobs``):
  * source layers are matched to the net's layers by name (the first net
    layer of that name); source layers the net lacks are skipped, net layers
    the file lacks keep their values -- named in one warning, or an
    IncompleteWeightsError with ``strict`` (a file truncated at a layer
    boundary decodes cleanly: only this comparison with the net can tell);
  * a matched layer must have the same number of blobs, each of the same shape
    (legacy 4-D num/channels/height/width are right-aligned: 1x1xMxK fits an
    (M, K) blob) and holding shape-many values (``data`` or ``double_data``);
    stored diffs are copied too, as Caffe's Blob::FromProto does;
  * V1 files (``layers``, and V0 ``layers { layer { ... } }``) are read by
    layer name and blobs.
HDF5 (``/data/<layer>/<i>`` datasets, ``/diff/...`` with write_diff): matched
by name (the last net layer of that name, as Caffe's layer_names_index_);
shapes must be equal; a missing dataset is allowed only for a param the layer
shares from another layer (only owners are saved).

Every check runs before any value is copied, so a file that does not fit
leaves the net unchanged; errors are :class:`WeightsError` naming the file,
the layer, the blob index and both shapes.  Files are written to a temporary
file beside the target and renamed over it, so a crash never leaves a
half-written file under the real name.  Big blobs are serialized straight
from their NumPy buffers (no Python float lists).
"""
import logging
import os

import numpy as np
from google.protobuf.message import DecodeError

from . import fileio
from .errors import IncompleteWeightsError, WeightsError
from .protoio import pb, temp_path

log = logging.getLogger('minicaffe')

_HDF5_SUFFIXES = ('.h5', '.hdf5')


# ================================================================ dispatch
def _h5py_says_hdf5(path):
    """Caffe's H5Fis_hdf5 test."""
    try:
        import h5py
        return bool(h5py.is_hdf5(path))
    except (ImportError, OSError, ValueError):
        return False


def is_hdf5_file(path):
    """True for HDF5 files, and for files named .h5/.hdf5 whatever their content."""
    return _h5py_says_hdf5(path) or os.fspath(path).lower().endswith(_HDF5_SUFFIXES)


def load_weights(net, path, strict=False):
    """Copy trained blobs from ``path`` (.caffemodel or HDF5) into ``net``.

    Returns the names of the net's learnable layers the file does not fill (they
    keep their fillers' values); with ``strict`` such a file is a WeightsError
    and nothing is copied."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise WeightsError('weights file %s does not exist' % path)
    # (HDF5 files may pass protobuf's 2 GB; a binary caffemodel is bounded when it is read)
    fileio.check_regular_file(path, 'weights file', WeightsError, limit=float('inf'))
    if _h5py_says_hdf5(path):
        return load_hdf5(net, path, strict)
    if path.lower().endswith(_HDF5_SUFFIXES):
        # Named like HDF5 but not HDF5: Caffe would read it as a binary proto.
        try:
            return load_caffemodel(net, path, strict)
        except IncompleteWeightsError:
            raise                                   # it is a caffemodel, only incomplete
        except WeightsError as e:
            raise WeightsError('weights file %s is neither a readable HDF5 file (truncated or'
                               ' corrupt?) nor a binary caffemodel (%s)' % (path, e)) from None
    return load_caffemodel(net, path, strict)


def unfilled_layers(net, filled_layer_ids):
    """Names of the net's layers with learnable blobs that a weights file did not
    fill: neither the layer itself nor, for a shared param, its owner's layer was
    in the file.  Blobs written in the prototxt itself count as filled."""
    filled = set(filled_layer_ids)
    owners = net.param_owners
    indices = net.param_layer_indices
    covered = [lid in filled or len(net.layers[lid].layer_param.blobs) > 0 for lid, _ in indices]
    names = []
    for pid, (lid, _) in enumerate(indices):
        own = owners[pid]
        if covered[pid] or (own >= 0 and covered[own]):
            continue
        name = net._layer_names[lid]
        if name not in names:
            names.append(name)
    return names


def check_unfilled(net, path, missing, strict):
    """The strict check (a WeightsError listing the layers), run before any value is copied."""
    if strict and missing:
        raise IncompleteWeightsError('%s: the weights file lacks %d learnable layer(s) of net %s: %s'
                                     ' (a file truncated at a layer boundary, or weights of another net)'
                                     % (path, len(missing), net.source, ', '.join(missing)))


def load_weight_files(net, files, log_each=None):
    """Load several weights files in turn (Caffe's comma-separated ``--weights``);
    one warning names the learnable layers none of them filled.  ``log_each(path)``
    is called before each file."""
    missing = None
    for path in files:
        if log_each is not None:
            log_each(path)
        left = load_weights(net, path)
        missing = left if missing is None else [n for n in missing if n in left]
    warn_unfilled(net, missing or [], ', '.join(files))
    return missing or []


def warn_unfilled(net, missing, what):
    """One warning naming the layers left at their fillers after loading ``what``."""
    if missing:
        log.warning('%s: %d learnable layer(s) of net %s were not in the weights and keep their'
                    ' filler values: %s', what, len(missing), net.source, ', '.join(missing))


# ================================================================ binary
def _looks_like_text(raw):
    head = raw[:256].lstrip()
    if not head:
        return False
    try:
        text = head.decode('utf-8')
    except UnicodeDecodeError:
        return False
    return all(c.isprintable() or c in '\r\n\t' for c in text) and (
        text.startswith(('name', 'layer', 'input', '#', 'force_backward', 'state')))


def _hint(path, raw):
    if path.endswith('.solverstate'):
        return (' (a .solverstate holds a solver\'s history, not weights: resume with'
                ' solver.restore(), load weights from the matching .caffemodel)')
    if _looks_like_text(raw):
        return ' (it looks like a text prototxt; weights files are binary .caffemodel or HDF5)'
    return ''


def read_net_param_binary(path):
    """Parse a binary NetParameter file; WeightsError naming the file if it is not one."""
    raw = fileio.read_bytes(path, 'weights file', WeightsError)
    param = pb.NetParameter()
    try:
        param.ParseFromString(raw)
    except (DecodeError, RuntimeError, ValueError) as e:
        hint = _hint(path, raw) or ' (the file is truncated or corrupt)'
        raise WeightsError('weights file %s is not a valid binary caffemodel: the NetParameter'
                           ' message does not decode (%s)%s' % (path, e, hint)) from None
    if not len(param.layer) and not len(param.layers):
        what = 'is empty' if not raw else 'holds no layers'
        hint = _hint(path, raw)
        raise WeightsError('weights file %s %s; it is not a trained caffemodel%s' % (path, what, hint))
    return param


def source_layers(param, path='<weights>'):
    """[(name, [BlobProto...])] of a NetParameter, V2, V1 or V0."""
    if len(param.layers):
        if len(param.layer):
            log.warning('%s: has both V1 "layers" and current "layer" fields; as Caffe does, the'
                        ' "layer" fields are ignored', path)
        out = []
        for l in param.layers:
            if l.HasField('layer'):          # V0 inside V1
                out.append((l.layer.name, list(l.layer.blobs)))
            else:
                out.append((l.name, list(l.blobs)))
        return out
    return [(l.name, list(l.blobs)) for l in param.layer]


def _proto_shape(bp):
    """(shape, legacy): Caffe's ShapeEquals reads the legacy 4-D fields first."""
    if any(bp.HasField(f) for f in ('num', 'channels', 'height', 'width')):
        return (bp.num, bp.channels, bp.height, bp.width), True
    return tuple(int(d) for d in bp.shape.dim), False


def _shape_equals(blob_shape, proto_shape, legacy):
    blob_shape = tuple(blob_shape)
    if legacy:
        if len(blob_shape) > 4:
            return False
        return (1,) * (4 - len(blob_shape)) + blob_shape == tuple(proto_shape)
    return blob_shape == tuple(proto_shape)


def _fmt(shape):
    return '(%s)' % ', '.join(str(d) for d in shape) if len(shape) != 1 else '(%d,)' % shape[0]


def _first_layer_index(net):
    first = {}
    for i, name in enumerate(net._layer_names):
        first.setdefault(name, i)
    return first


def _unknown_fields(msg, prefix, out, depth=0):
    """Append 'path (field N)' for each field of msg (and its sub-messages, blobs
    excepted) that this schema does not know or that came with another wire type."""
    try:
        from google.protobuf.unknown_fields import UnknownFieldSet
        unknown = UnknownFieldSet(msg)
    except Exception:                # an old protobuf without the API: nothing to report
        return out
    for f in unknown:
        out.append('%sfield %d' % (prefix, f.field_number))
    if depth > 8:
        return out
    for fd, value in msg.ListFields():
        if fd.name == 'blobs' or fd.message_type is None:
            continue
        items = value if getattr(fd, 'is_repeated', False) or \
            getattr(fd, 'label', None) == 3 else [value]
        for v in items:
            _unknown_fields(v, '%s%s (%d).' % (prefix, fd.name, fd.number), out, depth + 1)
    return out


def warn_foreign_fields(param, path='<weights>', names=None):
    """Log one warning for layers (of ``names``, default all) carrying fields this
    schema does not read -- caffemodels written by Caffe forks with a renumbered
    caffe.proto (the LRCN forks store recurrent_param as field 140 or 134, which
    here are elu_param / log_param).  Only names and blobs are used from them."""
    found = []
    for l in list(param.layer) + [l.layer if l.HasField('layer') else l for l in param.layers]:
        if names is not None and l.name not in names:
            continue
        bad = _unknown_fields(l, '', [])
        if bad:
            found.append('%s: %s' % (l.name, ', '.join(bad[:4]) + (', ...' if len(bad) > 4 else '')))
    if found:
        log.warning('%s: %d layer(s) carry fields this caffe.proto does not know or reads with'
                    ' another type (a caffemodel from a Caffe fork with renumbered fields?); they are'
                    ' ignored -- layers are matched by name and only their blobs are read: %s%s',
                    path, len(found), '; '.join(found[:5]), '; ...' if len(found) > 5 else '')
    return found


def log_ignored(names, path, net):
    """Caffe's "Ignoring source layer X", one line per weights file rather than per layer
    (a deploy net loading training weights skips dozens)."""
    if len(names) == 1:
        log.info('Ignoring source layer %s', names[0], stacklevel=2)
    elif names:
        log.info('Ignoring source layers %s (%d layers of %s that net %s does not have)',
                 ', '.join('%s' % n for n in names), len(names), path, net.source, stacklevel=2)


def copy_from_net_param(net, param, path='<weights>', strict=False):
    """Caffe's Net::CopyTrainedLayersFrom(NetParameter).  Fields a fork's
    renumbered schema put elsewhere are ignored with a warning.  Returns the
    learnable layers left unfilled (see :func:`load_weights`)."""
    first = _first_layer_index(net)
    warn_foreign_fields(param, path, set(first))
    plan = []
    used = 0
    filled = []
    ignored = []
    for name, blobs in source_layers(param, path):
        lid = first.get(name)
        if lid is None:
            ignored.append(name)
            continue
        target = net.layers[lid].blobs
        if len(target) != len(blobs):
            raise WeightsError('%s: incompatible number of blobs for layer "%s": the file has %d,'
                               ' the net\'s layer (%s) has %d'
                               % (path, name, len(blobs), net.layers[lid].type, len(target)))
        for j, (tb, bp) in enumerate(zip(target, blobs)):
            shape, legacy = _proto_shape(bp)
            if not _shape_equals(tb.shape, shape, legacy):
                raise WeightsError(
                    '%s: cannot copy param %d weights from layer "%s"; shape mismatch. Source param'
                    ' shape is %s%s; target param shape is %s. To learn this layer\'s parameters from'
                    ' scratch rather than copying from a saved net, rename the layer.'
                    % (path, j, name, _fmt(shape), ' (legacy num/channels/height/width)' if legacy else '',
                       _fmt(tb.shape)))
            count = tb.count
            n_data = len(bp.double_data) if len(bp.double_data) else len(bp.data)
            if n_data != count:
                raise WeightsError('%s: param %d of layer "%s" has shape %s (%d values) but the file'
                                   ' holds %d values for it' % (path, j, name, _fmt(shape), count, n_data))
            n_diff = len(bp.double_diff) if len(bp.double_diff) else len(bp.diff)
            if n_diff and n_diff != count:
                raise WeightsError('%s: param %d of layer "%s" has %d values but the file holds %d'
                                   ' diff values for it' % (path, j, name, count, n_diff))
            plan.append((tb, bp))
        used += 1
        filled.append(lid)
    log_ignored(ignored, path, net)
    missing = unfilled_layers(net, filled)
    check_unfilled(net, path, missing, strict)
    if used == 0:
        log.warning('%s: no layer of the weights file matches a layer of net %s by name; nothing'
                    ' was copied', path, net.source)
    for tb, bp in plan:
        if len(bp.double_data):
            tb.data[...] = np.asarray(bp.double_data, np.float64).reshape(tb.shape)
        else:
            tb.data[...] = np.asarray(bp.data, np.float32).reshape(tb.shape)
        if len(bp.double_diff):
            tb.diff[...] = np.asarray(bp.double_diff, np.float64).reshape(tb.shape)
        elif len(bp.diff):
            tb.diff[...] = np.asarray(bp.diff, np.float32).reshape(tb.shape)
    return missing


def load_caffemodel(net, path, strict=False):
    path = os.fspath(path)
    param = read_net_param_binary(path)
    return copy_from_net_param(net, param, path, strict)


# ---------------------------------------------------------------- writing
def _varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _tag(field, wire_type):
    return _varint((field << 3) | wire_type)


_LEN = 2


def _packed_floats(field, arr):
    """Tag + length of a packed float field, and the little-endian payload (a buffer)."""
    payload = np.ascontiguousarray(arr, dtype='<f4').reshape(-1)
    return _tag(field, _LEN) + _varint(payload.nbytes), payload


def _blob_parts(shape, data, diff=None):
    """The pieces of one serialized BlobProto (Caffe's Blob::ToProto): shape, data, [diff]."""
    head = b''
    if len(shape):
        dims = b''.join(_varint(int(d)) for d in shape)
        shape_msg = _tag(1, _LEN) + _varint(len(dims)) + dims
        head = _tag(7, _LEN) + _varint(len(shape_msg)) + shape_msg
    parts = [head]
    for field, arr in ((5, data), (6, diff)):
        if arr is None or arr.size == 0:
            continue
        t, payload = _packed_floats(field, arr)
        parts.append(t)
        parts.append(payload)
    return parts


def _nbytes(part):
    return part.nbytes if isinstance(part, np.ndarray) else len(part)


def blob_proto_bytes(data, diff=None):
    """A serialized BlobProto (shape, packed data[, diff]) built from arrays, fast."""
    data = np.asarray(data)
    return b''.join(p.tobytes() if isinstance(p, np.ndarray) else p
                    for p in _blob_parts(data.shape, data, diff))


def fill_blob_proto(bp, data, diff=None):
    """Fill a BlobProto from arrays without Python float lists (for big blobs)."""
    bp.MergeFromString(blob_proto_bytes(data, diff))
    return bp


def _net_chunks(net, write_diff):
    """The serialized NetParameter (Caffe's Net::ToProto), piece by piece."""
    name = (net.name or '').encode('utf-8')
    yield _tag(1, _LEN) + _varint(len(name)) + name
    for layer in net.layers:
        lp = pb.LayerParameter()
        lp.CopyFrom(layer.layer_param)
        del lp.blobs[:]
        body = lp.SerializeToString()
        blob_msgs = []
        for b in layer.blobs:
            parts = _blob_parts(b.shape, b.data, b.diff if write_diff else None)
            size = sum(_nbytes(p) for p in parts)
            blob_msgs.append([_tag(7, _LEN) + _varint(size)] + parts)
        total = len(body) + sum(_nbytes(p) for m in blob_msgs for p in m)
        yield _tag(100, _LEN) + _varint(total) + body
        for m in blob_msgs:
            for p in m:
                yield p


def write_chunks_atomic(path, chunks):
    """Write ``chunks`` (bytes or C-contiguous arrays) to a temp file beside
    ``path``, fsync, then rename it over ``path``."""
    path = os.fspath(path)
    tmp = temp_path(path)
    try:
        write_chunks_synced(tmp, chunks)
        os.replace(tmp, path)
    except OSError as e:
        raise WeightsError('cannot write weights file %s: %s' % (path, e.strerror or e)) from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_chunks_synced(path, chunks):
    """Write ``chunks`` to ``path`` and fsync it (no rename; OSError on failure)."""
    with open(path, 'wb') as f:
        for c in chunks:
            f.write(c.data if isinstance(c, np.ndarray) else c)
        f.flush()
        os.fsync(f.fileno())


def write_caffemodel_synced(net, path, write_diff=False):
    """The .caffemodel of ``net`` written to ``path`` itself and fsynced (a
    snapshot writes the model and the state to temporary names, then renames)."""
    write_chunks_synced(path, _net_chunks(net, bool(write_diff)))


def save_caffemodel(net, path, write_diff=False):
    """Write ``net``'s layers and blobs as a binary NetParameter (Caffe's Net::ToProto)."""
    write_chunks_atomic(path, _net_chunks(net, bool(write_diff)))


def net_to_proto(net, write_diff=False):
    """Net::ToProto as a NetParameter message, built without Python float lists."""
    return pb.NetParameter.FromString(b''.join(
        c.tobytes() if isinstance(c, np.ndarray) else c for c in _net_chunks(net, bool(write_diff))))


# ================================================================ HDF5
def _param_ids(net):
    """{(layer id, blob index): net param id} (Caffe's param_id_vecs_)."""
    return {lp: i for i, lp in enumerate(net.param_layer_indices)}


def save_hdf5(net, path, write_diff=False):
    """Caffe's Net::ToHDF5: /data/<layer>/<i> for owned params, /diff/<layer>/<i> for all."""
    path = os.fspath(path)
    tmp = temp_path(path)
    try:
        write_hdf5_synced(net, tmp, write_diff)
        os.replace(tmp, path)
    except OSError as e:
        raise WeightsError('cannot write HDF5 weights file %s: %s' % (path, e.strerror or e)) from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_hdf5_synced(net, path, write_diff=False):
    """Net::ToHDF5 written to ``path`` itself and fsynced (OSError on failure)."""
    import h5py
    owners = net.param_owners
    ids = _param_ids(net)
    with h5py.File(path, 'w') as f:
        data_g = f.create_group('data')
        diff_g = f.create_group('diff') if write_diff else None
        for lid, layer in enumerate(net.layers):
            name = layer.name
            if name in data_g:
                log.warning('%s: net has more than one layer named "%s"; only the first is saved'
                            ' to HDF5', path, name)
                continue
            ldata = data_g.create_group(name)
            ldiff = diff_g.create_group(name) if write_diff else None
            for j, b in enumerate(layer.blobs):
                pid = ids.get((lid, j))
                if pid is None or owners[pid] == -1:
                    ldata.create_dataset(str(j), data=np.ascontiguousarray(b.data, np.float32))
                if write_diff:
                    ldiff.create_dataset(str(j), data=np.ascontiguousarray(b.diff, np.float32))
        f.flush()
    with open(path, 'rb+') as fh:
        os.fsync(fh.fileno())


def load_hdf5(net, path, strict=False):
    """Caffe's Net::CopyTrainedLayersFromHDF5; returns the learnable layers left
    unfilled (see :func:`load_weights`)."""
    import h5py
    path = os.fspath(path)
    if not os.path.exists(path):
        raise WeightsError('weights file %s does not exist' % path)
    # HDF5 files are not bounded by protobuf's limit; their datasets are checked against the net.
    fileio.check_regular_file(path, 'weights file', WeightsError, limit=float('inf'))
    try:
        f = h5py.File(path, 'r')
    except (OSError, ValueError) as e:
        raise WeightsError('weights file %s is not a readable HDF5 file (truncated or corrupt?): %s'
                           % (path, e)) from None
    owners = net.param_owners
    ids = _param_ids(net)
    plan = []
    filled = []
    ignored = []
    try:
        with f:
            data_g = f.get('data')
            if not isinstance(data_g, h5py.Group):
                raise WeightsError('HDF5 weights file %s has no "data" group (Caffe stores weights as'
                                   ' /data/<layer>/<blob index>)' % path)
            for name in data_g.keys():
                lid = net._layer_index.get(name)
                if lid is None:
                    ignored.append(name)
                    continue
                target = net.layers[lid].blobs
                lg = data_g[name]
                if not isinstance(lg, h5py.Group):
                    raise WeightsError('%s: /data/%s is not a group of blobs' % (path, name))
                if len(lg.keys()) > len(target):
                    raise WeightsError('%s: incompatible number of blobs for layer "%s": the file has'
                                       ' %d, the net\'s layer has %d' % (path, name, len(lg.keys()), len(target)))
                for j, tb in enumerate(target):
                    ds = lg.get(str(j))
                    if ds is None:
                        pid = ids.get((lid, j))
                        if pid is not None and owners[pid] != -1:
                            continue        # shared from another layer: saved with its owner
                        raise WeightsError('%s: incompatible number of blobs for layer "%s": the file'
                                           ' has no /data/%s/%d (the net\'s layer has %d blobs)'
                                           % (path, name, name, j, len(target)))
                    if not isinstance(ds, h5py.Dataset) or ds.dtype.kind not in 'fiu':
                        raise WeightsError('%s: /data/%s/%d is not a float or integer dataset'
                                           % (path, name, j))
                    if tuple(ds.shape) != tuple(tb.shape):
                        raise WeightsError(
                            '%s: cannot copy param %d weights from layer "%s"; shape mismatch. Source'
                            ' param shape is %s; target param shape is %s. To learn this layer\'s'
                            ' parameters from scratch rather than copying from a saved net, rename'
                            ' the layer.' % (path, j, name, _fmt(ds.shape), _fmt(tb.shape)))
                    plan.append((tb, ds))
                filled.append(lid)
            missing = unfilled_layers(net, filled)
            check_unfilled(net, path, missing, strict)
            values = []
            for tb, ds in plan:
                v = np.empty(tb.shape, np.float32)
                if v.size:
                    ds.read_direct(v)         # HDF5 converts to float32 while reading
                values.append(v)
        for (tb, _), v in zip(plan, values):     # all read: now copy (a bad file changes nothing)
            tb.data[...] = v
        log_ignored(ignored, path, net)
        return missing
    except (OSError, KeyError, RuntimeError, ValueError, TypeError, AttributeError) as e:
        # (WeightsError raised above is none of these.)  h5py reports a damaged file's internals with any of these
        raise WeightsError('cannot read HDF5 weights file %s (truncated or corrupt?): %s'
                           % (path, e)) from None
