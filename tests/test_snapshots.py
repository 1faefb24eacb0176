"""Snapshots: round trip in both formats, Caffe's file layouts, atomic writes
(a crash or a kill mid-write leaves the previous snapshot intact), and
bit-for-bit resume in a new process."""
import glob
import os
import signal
import subprocess
import sys

import h5py
import numpy as np
import pytest

from minicaffe import protoio, weights
from minicaffe.errors import MinicaffeError
from minicaffe.protoio import pb
from minicaffe.solvers import Solver
from minicaffe.solvers import snapshot as snap

from test_solve import make_case

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FORMATS = ['BINARYPROTO', 'HDF5']
EXT = {'BINARYPROTO': ('.caffemodel', '.solverstate'), 'HDF5': ('.caffemodel.h5', '.solverstate.h5')}


def _env():
    env = dict(os.environ)
    env['PYTHONPATH'] = ROOT + os.pathsep + env.get('PYTHONPATH', '')
    env.setdefault('OMP_NUM_THREADS', '1')
    return env


def _solver(tmp_path, fmt='BINARYPROTO', extra=''):
    return Solver(make_case(tmp_path, solver_extra='snapshot_format: %s\n%s' % (fmt, extra)))


def _state(solver):
    return ([b.data.copy() for b in solver.net.learnable_params],
            [h.copy() for h in solver.history], solver.iter, solver.current_step)


def _assert_same_state(a, b):
    pa, ha, ia, sa = a
    pb_, hb, ib, sb = b
    assert (ia, sa) == (ib, sb)
    assert len(pa) == len(pb_) and len(ha) == len(hb)
    for x, y in zip(pa + ha, pb_ + hb):
        assert x.dtype == y.dtype == np.float32
        np.testing.assert_array_equal(x, y)


# ---------------------------------------------------------------- round trip
ROUND_TRIP = {
    'SGD-multistep': 'lr_policy: "multistep"\nstepvalue: 2\nstepvalue: 4',
    'Adam': 'type: "Adam"\nmomentum2: 0.999\nlr_policy: "fixed"',
    'AdaDelta': 'type: "AdaDelta"\ndelta: 1e-6\nlr_policy: "fixed"\nbase_lr: 1',
}


@pytest.mark.parametrize('fmt', FORMATS)
@pytest.mark.parametrize('kind', sorted(ROUND_TRIP))
def test_round_trip(tmp_path, fmt, kind):
    path = make_case(tmp_path, solver_extra='snapshot_format: %s\n%s' % (fmt, ROUND_TRIP[kind]))
    with open(path) as f:
        text = f.read().replace('lr_policy: "step"', '', 1)
    with open(path, 'w') as f:
        f.write(text)
    s = Solver(path)
    s.step(4)          # 16 rows, batch 4: the data layer is back at row 0, as in a fresh net
    model, state = s.snapshot()
    assert model.endswith('s_iter_4' + EXT[fmt][0]) and state.endswith('s_iter_4' + EXT[fmt][1])
    assert s.type == kind.split('-')[0]
    if kind == 'SGD-multistep':
        assert s.current_step == 1
    fresh = Solver(path)
    assert fresh.iter == 0
    fresh.restore(state)
    _assert_same_state(_state(s), _state(fresh))
    # and the two go on identically (multistep passes its second step value at iter 4)
    s.step(3)
    fresh.step(3)
    _assert_same_state(_state(s), _state(fresh))
    if kind == 'SGD-multistep':
        assert fresh.current_step == 2


