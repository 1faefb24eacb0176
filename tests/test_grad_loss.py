"""Numerical gradient checks of the loss layers, with the data, shapes (scaled down
where Caffe's are large) and checker settings of Caffe's src/caffe/test/
test_*_loss_layer.cpp.  Label, similarity and infogain-matrix bottoms are not
checked (check_bottom picks the predictions), as in Caffe's tests.  The scalar
loss top's diff is set by the checker, so these also check that backward
scales by top[0].diff (the loss weight)."""
import numpy as np
import pytest

from minicaffe import gradcheck  # noqa: E402
GradientChecker, make_layer = gradcheck.GradientChecker, gradcheck.make_layer


def gaussian(*shape, seed=0, std=1.0):
    return (np.random.default_rng(seed).normal(size=shape) * std).astype(np.float32)


def int_labels(shape, n, seed=1):
    return np.random.default_rng(seed).integers(0, n, size=shape).astype(np.float32)


def check(proto, bottoms, check_bottom=0, exhaustive=True, **kw):
    layer, bottom, top = make_layer(proto, bottoms, phase='TRAIN')
    checker = GradientChecker(seed=1701, **kw)
    if exhaustive:
        checker.check_gradient_exhaustive(layer, bottom, top, check_bottom=check_bottom)
    else:
        checker.check_gradient(layer, bottom, top, check_bottom=check_bottom)


# ---------------------------------------------------------------- SoftmaxWithLoss
# test_softmax_with_loss_layer.cpp: data (10, 5, 2, 3) gaussian, labels (10, 1, 2, 3) in
# {0..4}; checker (1e-2, 1e-2, 1701); also with ignore_label 0 and with normalize false.
SOFTMAX_SHAPE, SOFTMAX_LABEL = (4, 5, 2, 3), (4, 1, 2, 3)


@pytest.mark.parametrize('param', [
    '',
    'loss_param { ignore_label: 0 }',
    'loss_param { normalize: false }',
    'loss_param { normalization: FULL ignore_label: 2 }',
    'loss_param { normalization: NONE }',
])
def test_softmax_with_loss(param):
    check('type: "SoftmaxWithLoss" ' + param,
          [gaussian(*SOFTMAX_SHAPE), int_labels(SOFTMAX_LABEL, 5)], stepsize=1e-2, threshold=1e-2)


def test_softmax_with_loss_axis():
    check('type: "SoftmaxWithLoss" softmax_param { axis: 2 } loss_param { normalization: BATCH_SIZE }',
          [gaussian(3, 2, 4), int_labels((3, 2), 4)], stepsize=1e-2, threshold=1e-2)


# ---------------------------------------------------------------- EuclideanLoss
# test_euclidean_loss_layer.cpp: two (10, 5, 1, 1) gaussian bottoms; checker (1e-2, 1e-2, 1701);
# both bottoms checked.
def test_euclidean_loss():
    check('type: "EuclideanLoss"', [gaussian(10, 5, 1, 1), gaussian(10, 5, 1, 1, seed=1)],
          check_bottom=-1, stepsize=1e-2, threshold=1e-2)


# ---------------------------------------------------------------- SigmoidCrossEntropyLoss
# test_sigmoid_cross_entropy_loss_layer.cpp: data (10, 5, 1, 1) gaussian std 1, targets uniform
# [0, 1]; checker (1e-2, 1e-2, 1701).
@pytest.mark.parametrize('param', ['', 'loss_param { ignore_label: -1 normalization: VALID }'])
def test_sigmoid_cross_entropy_loss(param):
    t = np.random.default_rng(2).uniform(size=(10, 5, 1, 1)).astype(np.float32)
    if param:
        t[::3, 1] = -1
    check('type: "SigmoidCrossEntropyLoss" ' + param, [gaussian(10, 5, 1, 1), t],
          stepsize=1e-2, threshold=1e-2)


