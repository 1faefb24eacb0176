"""Numerical gradient checks of LSTM, RNN and LSTMUnit with the settings of
Caffe's src/caffe/test/test_lstm_layer.cpp and test_rnn_layer.cpp:
GradientChecker(1e-2, 1e-3), weights gaussian(std 0.2), biases gaussian(std 0.1),
x of shape (T, N, 3, 2), checks on bottom 0 (and 2 for the static input) -- never
on cont.  To keep the exhaustive checks fast num_output is 4 instead of Caffe's 7
and the static input is (N, 2, 3) instead of (N, 2, 3, 4).

Every forward of a layer without expose_hidden starts from the previous
forward's h_T, so, as in Caffe's tests, cont is 0 at the first timestep of every
stream (the carried state has no effect).  With expose_hidden Caffe shares only
the data of h_0/c_0 and h_T/c_T with its unrolled net: no gradient reaches
h_0/c_0 and the h_T/c_T top diffs are ignored, so those checks look at the
output top alone (FirstTopOnly) and at x, params and x_static."""
import numpy as np
import pytest

from minicaffe import gradcheck  # noqa: E402
GradientChecker, make_layer = gradcheck.GradientChecker, gradcheck.make_layer

H = 4
FILLERS = ('weight_filler { type: "gaussian" std: 0.2 } '
           'bias_filler { type: "gaussian" std: 0.1 }')


def proto(type_, expose=False):
    return ('type: "%s" recurrent_param { num_output: %d %s %s }'
            % (type_, H, 'expose_hidden: true' if expose else '', FILLERS))


def uniform(shape, lo=-1.0, hi=1.0, seed=0):
    return np.random.default_rng(seed).uniform(lo, hi, size=shape).astype(np.float32)


def cont_i_gt_2(T, N):
    """Caffe's 'NonZeroCont' pattern: cont[i] = i > 2 over the flattened (T, N) blob."""
    return (np.arange(T * N) > 2).astype(np.float32).reshape(T, N)


class FirstTopOnly(object):
    """Presents only top 0 of a recurrent layer with expose_hidden to the checker."""

    def __init__(self, layer, top):
        self._layer, self._rest = layer, list(top[1:])

    def __getattr__(self, name):
        return getattr(self._layer, name)

    def setup(self, bottom, top):
        self._layer.setup(bottom, list(top) + self._rest)

    def reshape(self, bottom, top):
        self._layer.reshape(bottom, list(top) + self._rest)

    def forward(self, bottom, top):
        self._layer.forward(bottom, list(top) + self._rest)

    def backward(self, top, propagate_down, bottom):
        self._layer.backward(list(top) + self._rest, propagate_down, bottom)


CHECKER = dict(stepsize=1e-2, threshold=1e-3)

# (id, T, N, cont, x range, static input)
SEQ_CASES = [
    ('gradient', 1, 3, lambda T, N: np.zeros((T, N), np.float32), (-1, 1), False),
    ('nonzero_cont', 1, 3, cont_i_gt_2, (-1, 1), False),
    ('nonzero_cont_buffer2', 2, 2, cont_i_gt_2, (0, 1), False),
    ('nonzero_cont_buffer2_static', 2, 2, cont_i_gt_2, (0, 1), True),
]


@pytest.mark.parametrize('type_', ['LSTM', 'RNN'])
@pytest.mark.parametrize('name,T,N,cont,xrange,static', SEQ_CASES, ids=[c[0] for c in SEQ_CASES])
def test_recurrent_gradient(type_, name, T, N, cont, xrange, static):
    bottoms = [uniform((T, N, 3, 2), *xrange, seed=1), cont(T, N)]
    if static:
        bottoms.append(uniform((N, 2, 3), 0, 1, seed=2))
    layer, bottom, top = make_layer(proto(type_), bottoms, phase='TEST')
    checker = GradientChecker(**CHECKER)
    checker.check_gradient_exhaustive(layer, bottom, top, check_bottom=0)
    if static:
        checker.check_gradient_exhaustive(layer, bottom, top, check_bottom=2)


@pytest.mark.parametrize('type_', ['LSTM', 'RNN'])
@pytest.mark.parametrize('static', [False, True])
def test_recurrent_gradient_expose_hidden(type_, static):
    # cont = 1 everywhere: the given h_0 (and c_0) feed every step's output.
    T, N = 2, 2
    bottoms = [uniform((T, N, 3, 2), seed=3), np.ones((T, N), np.float32)]
    if static:
        bottoms.append(uniform((N, 2, 3), 0, 1, seed=4))
    n_recur = 2 if type_ == 'LSTM' else 1
    bottoms += [uniform((1, N, H), seed=5 + j) for j in range(n_recur)]
    layer, bottom, top = make_layer(proto(type_, expose=True), bottoms, phase='TEST')
    assert len(top) == 1 + n_recur
    wrapped = FirstTopOnly(layer, top)
    checker = GradientChecker(**CHECKER)
    checker.check_gradient_exhaustive(wrapped, bottom, top[:1], check_bottom=0)
    if static:
        checker.check_gradient_exhaustive(wrapped, bottom, top[:1], check_bottom=2)


@pytest.mark.parametrize('cont', [[0, 0, 0], [1, 0, 1]], ids=['zero_cont', 'nonzero_cont'])
def test_lstm_unit_gradient(cont):
    # Caffe's TestLSTMUnitGradient / TestLSTMUnitGradientNonZeroCont (num_output 7).
    N, D = 3, 7
    bottoms = [uniform((1, N, D), seed=7), uniform((1, N, 4 * D), seed=8),
               np.array([cont], np.float32)]
    layer, bottom, top = make_layer('type: "LSTMUnit"', bottoms, phase='TEST')
    checker = GradientChecker(**CHECKER)
    checker.check_gradient_exhaustive(layer, bottom, top, check_bottom=0)
    checker.check_gradient_exhaustive(layer, bottom, top, check_bottom=1)