def test_binaryproto_state_layout_is_caffes(tmp_path):
    s = _solver(tmp_path, extra='type: "Adam"')
    s.step(3)
    model, state = s.snapshot()
    msg = pb.SolverState()
    msg.ParseFromString(open(state, 'rb').read())
    assert msg.iter == 3 and msg.learned_net == model and msg.current_step == s.current_step
    n = len(s.net.learnable_params)
    assert len(msg.history) == 2 * n          # Adam: all m blobs, then all v blobs
    for i, h in enumerate(msg.history):
        np.testing.assert_array_equal(protoio.blob_proto_array(h, 'h').reshape(s.history[i].shape),
                                      s.history[i])
        assert list(h.shape.dim) == list(s.history[i].shape)
    net = weights.read_net_param_binary(model)
    ip = [lp for lp in net.layer if lp.name == 'ip'][0]
    np.testing.assert_array_equal(np.array(ip.blobs[0].data, np.float32),
                                  s.net.params['ip'][0].data.ravel())


def test_hdf5_state_layout_is_caffes(tmp_path):
    s = _solver(tmp_path, 'HDF5')
    s.step(3)
    model, state = s.snapshot()
    with h5py.File(state, 'r') as f:
        assert f['iter'].shape == (1,) and f['iter'].dtype == np.int32 and f['iter'][0] == 3
        assert f['current_step'].shape == (1,) and f['current_step'][0] == s.current_step
        # H5LTmake_dataset_string: a scalar, NUL-terminated, size len + 1
        ln = f['learned_net']
        assert ln.shape == () and ln[()] == model.encode()
        tid = ln.id.get_type()
        assert tid.get_size() == len(model) + 1 and tid.get_strpad() == h5py.h5t.STR_NULLTERM
        assert sorted(f['history'].keys()) == [str(i) for i in range(len(s.history))]
        np.testing.assert_array_equal(f['history/0'][()], s.history[0])
    with h5py.File(model, 'r') as f:
        np.testing.assert_array_equal(f['data/ip/0'][()], s.net.params['ip'][0].data)
        assert 'diff' not in f


def test_restore_reports_wrong_solver_type(tmp_path):
    s = _solver(tmp_path)
    s.step(1)
    _, state = s.snapshot()
    adam = _solver(tmp_path / 'b', extra='type: "Adam"')
    with pytest.raises(MinicaffeError, match='history blobs'):
        adam.restore(state)


def test_restore_missing_file(tmp_path):
    with pytest.raises(MinicaffeError, match='does not exist'):
        _solver(tmp_path).restore(tmp_path / 'nope.solverstate')


def test_learned_net_found_beside_a_moved_state(tmp_path):
    s = _solver(tmp_path)
    s.step(2)
    model, state = s.snapshot()
    moved = tmp_path / 'moved'
    moved.mkdir()
    for f in (model, state):
        os.rename(f, moved / os.path.basename(f))
    fresh = _solver(tmp_path / 'b')
    fresh.restore(moved / os.path.basename(state))
    np.testing.assert_array_equal(fresh.net.params['ip'][0].data, s.net.params['ip'][0].data)


def test_newest_snapshot(tmp_path):
    prefix = os.fspath(tmp_path / 'p')
    for name in ('p_iter_5.solverstate', 'p_iter_40.solverstate.h5', 'p_iter_100.caffemodel',
                 'p_iter_90.solverstate.tmp-123', 'p_iter_7.solverstate'):
        (tmp_path / name).write_bytes(b'')
    assert snap.newest(prefix) == prefix + '_iter_40.solverstate.h5'
    assert snap.newest(os.fspath(tmp_path / 'q')) is None


# ---------------------------------------------------------------- atomic writes
def _files(folder):
    return sorted(os.listdir(folder))


def _crash_during(monkeypatch, target, name, after_calls):
    """Make target.name raise on its ``after_calls``-th call (a crash mid-snapshot)."""
    real = getattr(target, name)
    calls = []

    def boom(*a, **k):
        calls.append(1)
        if len(calls) >= after_calls:
            raise OSError(28, 'No space left on device (simulated)')
        return real(*a, **k)
    monkeypatch.setattr(target, name, boom)


