"""NaN, infinities and signed zeros through the element-wise layers, as Caffe's CPU
code computes them.

Each reference below is the C++ expression of Caffe's Forward_cpu/Backward_cpu,
evaluated element by element on float32 scalars, with std::max/std::min as the
standard library defines them (``std::max(a, b)`` is ``a < b ? b : a``: NaN in
the first place survives, in the second it does not).  tools/caffe_diff.py
--special runs the same layers through real Caffe.
"""
import numpy as np
import pytest

from minicaffe import cmath
from test_vision import layer, make_net

F = np.float32
VALUES = F([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e30, -1e30, 88.8, -88.8, 1e-30, -1e-30,
            0.5, -0.5, 2.0, -3.0, 1.0])
GRADS = F([1.0, -2.0, 0.5, 0.0, 3.0, -1e30, 1e-30, 1.0, 2.0, -0.5, 1.0, 1.0, 4.0, -1.0, 1.0, 0.25])


def cmax(a, b):
    return b if a < b else a


def cmin(a, b):
    return b if b < a else a


def relu(slope):
    fwd = lambda x: F(cmax(x, F(0)) + F(slope) * cmin(x, F(0)))
    bwd = lambda x, y, dy: F(dy * F(F(x > 0) + F(slope) * F(x <= 0)))
    return fwd, bwd


def elu(alpha):
    def fwd(x):
        return F(cmax(x, F(0)) + F(alpha) * (cmath.expf(np.array([cmin(x, F(0))], F))[0] - F(1)))

    def bwd(x, y, dy):
        return F(dy * F(F(x > 0) + (F(alpha) + y) * F(x <= 0)))
    return fwd, bwd


def absval():
    return (lambda x: F(abs(x)),
            lambda x, y, dy: F(F(F(F(0) < x) - F(x < F(0))) * dy))


def clip(lo, hi):
    return (lambda x: F(cmax(F(lo), cmin(x, F(hi)))),
            lambda x, y, dy: F(dy * F(x >= F(lo) and x <= F(hi))))


CASES = {
    'ReLU': ('', relu(0.0)),
    'ReLU slope': ('relu_param { negative_slope: 0.1 }', relu(0.1)),
    'ELU': ('elu_param { alpha: 0.7 }', elu(0.7)),
    'AbsVal': ('', absval()),
    'Clip': ('clip_param { min: -1 max: 2 }', clip(-1, 2)),
}


def _same(a, b):
    a, b = np.asarray(a, F), np.asarray(b, F)
    return np.array_equal(np.isnan(a), np.isnan(b)) and np.array_equal(
        np.nan_to_num(a, nan=0.0), np.nan_to_num(b, nan=0.0))


@pytest.mark.parametrize('name', sorted(CASES))
@pytest.mark.parametrize('in_place', [False, True])
def test_elementwise_layer_matches_caffe_cpu_expressions(name, in_place):
    param, (fwd, bwd) = CASES[name]
    kind = name.split()[0]
    if in_place and kind == 'AbsVal':
        pytest.skip('AbsVal does not run in place')
    top = 'x' if in_place else 'y'
    net = make_net(layer(kind, ['x'], [top], param), {'x': (1, len(VALUES))})
    net.blobs['x'].data[...] = VALUES
    with np.errstate(all='ignore'):
        net.forward()
        want_y = [fwd(x) for x in VALUES]
        got_y = net.blobs[top].data.ravel().copy()
        assert _same(got_y, want_y), (kind, list(zip(VALUES, got_y, want_y)))
        net.blobs[top].diff[...] = GRADS
        net.backward()
        # in place, Caffe's backward reads the bottom data, which is then y
        xs = np.asarray(want_y, F) if in_place else VALUES
        want_dx = [bwd(x, y, dy) for x, y, dy in zip(xs, want_y, GRADS)]
        assert _same(net.blobs['x'].diff.ravel(), want_dx), (
            kind, list(zip(xs, net.blobs['x'].diff.ravel(), want_dx)))


def test_prelu_slope_gradient_takes_nan_from_nan_inputs():
    net = make_net(layer('PReLU', ['x'], ['y'], 'prelu_param { channel_shared: true'
                         ' filler { type: "constant" value: 0.25 } }'), {'x': (1, 1, 1, 3)})
    net.blobs['x'].data[...] = F([-1, np.nan, 2]).reshape(1, 1, 1, 3)
    net.forward()
    assert np.isnan(net.blobs['y'].data.ravel()[1])
    net.blobs['y'].diff[...] = 1
    with np.errstate(all='ignore'):
        net.backward()
    # dy * x * (x <= 0) is NaN for x = NaN, so the slope's gradient is NaN (Caffe);
    # the data gradient of NaN is dy * (0 + a * 0) = 0
    assert np.isnan(net.params['l'][0].diff).all()
    assert net.blobs['x'].diff.ravel().tolist() == [0.25, 0.0, 1.0]


