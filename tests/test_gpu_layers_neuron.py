"""CPU/GPU parity of the neuron layers' device code (neuron.py): every layer and
mode, in-place use (top blob is the bottom blob) and Dropout's device mask.

CI runs these through tests/fake_cupy.py; tools/gpu_check.sh on a real device."""
import numpy as np
import pytest

from minicaffe import mode
from minicaffe.blob import Blob
from minicaffe.layers.base import layer_class
from minicaffe.protoio import parse_text, pb
from minicaffe.rng import set_random_seed

from gpu_support import check_gpu_parity, gpu_mode

SHAPE = (2, 3, 4, 5)


def rand(shape, seed=0, lo=None):
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    if lo is not None:                      # strictly positive inputs (Log, fractional Power)
        x = np.abs(x) + np.float32(lo)
    return x


# ----------------------------------------------------------------- parity
CASES = [
    ('ReLU', '', None),
    ('ReLU', 'relu_param { negative_slope: 0.1 }', None),
    ('PReLU', '', None),
    ('PReLU', 'prelu_param { filler { type: "uniform" min: -0.5 max: 0.5 } }', None),
    ('PReLU', 'prelu_param { channel_shared: true filler { type: "constant" value: 0.3 } }', None),
    ('Sigmoid', '', None),
    ('TanH', '', None),
    ('AbsVal', '', None),
    ('BNLL', '', None),
    ('Clip', 'clip_param { min: -0.5 max: 0.7 }', None),
    ('ELU', '', None),
    ('ELU', 'elu_param { alpha: 0.4 }', None),
    ('Exp', '', None),
    ('Exp', 'exp_param { base: 2 scale: 0.5 shift: 0.3 }', None),
    ('Log', '', 0.1),
    ('Log', 'log_param { base: 2 scale: 2 shift: 0.5 }', 0.1),
    ('Power', 'power_param { power: 2 scale: 0.5 shift: 1 }', None),
    ('Power', 'power_param { power: 1 scale: 2 shift: -1 }', None),
    ('Power', 'power_param { power: 0.5 }', 0.1),
    ('Power', 'power_param { power: 3 scale: 1.5 shift: 0.2 }', 0.1),
    ('Power', 'power_param { power: 0 scale: 2 }', None),
    ('Power', 'power_param { power: 2 scale: 0 shift: 3 }', None),
    ('Swish', '', None),
    ('Swish', 'swish_param { beta: 1.7 }', None),
]


@pytest.mark.parametrize('type_,param,lo', CASES,
                         ids=['%s-%d' % (c[0], i) for i, c in enumerate(CASES)])
def test_parity(type_, param, lo):
    check_gpu_parity('type: "%s" %s' % (type_, param), [rand(SHAPE, lo=lo)])


def test_prelu_2d():
    # (N, C) input: the slope gradient sums over N only
    check_gpu_parity('type: "PReLU" prelu_param { filler { type: "uniform" min: 0 max: 1 } }',
                     [rand((6, 4))])


def test_relu_propagate_down_false():
    check_gpu_parity('type: "ReLU"', [rand(SHAPE)], propagate_down=[False])


def test_threshold_forward():
    layer = check_gpu_parity('type: "Threshold" threshold_param { threshold: 0.2 }',
                             [rand(SHAPE)], backward=False)
    assert getattr(type(layer), 'backward_gpu', None) is None     # no gradient, as Caffe


def test_dropout_test_phase():
    check_gpu_parity('type: "Dropout" dropout_param { dropout_ratio: 0.3 }', [rand(SHAPE)],
                     phase='TEST')


# ----------------------------------------------------------------- in place
def _inplace(text, x, phase, params=None):
    """Forward + backward of one layer whose top blob is its bottom blob; returns
    the output data, the input diff and the parameter diffs."""
    lp = parse_text(text, pb.LayerParameter(), '<test>')
    lp.name = 'l'
    lp.phase = phase
    layer = layer_class(lp.type, lp)(lp, lp.phase)
    blob = Blob(x.shape)
    blob.data[...] = x
    layer.setup([blob], [blob])
    layer.reshape([blob], [blob])
    layer.param_propagate_down = [True] * len(layer.blobs)
    if params is not None:
        for b, v in zip(layer.blobs, params):
            b.data[...] = v
    mode.run_forward(layer, [blob], [blob])
    y = blob.data.copy()
    blob.diff[...] = rand(x.shape, seed=7)
    for b in layer.blobs:
        b.diff[...] = 0
    mode.run_backward(layer, [blob], [True], [blob])
    return y, blob.diff.copy(), [b.data.copy() for b in layer.blobs], \
        [b.diff.copy() for b in layer.blobs], layer


