"""CPU/GPU parity of the recurrent layers' device code (recurrent.py): LSTMUnit
(kernels/lstm_unit.cu), LSTM and RNN with cont markers, static input and
expose_hidden, and the hidden state carried across forward calls (also across a
change of N, a reset and a switch between CPU and GPU mode).

CI runs these through tests/fake_cupy.py; tools/gpu_check.sh on a real device."""
import numpy as np
import pytest

import fake_cupy
from minicaffe import mode
from minicaffe.gradcheck import make_layer
from minicaffe.rng import set_random_seed

from gpu_support import REAL_GPU, check_gpu_parity, gpu_mode

T, N, D, H = 5, 3, 4, 6
WEIGHTS = ('weight_filler { type: "uniform" min: -0.5 max: 0.5 } '
           'bias_filler { type: "uniform" min: -0.2 max: 0.2 }')


def rand(*shape, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, size=shape).astype(np.float32)


def cont_markers(T_, N_, seed=0):
    """Sequence starts (0) at t = 0 and at a few random later steps."""
    c = (np.random.default_rng(seed).random((T_, N_)) > 0.3).astype(np.float32)
    c[0] = 0
    return c


def rec(type_, extra=''):
    return 'type: "%s" recurrent_param { num_output: %d %s %s }' % (type_, H, WEIGHTS, extra)


# ------------------------------------------------------------------ LSTMUnit
@pytest.mark.parametrize('cont', [[0, 1, 1, 0], [1, 1, 1, 1], [0.5, 1, 0, 0.25]])
def test_lstm_unit(cont):
    n = len(cont)
    check_gpu_parity('type: "LSTMUnit"',
                     [rand(1, n, H), rand(1, n, 4 * H, seed=1) * 2, np.array([cont], np.float32)],
                     propagate_down=[True, True, False])


def test_lstm_unit_backward_to_one_bottom_writes_both():
    check_gpu_parity('type: "LSTMUnit"', [rand(1, 4, H), rand(1, 4, 4 * H, seed=1),
                                          np.array([[0, 1, 1, 1]], np.float32)],
                     propagate_down=[False, True, False])


@pytest.mark.skipif(REAL_GPU, reason='counts launches of the CPU stand-in')
def test_lstm_runs_the_fused_kernel():
    fake_cupy.RawModule.launches.clear()
    check_gpu_parity(rec('LSTM'), [rand(T, N, D), cont_markers(T, N)],
                     propagate_down=[True, False])
    assert fake_cupy.RawModule.launches.get('lstm_unit_forward') == T
    assert fake_cupy.RawModule.launches.get('lstm_unit_backward') == T


# ------------------------------------------------------------------ LSTM / RNN parity
@pytest.mark.parametrize('type_', ['LSTM', 'RNN'])
def test_cont_markers(type_):
    check_gpu_parity(rec(type_), [rand(T, N, D), cont_markers(T, N)], propagate_down=[True, False])


@pytest.mark.parametrize('type_', ['LSTM', 'RNN'])
def test_all_continuing_and_4d_input(type_):
    c = np.ones((T, N), np.float32)
    check_gpu_parity(rec(type_), [rand(T, N, 2, 3), c], propagate_down=[True, False])


@pytest.mark.parametrize('type_', ['LSTM', 'RNN'])
def test_static_input(type_):
    check_gpu_parity(rec(type_), [rand(T, N, D), cont_markers(T, N, 1), rand(N, 3, seed=2)],
                     propagate_down=[True, False, True])


@pytest.mark.parametrize('type_', ['LSTM', 'RNN'])
def test_expose_hidden(type_):
    recur = [rand(1, N, H, seed=3)] + ([rand(1, N, H, seed=4)] if type_ == 'LSTM' else [])
    # h_0/c_0 never get a diff (Caffe shares only their data): zero on both sides
    check_gpu_parity(rec(type_, 'expose_hidden: true'),
                     [rand(T, N, D), cont_markers(T, N, 2)] + recur,
                     propagate_down=[True, False] + [True] * len(recur))


def test_lstm_expose_hidden_with_static_input():
    check_gpu_parity(rec('LSTM', 'expose_hidden: true'),
                     [rand(T, N, D), cont_markers(T, N, 2), rand(N, 2, seed=5),
                      rand(1, N, H, seed=3), rand(1, N, H, seed=4)],
                     propagate_down=[True, False, True, False, False])


