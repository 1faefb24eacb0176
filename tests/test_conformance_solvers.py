"""../shared/conformance/solvers: 8 iterations of Caffe's own solvers.

From init.caffemodel, eight step(1) calls reproduce Caffe's losses and the
weights after iterations 4 and 8; restoring Caffe's snap_iter_4.solverstate
reproduces iterations 5-8.
"""
import h5py
import pytest

import minicaffe as caffe

from conformance import case_dirs, copy_case, mismatch

CASES = case_dirs('solvers')


def _compare_params(net, group, label):
    problems = []
    for layer in group:
        for i in group[layer]:
            m = mismatch(net.params[layer][int(i)].data, group[layer][i][()])
            if m:
                problems.append('%s %s[%s]: %s' % (label, layer, i, m))
    return problems


def _case_reference(case, tmp_path, monkeypatch):
    """Copy a solver case into tmp_path, work inside it (its paths are relative)
    and open Caffe's ref.h5."""
    work = copy_case(case, tmp_path)
    monkeypatch.chdir(work)
    return h5py.File(work / 'ref.h5', 'r')


def _losses_problems(solver, ref_losses, start, stop=8):
    """step(1) from iteration start to stop, each loss against Caffe's."""
    problems = []
    for it in range(start, stop):
        solver.step(1)
        m = mismatch(solver.net.blobs['loss'].data, ref_losses[it])
        if m:
            problems.append('loss after step %d: %s' % (it + 1, m))
    return problems


def _trajectory_from_init_problems(solver, ref):
    """From init.caffemodel, 8 step(1) calls against Caffe's losses and its params
    after iterations 4 and 8."""
    solver.net.copy_from('init.caffemodel')
    problems = _losses_problems(solver, ref['loss'], 0, 4)
    problems += _compare_params(solver.net, ref['param_iter_4'], 'params after iter 4')
    problems += _losses_problems(solver, ref['loss'], 4)
    problems += _compare_params(solver.net, ref['param_iter_8'], 'params after iter 8')
    return problems


@pytest.mark.parametrize('case', CASES, ids=[c.name for c in CASES])
def test_trajectory_from_init(case, tmp_path, monkeypatch):
    ref = _case_reference(case, tmp_path, monkeypatch)
    solver = caffe.get_solver('solver.prototxt')
    problems = _trajectory_from_init_problems(solver, ref)
    assert not problems, '\n'.join(problems)


@pytest.mark.parametrize('case', CASES, ids=[c.name for c in CASES])
def test_resume_from_caffe_snapshot(case, tmp_path, monkeypatch):
    ref = _case_reference(case, tmp_path, monkeypatch)
    solver = caffe.get_solver('solver.prototxt')
    solver.restore('snap_iter_4.solverstate')
    assert solver.iter == 4
    problems = _compare_params(solver.net, ref['param_iter_4'], 'params restored at iter 4')
    # Caffe's data position after 4 iterations is row 0 again, as in a fresh net.
    problems += _losses_problems(solver, ref['loss'], 4)
    problems += _compare_params(solver.net, ref['param_iter_8'], 'params after iter 8')
    assert not problems, '\n'.join(problems)


def test_solver_suite_present():
    assert len(CASES) == 7