INPLACE = [
    ('ReLU', ''),
    ('ReLU', 'relu_param { negative_slope: 0.2 }'),
    ('PReLU', 'prelu_param { filler { type: "uniform" min: -0.5 max: 0.5 } }'),
    ('PReLU', 'prelu_param { channel_shared: true }'),
    ('ELU', ''),
    ('Sigmoid', ''),
    ('TanH', ''),
    ('BNLL', ''),
    ('Clip', 'clip_param { min: -0.5 max: 0.5 }'),
    ('Exp', 'exp_param { scale: 0.5 }'),
    ('Power', 'power_param { power: 2 scale: 0.5 shift: 1 }'),
    ('Swish', ''),
    ('Dropout', ''),                 # TEST phase: identity in place
]


@pytest.mark.parametrize('type_,param', INPLACE, ids=['%s-%d' % (c[0], i) for i, c in enumerate(INPLACE)])
def test_in_place(type_, param):
    text = 'type: "%s" %s' % (type_, param)
    x = rand(SHAPE)
    y_cpu, dx_cpu, params, pdiff_cpu, _ = _inplace(text, x, pb.TEST)
    with gpu_mode():
        y_gpu, dx_gpu, _, pdiff_gpu, layer = _inplace(text, x, pb.TEST, params)
        assert type(layer).forward_gpu is not None and type(layer).backward_gpu is not None
    np.testing.assert_allclose(y_gpu, y_cpu, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dx_gpu, dx_cpu, rtol=1e-5, atol=1e-6)
    for a, b in zip(pdiff_gpu, pdiff_cpu):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    # and in place gives what a separate top gives
    ref = check_gpu_parity(text, [x], phase='TEST')
    assert ref is not None


def test_relu_in_place_matches_separate_top():
    x = rand(SHAPE)
    with gpu_mode():
        y, dx, _, _, _ = _inplace('type: "ReLU"', x, pb.TEST)
    np.testing.assert_array_equal(y, np.maximum(x, 0))
    np.testing.assert_array_equal(dx, rand(SHAPE, seed=7) * (x > 0))


# ----------------------------------------------------------------- Dropout TRAIN
def _dropout_train(x, ratio, seed, dy=None):
    """GPU-mode Dropout TRAIN forward (and backward with dy) from seed."""
    from minicaffe.gradcheck import make_layer
    set_random_seed(seed)
    layer, bottom, top = make_layer('type: "Dropout" dropout_param { dropout_ratio: %g }' % ratio,
                                    [x], phase='TRAIN')
    mode.run_forward(layer, bottom, top)
    y = top[0].data.copy()
    dx = None
    if dy is not None:
        top[0].diff[...] = dy
        mode.run_backward(layer, top, [True], bottom)
        dx = bottom[0].diff.copy()
    return y, dx, layer


@pytest.mark.parametrize('ratio', [0.5, 0.2])
def test_dropout_train_mask_statistics_and_scale(ratio):
    x = np.ones((200, 50), np.float32)
    with gpu_mode():
        y, _, layer = _dropout_train(x, ratio, 3)
        assert type(layer).forward_gpu is not None
    scale = np.float32(1.0 / (1.0 - ratio))
    kept = y != 0
    assert np.all(y[kept] == scale)                 # kept values scaled by 1/(1-p), exactly
    frac = 1.0 - kept.mean()
    assert abs(frac - ratio) < 0.02, frac           # 10000 draws: sd ~0.005


def test_dropout_train_repeatable_with_seed():
    x = rand((8, 6, 5))
    with gpu_mode():
        y1, _, _ = _dropout_train(x, 0.5, 11)
        y2, _, _ = _dropout_train(x, 0.5, 11)
        y3, _, _ = _dropout_train(x, 0.5, 12)
    np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(y1, y3)


def test_dropout_train_backward_uses_the_forward_mask():
    x = rand((8, 6, 5)) + np.float32(10)            # no zero inputs: y != 0 marks kept units
    dy = rand((8, 6, 5), seed=3)
    with gpu_mode():
        y, dx, _ = _dropout_train(x, 0.4, 5, dy)
    scale = np.float32(1.0 / 0.6)
    mask = (y != 0).astype(np.float32) * scale
    np.testing.assert_array_equal(y, x * mask)
    np.testing.assert_array_equal(dx, dy * mask)
    assert 0 < (y == 0).sum() < y.size


def test_dropout_train_in_place():
    x = rand((8, 6, 5)) + np.float32(10)
    with gpu_mode():
        set_random_seed(4)
        y, dx, _, _, _ = _inplace('type: "Dropout" dropout_param { dropout_ratio: 0.5 }', x, pb.TRAIN)
    mask = (y != 0).astype(np.float32) * np.float32(2)
    np.testing.assert_array_equal(y, x * mask)
    np.testing.assert_array_equal(dx, rand(x.shape, seed=7) * mask)
