"""The solver in GPU mode: the update on the device, device history, snapshots.

In GPU mode Solver.apply_update (clipping, weight decay, the six update rules,
w -= Δ) works on the params' gpu_diff / gpu_data with the history on the
device.  These tests run the same training on the CPU and in GPU mode
(tests/fake_cupy.py in CI; the real device under tools/gpu_check.sh) and
compare; Caffe's own solver trajectories (../shared/conformance/solvers) are
reproduced in GPU mode; snapshots written in one mode resume in the other.
"""
import numpy as np
import pytest

import minicaffe as caffe
from minicaffe import mode
from minicaffe.blob import DEVICE
from minicaffe.solvers import Solver

from conformance import case_dirs
from gpu_support import gpu_mode
from test_conformance_solvers import (_case_reference, _compare_params, _losses_problems,
                                      _trajectory_from_init_problems)
from test_solve import make_case

# Every solver type, with settings that reach the other device code paths
# (clipping, L1 decay, iter_size normalisation).
SOLVERS = {
    'SGD': 'type: "SGD"\nclip_gradients: 0.3',
    'Nesterov': 'type: "Nesterov"\nregularization_type: "L1"',
    'AdaGrad': 'type: "AdaGrad"\nmomentum: 0\niter_size: 2',
    'RMSProp': 'type: "RMSProp"\nrms_decay: 0.95\nmomentum: 0',
    'AdaDelta': 'type: "AdaDelta"\ndelta: 1e-6\nbase_lr: 1\nlr_policy: "fixed"',
    'Adam': 'type: "Adam"\nmomentum2: 0.999\nlr_policy: "fixed"\nbase_lr: 0.01',
}
TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(autouse=True)
def _cpu_outside_gpu_mode():
    """The CPU side of each comparison runs in CPU mode, also when the suite
    runs with MINICAFFE_TEST_MODE=gpu/gpu-emulated (conformance.py then
    switches the whole process to GPU mode); that mode comes back afterwards."""
    was_gpu = mode.is_gpu()
    mode.set_mode_cpu()
    yield
    if was_gpu:
        mode.set_mode_gpu()


def _case(tmp_path, kind):
    path = make_case(tmp_path, solver_extra=SOLVERS[kind])
    if 'momentum: 0\n' in SOLVERS[kind]:
        # make_case's template sets momentum 0.9; AdaGrad and RMSProp refuse any (Caffe)
        with open(path) as f:
            text = f.read().replace('momentum: 0.9\n', '', 1)
        with open(path, 'w') as f:
            f.write(text)
    return path


def _params(solver):
    return [b.data.copy() for b in solver.net.learnable_params]


def _assert_on_device(solver, cp, params=True):
    """The update ran on the device: history is device arrays and (unless a
    snapshot has read them since) the params' current copies are the device
    ones (w -= Δ wrote gpu_data)."""
    assert all(isinstance(h, cp.ndarray) for h in solver.history)
    if params:
        assert all(b._dmem.head == DEVICE for b in solver.net.learnable_params)


@pytest.mark.parametrize('kind', sorted(SOLVERS))
def test_trajectory_matches_cpu(kind, tmp_path):
    path = _case(tmp_path / 'case', kind)
    cpu = Solver(path)
    init = _params(cpu)
    cpu_losses = []
    for _ in range(6):
        cpu.step(1)
        cpu_losses.append(float(cpu.net.blobs['loss'].data))
    with gpu_mode() as cp:
        gpu = Solver(path)
        for b, v in zip(gpu.net.learnable_params, init):
            np.testing.assert_array_equal(b.data, v)     # same seeded fillers
        gpu_losses = []
        for _ in range(6):
            gpu.step(1)
            gpu_losses.append(float(gpu.net.blobs['loss'].data))
        _assert_on_device(gpu, cp)
        history = gpu.host_history()
        assert all(type(h) is np.ndarray and h.dtype == np.float32 for h in history)
        gpu_params = _params(gpu)
    np.testing.assert_allclose(gpu_losses, cpu_losses, **TOL)
    for g, c in zip(gpu_params, _params(cpu)):
        np.testing.assert_allclose(g, c, **TOL)
    assert len(history) == len(cpu.history)
    for g, c in zip(history, cpu.history):
        np.testing.assert_allclose(g, c, **TOL)


