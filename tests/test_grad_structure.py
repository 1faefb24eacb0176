"""Numerical gradient checks of the structural layers, with the checker settings
of Caffe's test_{flatten,reshape,concat,slice,eltwise,tile,reduction,filter,
batch_reindex}_layer.cpp."""
import numpy as np
import pytest

from minicaffe import gradcheck  # noqa: E402
GradientChecker, make_layer = gradcheck.GradientChecker, gradcheck.make_layer


def gaussian(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def exhaustive(proto, bottoms, stepsize, threshold, check_bottom=-1, **kw):
    layer, bottom, top = make_layer(proto, bottoms, phase='TRAIN')
    GradientChecker(stepsize=stepsize, threshold=threshold, **kw)\
        .check_gradient_exhaustive(layer, bottom, top, check_bottom=check_bottom)


@pytest.mark.parametrize('param', ['', 'flatten_param { axis: 2 end_axis: -2 }'])
def test_flatten(param):
    exhaustive('type: "Flatten" ' + param, [(2, 3, 2, 2)], 1e-2, 1e-2)


@pytest.mark.parametrize('param', ['shape { dim: 0 dim: -1 }', 'shape { dim: 2 dim: 2 } axis: 2 num_axes: 1'])
def test_reshape(param):
    exhaustive('type: "Reshape" reshape_param { %s }' % param, [(2, 3, 4)], 1e-2, 1e-2)


@pytest.mark.parametrize('param,shapes', [
    ('concat_param { axis: 0 }', [(2, 3, 2), (1, 3, 2)]),
    ('', [(2, 3, 2), (2, 1, 2), (2, 2, 2)]),
    ('concat_param { axis: -1 }', [(2, 3, 1), (2, 3, 2)]),
])
def test_concat(param, shapes):
    exhaustive('type: "Concat" ' + param, shapes, 1e-2, 1e-2)


def test_concat_one_bottom_only():
    # Caffe's TestGradientChannelsBottomOneOnly
    exhaustive('type: "Concat"', [(2, 3, 2), (2, 1, 2)], 1e-2, 1e-2, check_bottom=1)


@pytest.mark.parametrize('param,ntop', [
    ('slice_param { axis: 0 }', 2),
    ('slice_param { axis: 1 slice_point: 1 slice_point: 4 }', 3),
    ('slice_param { axis: -1 }', 2),
])
def test_slice(param, ntop):
    proto = 'type: "Slice" %s %s' % (param, ' '.join('top: "t%d"' % i for i in range(ntop)))
    exhaustive(proto, [(2, 6, 2)], 1e-2, 1e-3)


@pytest.mark.parametrize('param', [
    'operation: SUM',
    'operation: SUM coeff: 1 coeff: -0.5 coeff: 2',
    'operation: PROD stable_prod_grad: true',
    'operation: PROD stable_prod_grad: false',
])
def test_eltwise(param):
    layer, bottom, top = make_layer('type: "Eltwise" eltwise_param { %s }' % param,
                                    [(2, 3, 2, 2)] * 3, phase='TRAIN')
    GradientChecker(stepsize=1e-2, threshold=1e-3).check_gradient_eltwise(layer, bottom, top)


def test_eltwise_max():
    exhaustive('type: "Eltwise" eltwise_param { operation: MAX }', [(2, 3, 2)] * 3, 1e-4, 1e-2)


@pytest.mark.parametrize('param', ['tile_param { axis: 1 tiles: 3 }', 'tile_param { axis: 0 tiles: 2 }',
                                   'tile_param { axis: -1 tiles: 2 }'])
def test_tile(param):
    exhaustive('type: "Tile" ' + param, [(2, 3, 2)], 1e-2, 1e-2)


@pytest.mark.parametrize('op', ['SUM', 'MEAN', 'ASUM', 'SUMSQ'])
@pytest.mark.parametrize('axis,coeff', [(0, 1.0), (1, 2.3), (2, -0.5)])
def test_reduction(op, axis, coeff):
    data = gaussian((2, 3, 4))
    if op == 'ASUM':        # keep away from the kink of |x|
        data = np.where(np.abs(data) < 0.05, np.sign(data + 1e-9) * 0.05, data).astype(np.float32)
    exhaustive('type: "Reduction" reduction_param { operation: %s axis: %d coeff: %g }' % (op, axis, coeff),
               [data], 1e-3, 1e-2)


def test_filter():
    selector = np.array([0, 1, 1, 0, 1], np.float32).reshape(5, 1)
    proto = 'type: "Filter" top: "a" top: "b"'
    bottoms = [gaussian((5, 3, 2)), gaussian((5, 2), seed=1), selector]
    for i in (0, 1):
        exhaustive(proto, bottoms, 1e-2, 1e-3, check_bottom=i)


def test_batch_reindex():
    index = np.array([2, 0, 1, 2, 2, 3], np.float32)
    exhaustive('type: "BatchReindex"', [gaussian((4, 3, 2)), index], 1e-4, 1e-2, check_bottom=0)


def test_parameter():
    # the only gradient is that of the parameter blob, which the top aliases
    layer, bottom, top = make_layer('type: "Parameter" parameter_param { shape { dim: 2 dim: 3 } }',
                                    [], phase='TRAIN')
    layer.blobs[0].data[...] = gaussian((2, 3))
    GradientChecker(stepsize=1e-2, threshold=1e-3).check_gradient_exhaustive(layer, bottom, top)