def test_powf_one_half_follows_c_pow_at_minus_infinity_and_minus_zero():
    got = cmath.powf(F([-np.inf, -0.0, 4.0, -4.0, np.inf]), 0.5)
    assert got[0] == np.inf
    assert got[1] == 0 and not np.signbit(got[1])
    assert got[2] == 2 and np.isnan(got[3]) and got[4] == np.inf


def test_max_pooling_propagates_like_caffe_for_nan_and_infinity():
    # a NaN is never "greater" than the running max: Caffe skips it
    net = make_net(layer('Pooling', ['x'], ['y'], 'pooling_param { pool: MAX kernel_size: 2'
                         ' stride: 2 }'), {'x': (1, 1, 2, 4)})
    net.blobs['x'].data[...] = F([[np.nan, 1, np.inf, 0], [2, np.nan, -np.inf, -1]]).reshape(1, 1, 2, 4)
    net.forward()
    assert net.blobs['y'].data.ravel().tolist() == [2.0, np.inf]


def _caffe_lrn_backward(x, y, scale, dy, size, alpha, beta):
    """Caffe's CrossChannelBackward_cpu, loop for loop, in float32 (maps of fewer
    than 32 values: OpenBLAS's saxpy multiplies then adds, no fused head)."""
    N, C = x.shape[:2]
    pre = size - (size + 1) // 2
    dx = (dy * cmath.powf(scale, -beta)).astype(F)
    cache = F(2.0 * alpha * beta / size)
    for n in range(N):
        padded = np.zeros((C + size - 1,) + x.shape[2:], F)
        padded[pre:pre + C] = dy[n] * y[n]
        padded[pre:pre + C] /= scale[n]
        accum = np.zeros(x.shape[2:], F)
        for c in range(size - 1):
            accum += padded[c]
        for c in range(C):
            accum += padded[c + size - 1]
            dx[n, c] += -cache * (x[n, c] * accum)
            accum -= padded[c]
    return dx


def test_lrn_backward_keeps_caffes_running_window_sum():
    # A huge ratio enters the running sum and leaves it again: the channels after it
    # see what the cancellation left (Caffe), not an exact window sum.
    rs = np.random.RandomState(3)
    x = rs.standard_normal((2, 7, 2, 3)).astype(F)
    x[0, 2, 0, 0] = 3e18
    x[1, 3, 1, 1] = np.inf
    net = make_net(layer('LRN', ['x'], ['y'], 'lrn_param { local_size: 3 alpha: 1 beta: 0.75 }'),
                   {'x': x.shape})
    net.blobs['x'].data[...] = x
    with np.errstate(all='ignore'):
        net.forward()
        dy = rs.standard_normal(x.shape).astype(F)
        net.blobs['y'].diff[...] = dy
        net.backward()
        scale = net.layers[1].scale
        want = _caffe_lrn_backward(x, net.blobs['y'].data, scale, dy, 3, 1.0, 0.75)
    assert _same(net.blobs['x'].diff, want)
    assert np.isnan(want[1, 4:, 1, 1]).any()      # inf - inf stays in the later channels


def test_ave_pooling_backward_sums_in_caffes_window_order():
    # Shares of +-1e30 cancel: only Caffe's order of the float adds gives its result.
    k, s, p = 3, 1, 1
    rs = np.random.RandomState(49)
    dy = rs.choice(F([1e30, -1e30, 0.5, -2.0, 1.0]), (1, 1, 3, 4)).astype(F)
    net = make_net(layer('Pooling', ['x'], ['y'], 'pooling_param { pool: AVE kernel_size: %d'
                         ' stride: %d pad: %d }' % (k, s, p)), {'x': (1, 1, 3, 4)})
    net.forward()
    net.blobs['y'].diff[...] = dy
    net.backward()
    H, W = 3, 4
    want = np.zeros((H, W), F)
    for ph in range(3):                 # Caffe's AvePoolBackward, loop for loop, in float32
        for pw in range(4):
            hs, ws = ph * s - p, pw * s - p
            he, we = min(hs + k, H + p), min(ws + k, W + p)
            size = F((he - hs) * (we - ws))
            hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, H), min(we, W)
            for h in range(hs, he):
                for w in range(ws, we):
                    want[h, w] = F(want[h, w] + F(dy[0, 0, ph, pw] / size))
    np.testing.assert_array_equal(net.blobs['x'].diff[0, 0], want)