def test_history_follows_a_mode_switch(tmp_path):
    """A solver built in CPU mode and stepped in GPU mode moves its history to
    the device, and back to the host when the CPU steps again."""
    path = _case(tmp_path / 'case', 'Adam')
    ref = Solver(path)
    ref.step(4)
    s = Solver(path)
    s.step(1)
    with gpu_mode() as cp:
        s.step(2)
        _assert_on_device(s, cp)
    s.step(1)
    assert all(type(h) is np.ndarray for h in s.history)
    for a, b in zip(_params(s), _params(ref)):
        np.testing.assert_allclose(a, b, **TOL)
    for a, b in zip(s.history, ref.history):
        np.testing.assert_allclose(a, b, **TOL)


# ------------------------------------------------------------ Caffe's trajectories
CASES = case_dirs('solvers')


@pytest.mark.parametrize('case', CASES, ids=[c.name for c in CASES])
def test_conformance_trajectory_in_gpu_mode(case, tmp_path, monkeypatch):
    ref = _case_reference(case, tmp_path, monkeypatch)
    with gpu_mode() as cp:
        solver = caffe.get_solver('solver.prototxt')
        problems = _trajectory_from_init_problems(solver, ref)
        _assert_on_device(solver, cp, params=False)     # the comparisons read the params
    assert not problems, '\n'.join(problems)


@pytest.mark.parametrize('case', CASES, ids=[c.name for c in CASES])
def test_conformance_resume_from_caffe_snapshot_in_gpu_mode(case, tmp_path, monkeypatch):
    ref = _case_reference(case, tmp_path, monkeypatch)
    with gpu_mode() as cp:
        solver = caffe.get_solver('solver.prototxt')
        solver.restore('snap_iter_4.solverstate')
        assert solver.iter == 4
        assert all(isinstance(h, cp.ndarray) for h in solver.history)
        problems = _compare_params(solver.net, ref['param_iter_4'], 'params restored at iter 4')
        problems += _losses_problems(solver, ref['loss'], 4)
        problems += _compare_params(solver.net, ref['param_iter_8'], 'params after iter 8')
    assert not problems, '\n'.join(problems)


def test_solver_cases_present():
    assert len(CASES) == 7


# ------------------------------------------------------------ snapshots across modes
@pytest.mark.parametrize('fmt', ['BINARYPROTO', 'HDF5'])
@pytest.mark.parametrize('direction', ['gpu-to-cpu', 'cpu-to-gpu'])
@pytest.mark.parametrize('kind', ['Adam', 'Nesterov'])
def test_snapshot_resumes_in_the_other_mode(tmp_path, fmt, direction, kind):
    # one batch of data (n = batch): a restored net reads from row 0 again, as Caffe's
    # does, so only then is the resumed run the uninterrupted one
    path = make_case(tmp_path / 'case', solver_extra='%s\nsnapshot_format: %s' % (SOLVERS[kind], fmt),
                     n=4, batch=4)
    ref = Solver(path)
    ref.step(6)                                  # uninterrupted, on the CPU

    def first_half():
        s = Solver(path)
        s.step(3)
        _, state = s.snapshot()
        return state, s.host_history()

    def second_half(state):
        s = Solver(path)
        s.restore(state)
        assert s.iter == 3
        restored = [h.copy() for h in s.host_history()]
        s.step(3)
        return s, restored

    if direction == 'gpu-to-cpu':
        with gpu_mode():
            state, written = first_half()
        s, restored = second_half(state)
        assert all(type(h) is np.ndarray for h in s.history)
    else:
        state, written = first_half()
        with gpu_mode() as cp:
            s, restored = second_half(state)
            _assert_on_device(s, cp)
            s_params, s_history = _params(s), s.host_history()
    # the state file holds the history exactly as it was in memory
    for w, r in zip(written, restored):
        np.testing.assert_array_equal(w, r)
    if direction == 'gpu-to-cpu':
        s_params, s_history = _params(s), s.history
    for a, b in zip(s_params, _params(ref)):
        np.testing.assert_allclose(a, b, **TOL)
    for a, b in zip(s_history, ref.history):
        np.testing.assert_allclose(a, b, **TOL)