# ------------------------------------------------------------------ state across calls
def _sequence(text, steps, switch_to_cpu_at=None):
    """Forward (+ backward) calls of one layer over ``steps``: each a list of bottom
    arrays, or 'reset'.  With expose_hidden, a step whose h_0/c_0 entries are None
    takes the previous call's h_T/c_T tops, copied through the host blobs as a
    captioner does.  Returns every top and bottom diff, and the parameter diffs."""
    set_random_seed(9)                       # the same weights on both sides
    layer, bottom, top = make_layer(text, steps[0], seed=9)
    outs = []
    for k, step in enumerate(steps):
        if k == switch_to_cpu_at:
            mode.set_mode_cpu()
        if isinstance(step, str):
            layer.reset()
            continue
        for i, (blob, v) in enumerate(zip(bottom, step)):
            if v is None:                    # h_T -> h_0, c_T -> c_0 (top 1 + j)
                j = i - (len(bottom) - (len(top) - 1))
                v = top[1 + j].data.copy()
            blob.reshape(v.shape)
            blob.data[...] = v
        layer.reshape(bottom, top)
        mode.run_forward(layer, bottom, top)
        outs += [t.data.copy() for t in top]
        for t in top:
            t.diff[...] = rand(*t.shape, seed=20 + k)
        mode.run_backward(layer, top, [True, False] + [False] * (len(bottom) - 2), bottom)
        outs.append(bottom[0].diff.copy())
    outs += [p.diff.copy() for p in layer.blobs]
    return outs


def _compare_sequence(text, steps, switch_to_cpu_at=None):
    cpu = _sequence(text, steps)
    with gpu_mode():
        gpu = _sequence(text, steps, switch_to_cpu_at)
    assert len(cpu) == len(gpu)
    for i, (a, b) in enumerate(zip(gpu, cpu)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-5, err_msg='output %d' % i)
    return gpu


@pytest.mark.parametrize('type_', ['LSTM', 'RNN'])
def test_hidden_state_carried_across_forwards(type_):
    ones = np.ones((T, N), np.float32)
    out = _compare_sequence(rec(type_), [[rand(T, N, D, seed=s), ones] for s in range(3)])
    # the state really carries: the same input continuing from a nonzero state differs
    out2 = _compare_sequence(rec(type_), [[rand(T, N, D, seed=1), ones]])
    assert not np.allclose(out[2], out2[0])


@pytest.mark.parametrize('type_', ['LSTM', 'RNN'])
def test_hidden_state_reset_and_n_changes(type_):
    def ones(n):
        return np.ones((T, n), np.float32)
    _compare_sequence(rec(type_), [[rand(T, 3, D), ones(3)], [rand(T, 2, D, seed=1), ones(2)],
                                   'reset', [rand(T, 3, D, seed=2), ones(3)],
                                   [rand(T, 5, D, seed=3), ones(5)],    # count grows: zeros
                                   [rand(T, 5, D, seed=4), cont_markers(T, 5)]])


@pytest.mark.parametrize('type_', ['LSTM', 'RNN'])
def test_hidden_state_follows_a_switch_to_cpu_mode(type_):
    ones = np.ones((T, N), np.float32)
    _compare_sequence(rec(type_), [[rand(T, N, D, seed=s), ones] for s in range(3)],
                      switch_to_cpu_at=2)


@pytest.mark.parametrize('type_', ['LSTM', 'RNN'])
def test_expose_hidden_carries_state_across_two_forwards(type_):
    """The captioner's loop: T = 1 steps, each call's h_T (and c_T) fed back as h_0 (c_0)."""
    nrec = 2 if type_ == 'LSTM' else 1
    first = [rand(1, N, D), np.zeros((1, N), np.float32)] + [np.zeros((1, N, H), np.float32)] * nrec
    later = [[rand(1, N, D, seed=s), np.ones((1, N), np.float32)] + [None] * nrec
             for s in (1, 2)]
    out = _compare_sequence(rec(type_, 'expose_hidden: true'), [first] + later)
    per_call = 1 + nrec + 1                  # tops, then bottom[0].diff
    assert not np.allclose(out[per_call], out[0])
