"""minicaffe.coord_map (pycaffe's caffe.coord_map): coordinate maps over NetSpec
graphs and the FCN crop.  The maps are checked against what the built nets
compute: delta kernels shift images, so a crop() must give back the input."""
import numpy as np
import pytest

import minicaffe as caffe
from minicaffe import layers as L, params as P
from minicaffe.coord_map import (AxisMismatchException, CropError, UndefinedMapException,
                                 UnconnectedTopsError, compose, coord_map, coord_map_from_to,
                                 conv_params, crop, inverse)
from minicaffe.errors import MinicaffeError


def build(n):
    return caffe.Net(net_param=n.to_proto(), phase=caffe.TEST)


def delta(shape, at):
    """A kernel (num_output, channels, kh, kw) that copies channel c to output c
    from offset ``at`` of the window."""
    w = np.zeros(shape, np.float32)
    for c in range(shape[0]):
        w[(c, c) + tuple(at)] = 1
    return w


def test_conv_pool_deconv_maps():
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 40, 40]))
    n.conv = L.Convolution(n.data, num_output=2, kernel_size=3, pad=1)
    n.pool = L.Pooling(n.conv, pool=P.Pooling.MAX, kernel_size=2, stride=2)
    n.deconv = L.Deconvolution(n.pool, convolution_param=dict(num_output=2, kernel_size=4, stride=2))
    # conv b = 0 (pad 1 = half its kernel), pool a = 1/2, b = -1/4 (window centres),
    # deconv a = 2, b = 3/2: data -> deconv is x + 1, so deconv -> data is x - 1
    ax, a, b = coord_map_from_to(n.deconv, n.data)
    assert ax == 1 and a == 1 and b == -1
    ax, a, b = coord_map_from_to(n.pool, n.data)
    assert ax == 1 and a == 2 and b == 0.5
    build(n)


def test_map_formulas_per_layer():
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 8, 8]))
    conv = L.Convolution(n.data, num_output=1, kernel_size=5, stride=2, pad=1, dilation=2).fn
    ax, a, b = coord_map(conv)
    # extent (5 - 1) 2 + 1 = 9: a = 1/2, b = (1 - 4) / 2
    assert ax == 1 and a == 0.5 and b == -1.5
    assert [list(v) for v in conv_params(conv)[1:]] == [[2], [9], [1]]
    deconv = L.Deconvolution(n.data, convolution_param=dict(num_output=1, kernel_size=4,
                                                            stride=2, pad=1)).fn
    assert coord_map(deconv) == (1, 2, 0.5)
    assert coord_map(L.ReLU(n.data).fn) == (None, 1, 0)
    c = coord_map(L.Crop(n.data, n.data, axis=2, offset=[3, 4]).fn)
    assert c[0] == 1 and c[1] == 1 and list(c[2]) == [-3, -4]
    # legacy _h/_w fields give one value per axis
    rect = L.Pooling(n.data, kernel_h=3, kernel_w=1, stride_h=1, stride_w=2, pad_h=1, pad_w=0).fn
    ax, a, b = coord_map(rect)
    assert list(a) == [1, 0.5] and list(b) == [0, 0]


@pytest.mark.parametrize('type_,kwargs', [
    ('InnerProduct', dict(num_output=3)),
    ('Reshape', dict(reshape_param=dict(shape=dict(dim=[0, -1])))),
    ('Pooling', dict(pool=P.Pooling.AVE, global_pooling=True)),
])
def test_layers_without_a_map(type_, kwargs):
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 8, 8]))
    top = getattr(L, type_)(n.data, **kwargs)
    with pytest.raises(UndefinedMapException):
        coord_map(top.fn)
    with pytest.raises(UnconnectedTopsError, match='no common ancestor') as e:
        coord_map_from_to(top, n.data)
    assert isinstance(e.value, RuntimeError) and isinstance(e.value, MinicaffeError)


