"""Numerical gradient checks of the vision layers (Convolution, Deconvolution,
Im2col, Crop, Pooling, SPP, LRN) with the checker settings and configurations
of Caffe's src/caffe/test/test_{convolution,deconvolution,im2col,crop,pooling,
spp,lrn}_layer.cpp (blobs kept small so the exhaustive checks stay fast)."""
import numpy as np
import pytest

from minicaffe import gradcheck  # noqa: E402
GradientChecker, make_layer = gradcheck.GradientChecker, gradcheck.make_layer


def gaussian(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def distinct(shape, seed=0):
    """Gaussian values pushed apart so no two in a pooling window are within the
    finite-difference step of each other (MAX pooling has kinks at ties)."""
    n = int(np.prod(shape))
    perm = np.random.default_rng(seed).permutation(n).astype(np.float32)
    return (perm / n * 4 - 2).reshape(shape).astype(np.float32)


def exhaustive(proto, bottoms, stepsize, threshold, check_bottom=-1, **kw):
    layer, bottom, top = make_layer(proto, bottoms, phase='TRAIN')
    GradientChecker(stepsize=stepsize, threshold=threshold, **kw)\
        .check_gradient_exhaustive(layer, bottom, top, check_bottom=check_bottom)


def tops(n):
    return ' '.join('top: "t%d"' % i for i in range(n))


GAUSS = 'weight_filler { type: "gaussian" } bias_filler { type: "gaussian" }'


# ------------------------------------------------------------------ Convolution
@pytest.mark.parametrize('param,shape', [
    # TestGradient: two bottoms sharing the weights
    ('kernel_size: 3 stride: 2 num_output: 2', (2, 3, 6, 4)),
    # TestDilatedGradient
    ('kernel_size: 3 dilation: 2 num_output: 2', (2, 3, 5, 6)),
    # Test1x1Gradient (the im2col-free path)
    ('kernel_size: 1 stride: 1 num_output: 2', (2, 3, 3, 2)),
    # TestGradientGroup
    ('kernel_size: 3 stride: 2 group: 3 num_output: 3', (2, 3, 6, 4)),
    # padding, rectangular kernel and per-axis values
    ('kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 0 num_output: 2',
     (2, 2, 5, 4)),
    ('kernel_size: 3 kernel_size: 2 pad: 1 pad: 0 stride: 1 stride: 2 dilation: 1 dilation: 2'
     ' group: 2 num_output: 4', (1, 4, 5, 6)),
])
def test_convolution(param, shape):
    exhaustive('type: "Convolution" %s convolution_param { %s %s }' % (tops(2), param, GAUSS),
               [gaussian(shape, 1), gaussian(shape, 2)], 1e-2, 1e-3)


def test_convolution_3d():
    # TestGradient3D: 3 spatial axes, kernel 3, stride 2 (one bottom to keep it fast)
    exhaustive('type: "Convolution" convolution_param { kernel_size: 3 stride: 2 num_output: 2'
               ' %s }' % GAUSS, [gaussian((2, 2, 5, 4, 3))], 1e-2, 1e-3)


def test_convolution_axis2_no_bias():
    # axis: 2 -- the first two axes are both batch axes
    exhaustive('type: "Convolution" convolution_param { axis: 2 kernel_size: 2 num_output: 2'
               ' bias_term: false weight_filler { type: "gaussian" } }',
               [gaussian((2, 2, 3, 4, 3))], 1e-2, 1e-3)


# ---------------------------------------------------------------- Deconvolution
@pytest.mark.parametrize('param,shape', [
    # TestGradient: kernel 2, stride 1, one output channel, two bottoms
    ('kernel_size: 2 stride: 1 num_output: 1', (2, 3, 3, 2)),
    ('kernel_size: 3 stride: 2 pad: 1 group: 2 num_output: 4', (1, 4, 2, 2)),
    ('kernel_size: 2 dilation: 2 num_output: 2', (1, 2, 3, 3)),
    ('kernel_size: 1 num_output: 3', (2, 2, 3, 2)),
])
def test_deconvolution(param, shape):
    exhaustive('type: "Deconvolution" %s convolution_param { %s %s }' % (tops(2), param, GAUSS),
               [gaussian(shape, 1), gaussian(shape, 2)], 1e-2, 1e-3)


def test_deconvolution_3d():
    # TestGradient3D: kernel 2, stride 2, pad 1, two outputs
    exhaustive('type: "Deconvolution" convolution_param { kernel_size: 2 stride: 2 pad: 1'
               ' num_output: 2 %s }' % GAUSS, [gaussian((1, 2, 2, 3, 2))], 1e-2, 1e-3)


# ------------------------------------------------------------------------ Im2col
@pytest.mark.parametrize('param,shape', [
    ('kernel_size: 3 stride: 2', (2, 3, 6, 5)),                    # TestGradient
    ('kernel_size: 3 stride: 2 dilation: 2', (1, 2, 7, 6)),        # TestDilatedGradient
    ('kernel_h: 5 kernel_w: 3 stride: 2', (2, 2, 6, 5)),           # TestRectGradient
    ('kernel_size: 3 stride: 1 pad: 1', (1, 2, 4, 4)),
    ('kernel_size: 2 stride: 2', (1, 2, 3, 4, 4)),                 # N-D
])
def test_im2col(param, shape):
    exhaustive('type: "Im2col" convolution_param { %s }' % param, [gaussian(shape)], 1e-2, 1e-2)


# -------------------------------------------------------------------------- Crop
@pytest.mark.parametrize('param,shapes', [
    ('crop_param { axis: 0 offset: 0 offset: 1 offset: 1 offset: 2 }', [(2, 4, 5, 4), (2, 3, 3, 2)]),
    ('crop_param { axis: 1 offset: 1 }', [(2, 4, 5, 4), (2, 3, 3, 3)]),
    ('', [(2, 3, 5, 4), (1, 1, 2, 3)]),
])
def test_crop(param, shapes):
    # TestCropAllGradient / TestCrop5DGradient: (1e-2, 1e-3), bottom 0 only
    exhaustive('type: "Crop" ' + param, [gaussian(shapes[0]), gaussian(shapes[1], 1)],
               1e-2, 1e-3, check_bottom=0)


# ----------------------------------------------------------------------- Pooling
@pytest.mark.parametrize('kh', [3, 4])
@pytest.mark.parametrize('kw', [3, 4])
def test_pooling_max_padded(kh, kw):
    # TestGradientMax: kernel 3..4 x 3..4, stride 2, pad 1; checker (1e-4, 1e-2)
    exhaustive('type: "Pooling" pooling_param { pool: MAX kernel_h: %d kernel_w: %d stride: 2'
               ' pad: 1 }' % (kh, kw), [distinct((2, 2, 6, 5))], 1e-4, 1e-2)


@pytest.mark.parametrize('kh,kw', [(3, 3), (4, 3)])
def test_pooling_max_top_mask(kh, kw):
    # TestGradientMaxTopMask: the mask is a second top
    layer, bottom, top = make_layer(
        'type: "Pooling" top: "y" top: "mask" pooling_param { pool: MAX kernel_h: %d kernel_w: %d'
        ' stride: 2 }' % (kh, kw), [distinct((2, 2, 6, 5))], phase='TRAIN')
    # the mask top is piecewise constant: its part of the objective has zero gradient
    GradientChecker(stepsize=1e-4, threshold=1e-2).check_gradient_exhaustive(layer, bottom, top)


@pytest.mark.parametrize('kh', [3, 4])
@pytest.mark.parametrize('kw', [3, 4])
@pytest.mark.parametrize('pad', [0, 2])
def test_pooling_ave(kh, kw, pad):
    # TestGradientAve (pad 0) and TestGradientAvePadded (pad 2): checker (1e-2, 1e-2)
    exhaustive('type: "Pooling" pooling_param { pool: AVE kernel_h: %d kernel_w: %d stride: 2'
               ' pad: %d }' % (kh, kw, pad), [gaussian((2, 2, 6, 5))], 1e-2, 1e-2)


@pytest.mark.parametrize('pool', ['MAX', 'AVE'])
def test_pooling_global(pool):
    exhaustive('type: "Pooling" pooling_param { pool: %s global_pooling: true }' % pool,
               [distinct((2, 3, 3, 4))], 1e-4 if pool == 'MAX' else 1e-2, 1e-2)


def test_pooling_floor_rect_stride():
    exhaustive('type: "Pooling" pooling_param { pool: AVE kernel_h: 2 kernel_w: 3 stride_h: 1'
               ' stride_w: 2 round_mode: FLOOR }', [gaussian((1, 2, 4, 6))], 1e-2, 1e-2)


# --------------------------------------------------------------------------- SPP
@pytest.mark.parametrize('pool,shape', [('MAX', (1, 1, 9, 8)), ('AVE', (2, 1, 7, 6)),
                                        ('MAX', (1, 2, 6, 7))])
def test_spp(pool, shape):
    # TestGradient: pyramid_height 3, checker (1e-4, 1e-2)
    exhaustive('type: "SPP" spp_param { pyramid_height: 3 pool: %s }' % pool,
               [distinct(shape)], 1e-4 if pool == 'MAX' else 1e-2, 1e-2)


def test_spp_single_level():
    exhaustive('type: "SPP" spp_param { pyramid_height: 1 pool: AVE }',
               [gaussian((2, 2, 4, 5))], 1e-2, 1e-2)


# --------------------------------------------------------------------------- LRN
@pytest.mark.parametrize('param,shape', [
    ('', (2, 7, 3, 3)),                                   # TestGradientAcrossChannels
    ('local_size: 15', (1, 7, 3, 3)),                     # ...LargeRegion
    ('local_size: 3 alpha: 0.5 beta: 0.6 k: 2', (2, 4, 2, 3)),
    ('norm_region: WITHIN_CHANNEL', (2, 3, 3, 3)),        # TestGradientWithinChannel
    ('norm_region: WITHIN_CHANNEL local_size: 3 alpha: 0.5 beta: 0.6', (2, 2, 4, 3)),
])
def test_lrn(param, shape):
    # checker (1e-2, 1e-2)
    exhaustive('type: "LRN" lrn_param { %s }' % param, [gaussian(shape)], 1e-2, 1e-2)
