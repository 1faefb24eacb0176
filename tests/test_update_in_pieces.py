"""The solver's host update runs piece by piece (Solver._update_on_host): the
same numbers as the whole-array formulas, for every update rule, weight decay
and iter_size, on any thread count, and no temporary the size of a weight blob
(CaffeNet's fc6 is 151 MB)."""
import tracemalloc

import numpy as np
import pytest

from minicaffe.solvers import Solver, solver as solver_module
from minicaffe.solvers.updates import RULES
from test_solve import make_case

BIG_NET = '''name: "big"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 1000 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  inner_product_param { num_output: 4000 weight_filler { type: "gaussian" std: 0.1 } } }
'''


def _solver(tmp_path, rule, extra=''):
    path = make_case(tmp_path, solver_extra='type: "%s"\n%s' % (rule, extra))
    if rule in ('AdaGrad', 'RMSProp', 'Adam', 'AdaDelta'):
        text = open(path).read()
        if rule != 'AdaDelta' and rule != 'Adam':
            text = text.replace('momentum: 0.9', '')        # AdaGrad/RMSProp: no momentum
        open(path, 'w').write(text)
    return Solver(path)


def _fill(solver, seed):
    rng = np.random.default_rng(seed)
    for b in solver.net.learnable_params:
        b.data[...] = rng.standard_normal(b.shape).astype(np.float32)
        b.diff[...] = rng.standard_normal(b.shape).astype(np.float32)
    for h in solver.history:
        h[...] = np.abs(rng.standard_normal(h.shape)).astype(np.float32)


def _whole_array_update(solver, rate):
    """The update as whole-array formulas, on copies: (weights, steps, history)."""
    iter_size = max(1, solver.param.iter_size)
    hist = [h.copy() for h in solver.history]
    n = solver.n_params
    ws, gs = [], []
    for i, b in enumerate(solver.net.learnable_params):
        g, w = b.diff.copy(), b.data.copy()
        solver._update_piece(i, g, w, tuple(hist[i::n]), np.float32(rate) *
                             np.float32(solver.net.params_lr[i]), iter_size)
        ws.append(w - g)
        gs.append(g)
    return ws, gs, hist


@pytest.mark.parametrize('rule', sorted(RULES))
@pytest.mark.parametrize('extra', ['', 'regularization_type: "L1"\niter_size: 3'])
def test_pieces_give_the_whole_array_numbers(tmp_path, rule, extra, monkeypatch, set_threads):
    solver = _solver(tmp_path, rule, extra)
    monkeypatch.setattr(solver_module, 'HOST_UPDATE_BLOCK', 5)      # many pieces, a ragged end
    results = []
    for threads in (1, 2):
        set_threads(threads, split_small=True)
        _fill(solver, seed=3)
        want_w, want_g, want_h = _whole_array_update(solver, solver.learning_rate())
        solver._apply_update()
        got = [b.data for b in solver.net.learnable_params]
        for w, g, b in zip(want_w, want_g, solver.net.learnable_params):
            assert np.array_equal(b.data, w) and np.array_equal(b.diff, g)
        for h, h2 in zip(want_h, solver.history):
            assert np.array_equal(h, h2)
        results.append([w.copy() for w in got])
    assert all(np.array_equal(a, b) for a, b in zip(*results))


def test_sgd_pieces_match_caffes_formula(tmp_path, monkeypatch):
    solver = _solver(tmp_path, 'SGD')
    monkeypatch.setattr(solver_module, 'HOST_UPDATE_BLOCK', 7)
    _fill(solver, seed=4)
    f32 = np.float32
    p = solver.param
    before = [(b.data.copy(), b.diff.copy(), h.copy())
              for b, h in zip(solver.net.learnable_params, solver.history)]
    rate = solver.learning_rate()
    solver._apply_update()
    for i, ((w, g, h), b) in enumerate(zip(before, solver.net.learnable_params)):
        decay = f32(p.weight_decay) * f32(solver.net.params_weight_decay[i])
        g = g + decay * w if decay else g
        h = f32(p.momentum) * h + (f32(rate) * f32(solver.net.params_lr[i])) * g
        assert np.array_equal(solver.history[i], h)
        assert np.array_equal(b.data, w - h)


@pytest.mark.parametrize('rule', sorted(RULES))
def test_no_temporary_the_size_of_a_weight_blob(tmp_path, rule, set_threads):
    path = make_case(tmp_path, solver_extra='type: "%s"' % rule)
    text = open(path).read()
    net = tmp_path / 'big.prototxt'
    net.write_text(BIG_NET)
    text = text.replace(str(tmp_path / 'net.prototxt'), str(net))
    if rule in ('AdaGrad', 'RMSProp'):
        text = text.replace('momentum: 0.9', '')
    open(path, 'w').write(text)
    solver = Solver(path)
    set_threads(2)
    _fill(solver, seed=5)
    weight_bytes = solver.net.learnable_params[0].data.nbytes          # 16 MB
    tracemalloc.start()
    try:
        solver._apply_update()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # the rules' temporaries: a few pieces of HOST_UPDATE_BLOCK floats per thread
    # (whole-array steps: 16 MB each; even the threads' 1/16 shares: 1 MB each)
    assert peak < weight_bytes / 8, 'peak %d bytes for a %d-byte blob' % (peak, weight_bytes)