def test_compose_and_inverse():
    m = (1, np.array([0.5]), np.array([-1.5]))
    ax, a, b = compose(m, inverse(m))
    assert ax == 1 and a == 1 and b == 0
    assert compose((None, 1, 0), (2, 3, 1)) == (2, 3, 1)
    assert compose((2, 2, 1), (None, 1, 0)) == (2, 2, 1)
    assert compose((2, 2, 1), (2, 3, 1)) == (2, 6, 3)     # 2 (3x + 1) + 1
    with pytest.raises(AxisMismatchException):
        compose((1, 1, 0), (2, 1, 0))


def shift_net(conv_k, conv_pad, deconv_k, deconv_pad, size=16):
    """data -> conv (delta at the kernel centre) -> deconv (delta at its centre):
    every layer copies its input shifted, so the cropped output equals the input."""
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 2, size, size + 3]))
    n.conv = L.Convolution(n.data, num_output=2, kernel_size=conv_k, pad=conv_pad, bias_term=False)
    n.relu = L.ReLU(n.conv, in_place=True)
    n.up = L.Deconvolution(n.relu, convolution_param=dict(num_output=2, kernel_size=deconv_k,
                                                          pad=deconv_pad, bias_term=False))
    n.score = crop(n.up, n.data)
    return n


@pytest.mark.parametrize('conv_k,conv_pad,deconv_k,deconv_pad', [
    (3, 0, 7, 0), (5, 0, 5, 0), (3, 1, 5, 1), (1, 0, 9, 2), (5, 2, 3, 0)])
def test_crop_aligns_the_fcn_output_with_the_input(conv_k, conv_pad, deconv_k, deconv_pad):
    n = shift_net(conv_k, conv_pad, deconv_k, deconv_pad)
    net = build(n)
    net.params['conv'][0].data[...] = delta((2, 2, conv_k, conv_k), (conv_k // 2,) * 2)
    net.params['up'][0].data[...] = delta((2, 2, deconv_k, deconv_k), (deconv_k // 2,) * 2)
    # The cropped output is the input wherever the convolution saw the pixel (a
    # convolution without padding loses the border): score = x * seen, seen from ones.
    net.blobs['data'].data[...] = 1
    net.forward()
    seen = net.blobs['score'].data.copy()
    assert set(np.unique(seen)) <= {0, 1} and seen[..., 3:-3, 3:-3].all()
    x = np.random.default_rng(0).uniform(0.5, 1.5, size=net.blobs['data'].data.shape)
    net.blobs['data'].data[...] = x
    net.forward()
    np.testing.assert_array_equal(net.blobs['score'].data, x.astype(np.float32) * seen)
    layer = n.to_proto().layer[-1]
    want = (deconv_k // 2 - deconv_pad) - (conv_k // 2 - conv_pad)
    assert layer.type == 'Crop' and layer.crop_param.axis == 2
    assert list(layer.crop_param.offset) == [want]


def test_crop_of_point_wise_layers_only():
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 4, 4]))
    n.relu = L.ReLU(n.data)
    n.c = crop(n.relu, n.data)
    cp = n.to_proto().layer[-1].crop_param
    assert cp.axis == 2 and list(cp.offset) == [0]
    build(n)


def test_crop_refuses_what_it_cannot_align():
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 20, 20]))
    n.conv = L.Convolution(n.data, num_output=1, kernel_size=3)
    n.pool = L.Pooling(n.conv, pool=P.Pooling.MAX, kernel_size=3, stride=3)
    n.up = L.Deconvolution(n.pool, convolution_param=dict(num_output=1, kernel_size=4, stride=2))
    with pytest.raises(CropError, match='scale mismatch') as e:
        crop(n.up, n.data)
    assert isinstance(e.value, AssertionError)
    with pytest.raises(CropError, match='negative offset'):
        crop(n.conv, n.data)                     # the conv output is smaller than the data
    n.half_up = L.Deconvolution(n.data, convolution_param=dict(num_output=1, kernel_size=2))
    with pytest.raises(CropError, match='non-integer'):
        crop(n.half_up, n.data)                  # the 2-wide kernel's centre is a half pixel


