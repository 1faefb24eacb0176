"""Behaviour of the neuron layers beyond the conformance cases: exact formulas,
Caffe's special cases, in-place use, Dropout's mask, and parameter errors."""
import numpy as np
import pytest

import minicaffe as caffe
from minicaffe import protoio
from minicaffe.errors import MinicaffeError
from minicaffe.protoio import pb


def make_net(layers, inputs, phase=caffe.TEST, force_backward=True):
    """inputs: {top name: shape}; layers: prototxt text of the layers after Input."""
    tops = ''.join('top: "%s" ' % n for n in inputs)
    shapes = ''.join('shape { %s } ' % ' '.join('dim: %d' % d for d in s) for s in inputs.values())
    text = ('%s layer { name: "input" type: "Input" %s input_param { %s } }\n%s'
            % ('force_backward: true' if force_backward else '', tops, shapes, layers))
    param = protoio.parse_text(text, pb.NetParameter())
    return caffe.Net(net_param=param, phase=phase)


def run(net, x, dy=None, top='y'):
    net.blobs['x'].data[...] = x
    net.forward()
    y = net.blobs[top].data.copy()
    if dy is None:
        return y, None
    net.blobs[top].diff[...] = dy
    net.backward()
    return y, net.blobs['x'].diff.copy()


