"""Numerical gradient checks of the neuron layers, with the checker settings of
Caffe's src/caffe/test/test_neuron_layer.cpp (and test_clip_layer.cpp)."""
import numpy as np
import pytest

from minicaffe import gradcheck  # noqa: E402
GradientChecker, make_layer = gradcheck.GradientChecker, gradcheck.make_layer

SHAPE = (2, 3, 3, 2)


def gaussian(shape=SHAPE, seed=0, scale=1.0):
    return (np.random.default_rng(seed).normal(size=shape) * scale).astype(np.float32)


def away_from(x, points, margin=0.05):
    """Move values closer than margin to any of points (kinks) away from them."""
    x = x.copy()
    for p in points:
        near = np.abs(x - p) < margin
        x[near] = p + np.where(x[near] >= p, margin, -margin)
    return x


KINK = dict(kink=0.0, kink_range=0.01)

CASES = [
    # (id, prototxt, bottom data, checker kwargs) -- Caffe's settings per layer
    ('relu', 'type: "ReLU"', None, dict(stepsize=1e-2, threshold=1e-3, **KINK)),
    ('relu_leaky', 'type: "ReLU" relu_param { negative_slope: 0.01 }', None,
     dict(stepsize=1e-2, threshold=1e-3, **KINK)),
    ('elu', 'type: "ELU" elu_param { alpha: 0.5 }', None,
     dict(stepsize=1e-2, threshold=1e-3, **KINK)),
    ('elu_as_relu', 'type: "ELU" elu_param { alpha: 0 }', None,
     dict(stepsize=1e-2, threshold=1e-3, **KINK)),
    ('sigmoid', 'type: "Sigmoid"', None, dict(stepsize=1e-2, threshold=1e-3, **KINK)),
    ('tanh', 'type: "TanH"', None, dict(stepsize=1e-2, threshold=1e-3)),
    ('absval', 'type: "AbsVal"', None, dict(stepsize=1e-2, threshold=1e-3, **KINK)),
    ('bnll', 'type: "BNLL"', None, dict(stepsize=1e-2, threshold=1e-3)),
    ('swish', 'type: "Swish"', None, dict(stepsize=1e-2, threshold=1e-3, **KINK)),
    ('swish_beta', 'type: "Swish" swish_param { beta: 1.5 }', None,
     dict(stepsize=1e-2, threshold=1e-3, **KINK)),
    ('swish_linear', 'type: "Swish" swish_param { beta: 0 }', None,
     dict(stepsize=1e-2, threshold=1e-3, **KINK)),
    ('exp', 'type: "Exp"', None, dict(stepsize=1e-2, threshold=1e-3)),
    ('exp_base2_scale_shift', 'type: "Exp" exp_param { base: 2 scale: 3 shift: 1 }',
     gaussian(scale=0.5), dict(stepsize=1e-2, threshold=1e-3)),
    ('exp_e_shift', 'type: "Exp" exp_param { scale: 0.5 shift: 1 }', None,
     dict(stepsize=1e-2, threshold=1e-3)),
    ('log', 'type: "Log"', np.abs(gaussian()) + 0.5, dict(stepsize=1e-2, threshold=1e-2)),
    ('log_base2_scale_shift', 'type: "Log" log_param { base: 2 scale: 3 shift: 1 }',
     np.abs(gaussian()) + 0.5, dict(stepsize=1e-2, threshold=1e-2)),
    ('power_frac', 'type: "Power" power_param { power: 0.37 scale: 0.83 shift: -2.4 }',
     2.4 / 0.83 + np.abs(gaussian()) + 0.3,  # base shift + scale x > 0, as Caffe's test
     dict(stepsize=1e-3, threshold=1e-2, **KINK)),
    ('power_frac_no_shift', 'type: "Power" power_param { power: 0.37 scale: 0.83 }',
     np.abs(gaussian()) + 0.3, dict(stepsize=1e-3, threshold=1e-2, **KINK)),
    ('power_zero', 'type: "Power" power_param { power: 0 scale: 0.83 shift: -2.4 }', None,
     dict(stepsize=1e-3, threshold=1e-2, **KINK)),
    ('power_one', 'type: "Power" power_param { power: 1 scale: 0.83 shift: -2.4 }', None,
     dict(stepsize=1e-3, threshold=1e-2, **KINK)),
    ('power_two', 'type: "Power" power_param { power: 2 scale: 0.34 shift: -2.4 }', None,
     dict(stepsize=1e-3, threshold=1e-2, **KINK)),
    ('power_two_no_shift', 'type: "Power" power_param { power: 2 scale: 0.5 }', None,
     dict(stepsize=1e-3, threshold=1e-2, **KINK)),
    ('power_cube_no_shift', 'type: "Power" power_param { power: 3 scale: 0.5 }', None,
     dict(stepsize=1e-3, threshold=1e-2, **KINK)),
    ('clip', 'type: "Clip" clip_param { min: -1 max: 2 }',
     away_from(gaussian(scale=2.0), [-1, 2]), dict(stepsize=1e-2, threshold=1e-3)),
    ('dropout_test', 'type: "Dropout" dropout_param { dropout_ratio: 0.5 }', None,
     dict(stepsize=1e-2, threshold=1e-3)),
]