def test_multi_bottom_layers_map_each_bottom_alike():
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 20, 20]))
    n.aux = L.Input(shape=dict(dim=[1, 1, 12, 12]))
    n.c1, n.c2 = L.Convolution(n.data, n.aux, ntop=2, num_output=1, kernel_size=5, stride=2)
    assert coord_map_from_to(n.c1, n.data) == coord_map_from_to(n.c2, n.aux)
    # Crop's second bottom gives only the shape: no map through it
    n.cropped = L.Crop(n.data, n.aux, axis=2, offset=1)
    with pytest.raises(UnconnectedTopsError):
        coord_map_from_to(n.cropped, n.aux)


def test_module_is_pycaffes_name():
    import importlib
    assert importlib.import_module('minicaffe.coord_map').crop is crop


def fcn_vgg16(upsampling):
    """The FCN nets' topology (fcn.berkeleyvision.org's net.py, VGG-16 with conv1_1's
    pad 100) at width 2; ``upsampling`` 32 (FCN-32s) or 8 (FCN-8s).  Returns the
    NetSpec and the offsets of the crops, in net order."""
    def conv_relu(bottom, ks=3, pad=1):
        conv = L.Convolution(bottom, kernel_size=ks, num_output=2, pad=pad)
        return L.ReLU(conv, in_place=True)

    def pool(bottom):
        return L.Pooling(bottom, pool=P.Pooling.MAX, kernel_size=2, stride=2)

    def up(bottom, factor):
        return L.Deconvolution(bottom, convolution_param=dict(
            num_output=2, kernel_size=2 * factor, stride=factor, bias_term=False))

    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 3, 40, 50]))
    x = conv_relu(n.data, pad=100)
    stages = []
    for convs in (1, 2, 3, 3, 3):          # the remaining convs of each VGG block
        for _ in range(convs):
            x = conv_relu(x)
        x = pool(x)
        stages.append(x)
    n.pool3, n.pool4 = stages[2], stages[3]
    n.fc6 = conv_relu(stages[4], ks=7, pad=0)
    n.fc7 = conv_relu(n.fc6, ks=1, pad=0)
    n.score_fr = L.Convolution(n.fc7, num_output=2, kernel_size=1)
    if upsampling == 32:
        n.upscore = up(n.score_fr, 32)
        n.score = crop(n.upscore, n.data)
    else:
        n.upscore2 = up(n.score_fr, 2)
        n.score_pool4 = L.Convolution(n.pool4, num_output=2, kernel_size=1)
        n.score_pool4c = crop(n.score_pool4, n.upscore2)
        n.fuse_pool4 = L.Eltwise(n.upscore2, n.score_pool4c, operation=P.Eltwise.SUM)
        n.upscore_pool4 = up(n.fuse_pool4, 2)
        n.score_pool3 = L.Convolution(n.pool3, num_output=2, kernel_size=1)
        n.score_pool3c = crop(n.score_pool3, n.upscore_pool4)
        n.fuse_pool3 = L.Eltwise(n.upscore_pool4, n.score_pool3c, operation=P.Eltwise.SUM)
        n.upscore8 = up(n.fuse_pool3, 8)
        n.score = crop(n.upscore8, n.data)
    offsets = [list(l.crop_param.offset) for l in n.to_proto().layer if l.type == 'Crop']
    return n, offsets


@pytest.mark.parametrize('upsampling,offsets', [(32, [[19]]), (8, [[5], [9], [31]])])
def test_fcn_crops_are_the_published_ones(upsampling, offsets):
    # FCN-32s crops its upscore by 19, FCN-8s score_pool4 by 5, score_pool3 by 9 and
    # upscore8 by 31, as in the published voc-fcn*s prototxts
    n, got = fcn_vgg16(upsampling)
    assert got == offsets
    net = build(n)
    assert net.blobs['score'].data.shape == (1, 2, 40, 50)