@pytest.mark.parametrize('fmt', FORMATS)
@pytest.mark.parametrize('where', ['model', 'state'])
def test_crash_mid_snapshot_keeps_previous(tmp_path, monkeypatch, fmt, where):
    s = _solver(tmp_path, fmt)
    s.step(4)
    model4, state4 = s.snapshot()
    before = {f: open(os.path.join(tmp_path / 'snap', f), 'rb').read() for f in _files(tmp_path / 'snap')}
    s.step(4)
    if fmt == 'HDF5':
        # the model file's datasets, or the state's history datasets
        _crash_during(monkeypatch, h5py.Group, 'create_dataset', 2 if where == 'model' else 4)
    elif where == 'model':
        chunks = weights._net_chunks

        def half(net, diff):
            for i, c in enumerate(chunks(net, diff)):
                if i == 5:
                    raise OSError(28, 'No space left on device (simulated)')
                yield c
        monkeypatch.setattr(weights, '_net_chunks', half)
    else:
        _crash_during(monkeypatch, protoio, 'blob_to_proto', 2)
    with pytest.raises((OSError, MinicaffeError)):
        s.snapshot()
    monkeypatch.undo()
    names = _files(tmp_path / 'snap')
    # nothing half-written under a final name, no temporary left behind
    assert not [n for n in names if '.tmp' in n]
    assert not any(n.startswith('s_iter_8') and n.endswith(EXT[fmt][1]) for n in names)
    if where == 'model':
        assert names == sorted(before)
    for f, data in before.items():
        assert open(os.path.join(tmp_path / 'snap', f), 'rb').read() == data
    assert snap.newest(os.fspath(tmp_path / 'snap' / 's')) == state4
    fresh = _solver(tmp_path / 'b', fmt)
    fresh.restore(state4)
    assert fresh.iter == 4


@pytest.mark.parametrize('fmt', FORMATS)
def test_crash_rewriting_the_same_snapshot_keeps_the_old_file(tmp_path, monkeypatch, fmt):
    s = _solver(tmp_path, fmt)
    s.step(2)
    model, state = s.snapshot()
    old = open(model, 'rb').read()
    s.net.params['ip'][0].data[...] += 1         # different weights, same iteration
    if fmt == 'HDF5':
        _crash_during(monkeypatch, h5py.Group, 'create_dataset', 2)
    else:
        _crash_during(monkeypatch, os, 'fsync', 1)
    with pytest.raises((OSError, MinicaffeError)):
        s.snapshot()
    monkeypatch.undo()
    assert open(model, 'rb').read() == old
    assert not [n for n in _files(tmp_path / 'snap') if '.tmp' in n]


KILL_SCRIPT = r'''
import os, signal, sys
import numpy as np
from minicaffe.solvers import Solver
from minicaffe import weights, protoio
fmt = sys.argv[2]
s = Solver(sys.argv[1])
s.step(4)
s.snapshot()
s.step(4)
# SIGKILL ourselves halfway through writing the next snapshot: no cleanup runs
if fmt == 'HDF5':
    import h5py
    def kill(self, *a, **k):
        os.kill(os.getpid(), signal.SIGKILL)
    h5py.Group.create_dataset = kill
else:
    chunks = weights._net_chunks
    def half(net, diff):
        for i, c in enumerate(chunks(net, diff)):
            if i == 5:
                os.kill(os.getpid(), signal.SIGKILL)
            yield c
    weights._net_chunks = half
s.snapshot()
print('not killed')
'''