def rand(*shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def one(type_, param='', inplace=False, shape=(2, 3, 4), phase=caffe.TEST):
    top = 'x' if inplace else 'y'
    net = make_net('layer { name: "l" type: "%s" bottom: "x" top: "%s" %s }' % (type_, top, param),
                   {'x': shape}, phase=phase)
    return net, top


# ---------------------------------------------------------------- formulas
FORMULAS = [
    ('ReLU', '', lambda x: np.maximum(x, 0), lambda x, y: (x > 0).astype(float)),
    ('ReLU', 'relu_param { negative_slope: 0.2 }', lambda x: np.where(x > 0, x, 0.2 * x),
     lambda x, y: np.where(x > 0, 1.0, 0.2)),
    ('ELU', 'elu_param { alpha: 0.5 }', lambda x: np.where(x > 0, x, 0.5 * (np.exp(x) - 1)),
     lambda x, y: np.where(x > 0, 1.0, y + 0.5)),
    ('Sigmoid', '', lambda x: 1 / (1 + np.exp(-x)), lambda x, y: y * (1 - y)),
    ('TanH', '', np.tanh, lambda x, y: 1 - y * y),
    ('AbsVal', '', np.abs, lambda x, y: np.sign(x)),
    ('BNLL', '', lambda x: np.log1p(np.exp(x)), lambda x, y: 1 / (1 + np.exp(-x))),
    ('Swish', 'swish_param { beta: 1.5 }', lambda x: x / (1 + np.exp(-1.5 * x)),
     lambda x, y: 1.5 * y + (1 - 1.5 * y) / (1 + np.exp(-1.5 * x))),
    ('Exp', 'exp_param { base: 3 scale: 0.5 shift: -0.25 }', lambda x: 3.0 ** (0.5 * x - 0.25),
     lambda x, y: y * 0.5 * np.log(3)),
    ('Exp', 'exp_param { scale: 2 shift: 0.3 }', lambda x: np.exp(2 * x + 0.3),
     lambda x, y: 2 * y),
    ('Log', 'log_param { base: 10 scale: 2 shift: 9 }', lambda x: np.log10(2 * x + 9),
     lambda x, y: 2 / ((2 * x + 9) * np.log(10))),
    ('Log', '', np.log, lambda x, y: 1 / x),
    ('Power', 'power_param { power: 3 scale: 0.5 shift: 1 }', lambda x: (1 + 0.5 * x) ** 3,
     lambda x, y: 1.5 * (1 + 0.5 * x) ** 2),
    ('Power', 'power_param { power: 2 scale: -2 }', lambda x: (2 * x) ** 2, lambda x, y: 8 * x),
    ('Power', 'power_param { power: 3 scale: 2 }', lambda x: (2 * x) ** 3, lambda x, y: 24 * x * x),
    ('Power', 'power_param { power: 1 scale: 3 shift: 2 }', lambda x: 3 * x + 2,
     lambda x, y: 3 + 0 * x),
    ('Clip', 'clip_param { min: -0.5 max: 0.25 }', lambda x: np.clip(x, -0.5, 0.25),
     lambda x, y: ((x >= -0.5) & (x <= 0.25)).astype(float)),
]


@pytest.mark.parametrize('type_,param,f,df', FORMULAS, ids=[f[0] + str(i) for i, f in enumerate(FORMULAS)])
def test_formula(type_, param, f, df):
    x = rand(2, 3, 4)
    if type_ == 'Log':
        x = np.abs(x) + 0.2
    dy = rand(2, 3, 4, seed=1)
    net, top = one(type_, param)
    y, dx = run(net, x, dy)
    x64 = x.astype(np.float64)
    y_ref = f(x64)
    np.testing.assert_allclose(y, y_ref, rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(dx, dy * df(x64, y_ref), rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize('type_,param', [
    ('ReLU', ''), ('ReLU', 'relu_param { negative_slope: 0.1 }'), ('ELU', ''), ('Sigmoid', ''),
    ('TanH', ''), ('Swish', ''), ('Exp', ''), ('PReLU', ''), ('Dropout', '')])
def test_in_place_matches_out_of_place(type_, param):
    # The layers whose Caffe backward reads only top data, or bottom data whose sign
    # survives the forward (ReLU, ELU), or a saved copy (PReLU).  BNLL, Clip, Power,
    # Log read the overwritten bottom in place, in Caffe as here.
    x = rand(2, 3, 4)
    dy = rand(2, 3, 4, seed=2)
    results = []
    for inplace in (False, True):
        caffe.set_random_seed(5)
        net, top = one(type_, param, inplace=inplace, phase=caffe.TRAIN)
        y, dx = run(net, x, dy, top=top)
        pd = [p.diff.copy() for p in net.params['l']] if 'l' in net.params else []
        results.append((y, dx, pd))
    (y0, dx0, p0), (y1, dx1, p1) = results
    np.testing.assert_array_equal(y0, y1)
    np.testing.assert_array_equal(dx0, dx1)
    for a, b in zip(p0, p1):
        np.testing.assert_array_equal(a, b)


def test_bnll_large_inputs_do_not_overflow():
    net, _ = one('BNLL', shape=(4,))
    y, dx = run(net, np.array([100, -100, 60, 0], np.float32), np.ones(4, np.float32))
    np.testing.assert_allclose(y, [100, 0, 60, np.log(2)], rtol=1e-6, atol=1e-30)
    assert np.all(np.isfinite(dx))
    np.testing.assert_allclose(dx, [1, 0, 1, 0.5], atol=1e-6)


def test_relu_gradient_at_zero_is_negative_slope():
    net, _ = one('ReLU', 'relu_param { negative_slope: 0.3 }', shape=(3,))
    _, dx = run(net, np.array([0, 1, -1], np.float32), np.ones(3, np.float32))
    np.testing.assert_allclose(dx, [0.3, 1, 0.3])


def test_clip_gradient_passes_at_the_bounds():
    net, _ = one('Clip', 'clip_param { min: -0.5 max: 0.5 }', shape=(5,))
    y, dx = run(net, np.array([-0.5, 0.5, -0.6, 0.6, 0], np.float32), np.ones(5, np.float32))
    np.testing.assert_array_equal(y, [-0.5, 0.5, -0.5, 0.5, 0])
    np.testing.assert_array_equal(dx, [1, 1, 0, 0, 1])


def test_clip_requires_min_and_max():
    with pytest.raises(MinicaffeError, match='clip_param'):
        one('Clip', 'clip_param { min: 0 }')


def test_threshold_values_and_no_backward():
    net, _ = one('Threshold', 'threshold_param { threshold: 0.5 }', shape=(4,))
    y, _ = run(net, np.array([0.5, 0.6, -1, 2], np.float32))
    np.testing.assert_array_equal(y, [0, 1, 0, 1])
    net.blobs['y'].diff[...] = 1
    with pytest.raises(MinicaffeError, match='cannot backpropagate'):
        net.backward()


# ---------------------------------------------------------------- Power special cases
def test_power_zero_power_is_constant_one():
    net, _ = one('Power', 'power_param { power: 0 scale: 3 shift: 2 }', shape=(3,))
    y, dx = run(net, np.array([1, -5, 0], np.float32), np.ones(3, np.float32))
    np.testing.assert_array_equal(y, [1, 1, 1])
    np.testing.assert_array_equal(dx, [0, 0, 0])


def test_power_zero_scale_is_shift_to_the_power():
    net, _ = one('Power', 'power_param { power: 3 scale: 0 shift: 2 }', shape=(3,))
    y, dx = run(net, np.array([1, -5, 0], np.float32), np.ones(3, np.float32))
    np.testing.assert_array_equal(y, [8, 8, 8])
    np.testing.assert_array_equal(dx, [0, 0, 0])


def test_power_fractional_of_negative_is_nan_as_in_caffe():
    net, _ = one('Power', 'power_param { power: 0.5 }', shape=(2,))
    y, _ = run(net, np.array([-4, 4], np.float32))
    assert np.isnan(y[0]) and y[1] == 2


# ---------------------------------------------------------------- Exp / Log params
@pytest.mark.parametrize('type_,param,msg', [
    ('Exp', 'exp_param { base: -2 }', 'strictly positive'),
    ('Exp', 'exp_param { base: 0 }', 'strictly positive'),
    ('Log', 'log_param { base: -3 }', 'strictly positive'),
    ('Log', 'log_param { base: 1 }', 'base must not be 1'),
    ('Dropout', 'dropout_param { dropout_ratio: 1 }', 'dropout_ratio'),
    ('Dropout', 'dropout_param { dropout_ratio: -0.1 }', 'dropout_ratio'),
])
def test_bad_params(type_, param, msg):
    with pytest.raises(MinicaffeError, match=msg) as e:
        one(type_, param)
    assert 'layer "l"' in str(e.value)


def test_absval_refuses_in_place():
    with pytest.raises(MinicaffeError, match='in-place'):
        one('AbsVal', inplace=True)


# ---------------------------------------------------------------- PReLU
def test_prelu_default_filler_and_shapes():
    net, _ = one('PReLU', shape=(2, 3, 4))
    np.testing.assert_array_equal(net.params['l'][0].data, [0.25, 0.25, 0.25])
    net, _ = one('PReLU', 'prelu_param { channel_shared: true }', shape=(2, 3, 4))
    assert net.params['l'][0].shape == ()
    assert float(net.params['l'][0].data) == np.float32(0.25)


def test_prelu_per_channel_forward_and_slope_gradient():
    net, _ = one('PReLU', shape=(2, 3, 2))
    a = np.array([0.1, -0.5, 2.0], np.float32)
    net.params['l'][0].data[...] = a
    x, dy = rand(2, 3, 2), rand(2, 3, 2, seed=3)
    y, dx = run(net, x, dy)
    slope = a[None, :, None]
    np.testing.assert_allclose(y, np.where(x > 0, x, slope * x), rtol=1e-6)
    np.testing.assert_allclose(dx, np.where(x > 0, dy, slope * dy), rtol=1e-6)
    want = np.where(x <= 0, dy * x, 0).sum(axis=(0, 2))
    np.testing.assert_allclose(net.params['l'][0].diff, want, rtol=1e-5)


def test_prelu_slope_gradient_accumulates_like_caffe():
    net, _ = one('PReLU', 'prelu_param { channel_shared: true }', shape=(2, 3))
    x, dy = rand(2, 3), rand(2, 3, seed=4)
    run(net, x, dy)
    g1 = float(net.params['l'][0].diff)
    net.backward()
    np.testing.assert_allclose(float(net.params['l'][0].diff), 2 * g1, rtol=1e-6)
    np.testing.assert_allclose(g1, np.where(x <= 0, dy * x, 0).sum(), rtol=1e-5)


def test_prelu_needs_two_axes():
    with pytest.raises(MinicaffeError, match='at least 2 axes'):
        one('PReLU', shape=(5,))


def test_prelu_given_blob_must_match_channels():
    with pytest.raises(MinicaffeError, match='negative slope blob has 2 values'):
        one('PReLU', 'blobs { shape { dim: 2 } data: 0.1 data: 0.2 }', shape=(2, 3))


# ---------------------------------------------------------------- Dropout
def test_dropout_train_mask_scale_and_backward():
    caffe.set_random_seed(11)
    net, _ = one('Dropout', 'dropout_param { dropout_ratio: 0.25 }', shape=(200, 50),
                 phase=caffe.TRAIN)
    x = np.abs(rand(200, 50)) + 0.1
    dy = rand(200, 50, seed=6)
    y, dx = run(net, x, dy)
    kept = y != 0
    np.testing.assert_allclose(y[kept], x[kept] / 0.75, rtol=1e-6)
    assert abs(kept.mean() - 0.75) < 0.02
    np.testing.assert_allclose(dx, np.where(kept, dy / 0.75, 0), rtol=1e-6)


def test_dropout_mask_is_deterministic_under_reseed_and_redrawn_each_forward():
    net, _ = one('Dropout', shape=(10, 10), phase=caffe.TRAIN)
    x = np.ones((10, 10), np.float32)
    caffe.set_random_seed(3)
    y1, _ = run(net, x)
    y2, _ = run(net, x)
    caffe.set_random_seed(3)
    y3, _ = run(net, x)
    np.testing.assert_array_equal(y1, y3)
    assert not np.array_equal(y1, y2)
    assert set(np.unique(y1)) <= {0.0, 2.0}


def test_dropout_test_phase_is_identity():
    net, _ = one('Dropout', 'dropout_param { dropout_ratio: 0.9 }', shape=(3, 4))
    x, dy = rand(3, 4), rand(3, 4, seed=1)
    y, dx = run(net, x, dy)
    np.testing.assert_array_equal(y, x)
    np.testing.assert_array_equal(dx, dy)