# ---------------------------------------------------------------- HingeLoss
# test_hinge_loss_layer.cpp: data (10, 5, 1, 1) gaussian std 10, labels in {0..4};
# L1 checker (1e-2, 2e-3, 1701, 1, 0.01) -- kink at |x| = 1; L2 checker (1e-2, 1e-2, 1701).
def test_hinge_loss_l1():
    check('type: "HingeLoss"', [gaussian(10, 5, 1, 1, std=10), int_labels((10, 1, 1, 1), 5)],
          stepsize=1e-2, threshold=2e-3, kink=1.0, kink_range=0.01)


def test_hinge_loss_l2():
    check('type: "HingeLoss" hinge_loss_param { norm: L2 }',
          [gaussian(10, 5, 1, 1, std=10), int_labels((10, 1, 1, 1), 5)],
          stepsize=1e-2, threshold=1e-2)


# ---------------------------------------------------------------- ContrastiveLoss
# test_contrastive_loss_layer.cpp: a, b (128, 10, 1, 1) gaussian std 0.3, sim in {0, 1};
# checker (1e-2, 1e-2, 1701); bottoms 0 and 1 checked separately; also legacy_version.
@pytest.mark.parametrize('legacy', [False, True])
@pytest.mark.parametrize('which', [0, 1])
def test_contrastive_loss(legacy, which):
    param = 'contrastive_loss_param { legacy_version: true }' if legacy else ''
    sim = int_labels((12, 1, 1, 1), 2, seed=3)
    check('type: "ContrastiveLoss" ' + param,
          [gaussian(12, 4, 1, 1, std=0.3), gaussian(12, 4, 1, 1, seed=1, std=0.3), sim],
          check_bottom=which, stepsize=1e-2, threshold=1e-2)


# ---------------------------------------------------------------- MultinomialLogisticLoss
# test_multinomial_logistic_loss_layer.cpp: data (10, 5, 1, 1) from the positive unit-ball
# filler (rows sum to 1), labels in {0..4}; checker (1e-2, 2e-2, 1701, 0, 0.05).
def test_multinomial_logistic_loss():
    p = np.random.default_rng(0).uniform(size=(10, 5, 1, 1))
    p = (p / p.sum(axis=1, keepdims=True)).astype(np.float32)
    check('type: "MultinomialLogisticLoss"', [p, int_labels((10, 1, 1, 1), 5)],
          stepsize=1e-2, threshold=2e-2, kink=0.0, kink_range=0.05)


# ---------------------------------------------------------------- InfogainLoss
# test_infogain_loss_layer.cpp: data (4, 2, 5, 2) gaussian, labels (4, 2, 1, 2) in {0..4},
# H (1, 1, 5, 5) uniform [0.1, 2], infogain axis 2; checker (1e-4, 2e-2, 1701).
@pytest.mark.parametrize('param', ['', 'loss_param { ignore_label: 1 normalization: FULL }'])
def test_infogain_loss(param):
    H = np.random.default_rng(4).uniform(0.1, 2.0, size=(1, 1, 5, 5)).astype(np.float32)
    check('type: "InfogainLoss" infogain_loss_param { axis: 2 } ' + param,
          [gaussian(4, 2, 5, 2), int_labels((4, 2, 1, 2), 5), H], stepsize=1e-4, threshold=2e-2)


# ---------------------------------------------------------------- the checks can fail
def test_checker_catches_missing_loss_weight_scaling():
    # a backward that ignored top[0].diff (the loss weight) must be caught
    layer, bottom, top = make_layer('type: "SoftmaxWithLoss"', [gaussian(3, 4), int_labels(3, 4)],
                                    phase='TRAIN')
    real = layer.backward

    def unscaled(top_, pd, bottom_):
        saved = top_[0].diff.copy()
        top_[0].diff[...] = 1.0
        real(top_, pd, bottom_)
        top_[0].diff[...] = saved
    layer.backward = unscaled
    with pytest.raises(gradcheck.GradientCheckError):
        GradientChecker(stepsize=1e-2, threshold=1e-2).check_gradient_exhaustive(
            layer, bottom, top, check_bottom=0)