@pytest.mark.parametrize('proto,data,kw', [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_gradient(proto, data, kw):
    phase = 'TEST' if 'dropout_test' in proto else 'TRAIN'
    layer, bottom, top = make_layer(proto, [SHAPE if data is None else data.astype(np.float32)],
                                    phase=phase)
    GradientChecker(seed=1701, **kw).check_gradient_exhaustive(layer, bottom, top)


@pytest.mark.parametrize('ratio', [0.5, 0.3])
def test_dropout_train_gradient(ratio):
    # The checker reseeds minicaffe.rng before each forward, so each forward draws the
    # same mask and the numerical gradient is that of x * mask / (1 - p).
    layer, bottom, top = make_layer('type: "Dropout" dropout_param { dropout_ratio: %g }' % ratio,
                                    [SHAPE], phase='TRAIN')
    GradientChecker(stepsize=1e-2, threshold=1e-3).check_gradient_exhaustive(layer, bottom, top)


@pytest.mark.parametrize('proto', [
    'type: "PReLU" prelu_param { filler { type: "gaussian" } }',
    'type: "PReLU" prelu_param { filler { type: "gaussian" } channel_shared: true }',
])
def test_prelu_gradient(proto):
    # checks the input gradient and the slope (parameter) gradient
    layer, bottom, top = make_layer(proto, [SHAPE], phase='TRAIN')
    GradientChecker(stepsize=1e-2, threshold=1e-3, seed=1701, **KINK)\
        .check_gradient_exhaustive(layer, bottom, top)


def test_prelu_gradient_three_axes():
    layer, bottom, top = make_layer('type: "PReLU" prelu_param { filler { type: "gaussian" } }',
                                    [(3, 4, 2)], phase='TRAIN')
    GradientChecker(stepsize=1e-2, threshold=1e-3, seed=1701, **KINK)\
        .check_gradient_exhaustive(layer, bottom, top)


def test_gradient_checker_catches_a_wrong_backward():
    # guard: the checks above could not fail if the checker accepted anything
    layer, bottom, top = make_layer('type: "TanH"', [(2, 3)], phase='TRAIN')
    real = layer.backward

    def wrong(top_, pd, bottom_):
        real(top_, pd, bottom_)
        bottom_[0].diff[...] *= 1.5
    layer.backward = wrong
    with pytest.raises(gradcheck.GradientCheckError):
        GradientChecker(stepsize=1e-2, threshold=1e-3).check_gradient_exhaustive(layer, bottom, top)