@pytest.mark.parametrize('fmt', FORMATS)
def test_killed_during_snapshot_previous_is_intact(tmp_path, fmt):
    path = make_case(tmp_path, solver_extra='snapshot_format: %s' % fmt)
    r = subprocess.run([sys.executable, '-c', KILL_SCRIPT, path, fmt], env=_env(),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == -signal.SIGKILL, r.stderr
    names = _files(tmp_path / 'snap')
    final8 = [n for n in names if n.startswith('s_iter_8') and '.tmp' not in n]
    assert final8 == []                      # only a temporary may be left by a kill
    prefix = os.fspath(tmp_path / 'snap' / 's')
    state4 = prefix + '_iter_4' + EXT[fmt][1]
    assert snap.newest(prefix) == state4
    fresh = Solver(path)
    fresh.restore(state4)
    assert fresh.iter == 4
    ref = Solver(path)
    ref.step(4)
    np.testing.assert_array_equal(fresh.net.params['ip'][0].data, ref.net.params['ip'][0].data)


# ---------------------------------------------------------------- bitwise resume, new process
def _train(solver, *extra, cwd=None):
    r = subprocess.run([sys.executable, '-m', 'minicaffe', 'train', '--solver', solver] + list(extra),
                       env=_env(), capture_output=True, text=True, timeout=120, cwd=cwd)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stderr


def _set(path, **fields):
    lines = [ln for ln in open(path).read().splitlines()
             if not any(ln.startswith(k + ':') for k in fields)]
    lines += ['%s: %s' % (k, v) for k, v in fields.items()]
    with open(path, 'w') as f:
        f.write('\n'.join(lines) + '\n')


@pytest.mark.parametrize('fmt,kind', [('BINARYPROTO', 'Adam'), ('HDF5', 'Nesterov')])
def test_resume_in_a_new_process_is_bitwise(tmp_path, fmt, kind):
    # 16 rows, batch 4: after 4 iterations HDF5Data is back at row 0, as in a fresh process.
    extra = 'snapshot_format: %s\ntype: "%s"\ntest_iter: 2\ntest_interval: 3' % (fmt, kind)
    straight = make_case(tmp_path / 'a', solver_extra=extra)
    _train(straight)
    resumed = make_case(tmp_path / 'b', solver_extra=extra)
    _set(resumed, max_iter=4)
    _train(resumed)                                       # snapshot_after_train at 4
    _set(resumed, max_iter=8)
    state4 = os.fspath(tmp_path / 'b' / 'snap' / ('s_iter_4' + EXT[fmt][1]))
    log = _train(resumed, '--snapshot', state4)
    assert 'Resuming from' in log
    model_ext, state_ext = EXT[fmt]
    a = tmp_path / 'a' / 'snap' / 's_iter_8'
    b = tmp_path / 'b' / 'snap' / 's_iter_8'
    if fmt == 'BINARYPROTO':
        na = weights.read_net_param_binary(str(a) + model_ext)
        nb = weights.read_net_param_binary(str(b) + model_ext)
        blobs_a = [(lp.name, np.array(bp.data, np.float32).tobytes()) for lp in na.layer for bp in lp.blobs]
        blobs_b = [(lp.name, np.array(bp.data, np.float32).tobytes()) for lp in nb.layer for bp in lp.blobs]
        assert len(blobs_a) == 2 and blobs_a == blobs_b
        sa, sb = pb.SolverState(), pb.SolverState()
        sa.ParseFromString(open(str(a) + state_ext, 'rb').read())
        sb.ParseFromString(open(str(b) + state_ext, 'rb').read())
        assert sa.iter == sb.iter == 8
        assert [list(h.data) for h in sa.history] == [list(h.data) for h in sb.history]
    else:
        with h5py.File(str(a) + model_ext, 'r') as fa, h5py.File(str(b) + model_ext, 'r') as fb:
            for name in ('data/ip/0', 'data/ip/1'):
                assert fa[name][()].tobytes() == fb[name][()].tobytes()
        with h5py.File(str(a) + state_ext, 'r') as fa, h5py.File(str(b) + state_ext, 'r') as fb:
            assert fa['iter'][0] == fb['iter'][0] == 8
            for k in fa['history']:
                assert fa['history'][k][()].tobytes() == fb['history'][k][()].tobytes()
    assert not glob.glob(str(tmp_path / 'b' / 'snap' / '*.tmp*'))
