"""ONNX forms of Caffe's spatial layers: Convolution, Deconvolution, Pooling,
LRN and Crop."""
import numpy as np

from minicaffe.layers.pooling import AVE, MAX
from minicaffe.onnx.graph import FLT_MAX
from minicaffe.onnx.registry import Unsupported, converter
from minicaffe.protoio import pb


def _check_conv_geometry(layer):
    if layer.channel_axis != 1:
        raise Unsupported('channel axis %d: ONNX convolutions take the channels on axis 1'
                          % layer.channel_axis)
    if 0 in tuple(layer.dilation):
        raise Unsupported('dilation 0 (Caffe reads one input for every kernel tap; ONNX'
                          ' dilations must be >= 1)')


def _conv_attrs(layer):
    _check_conv_geometry(layer)
    return dict(kernel_shape=list(layer.kernel), strides=list(layer.stride),
                pads=list(layer.pad) * 2, dilations=list(layer.dilation), group=layer.group)


@converter('Convolution')
def convolution(ctx):
    """Conv: the weights (C_out, C_in/group, k...) are ONNX's layout already."""
    inputs = [ctx.bottoms[0], ctx.param(0, 'W')] + ([ctx.param(1, 'b')] if ctx.layer.bias_term else [])
    return [ctx.g.node('Conv', [b] + inputs[1:], ctx.hint(), **_conv_attrs(ctx.layer))
            for b in ctx.bottoms]


@converter('Deconvolution')
def deconvolution(ctx):
    """ConvTranspose: Caffe's weights (C_in, C_out/group, k...) and output size
    stride (in - 1) + dilation (k - 1) + 1 - 2 pad are ONNX's."""
    weights = [ctx.param(0, 'W')] + ([ctx.param(1, 'b')] if ctx.layer.bias_term else [])
    return [ctx.g.node('ConvTranspose', [b] + weights, ctx.hint(), **_conv_attrs(ctx.layer))
            for b in ctx.bottoms]


def _end_pads(geom):
    """Trailing pads that make ONNX's floor-rounded windows Caffe's windows:
    the last window ends at (out - 1) stride + kernel - pad (may be < 0)."""
    return [(o - 1) * s + k - p - n for n, k, s, p, o
            in zip((geom.H, geom.W), geom.kernel, geom.stride, geom.pad, geom.out)]


def _native_pads_ok(geom, ends):
    # ONNX Runtime wants every pad smaller than the kernel.
    return all(0 <= e < k for e, k in zip(ends, geom.kernel))


def _padded_pool(ctx, x, geom, ends, op, pad_value, hint):
    """Pad explicitly, pool without pads, cut off windows past Caffe's last."""
    g = ctx.g
    pt, pl = geom.pad
    pads = [0, 0, pt, pl, 0, 0, max(ends[0], 0), max(ends[1], 0)]
    if any(pads):
        x = g.node('Pad', [x, g.ints(pads, 'pads'), g.const(pad_value)], hint + '_pad',
                   mode='constant')
    extra = {'count_include_pad': 1} if op == 'AveragePool' else {}
    y = g.node(op, [x], hint, kernel_shape=list(geom.kernel), strides=list(geom.stride), **extra)
    full = [(n + p + max(e, 0) - k) // s + 1 for n, p, e, k, s
            in zip((geom.H, geom.W), geom.pad, ends, geom.kernel, geom.stride)]
    if full != list(geom.out):
        y = g.slice(y, [0, 0], list(geom.out), [2, 3], hint + '_cut')
    return y


def ave_pool(ctx, x, geom, hint):
    """Caffe's AVE pooling: the sum over the window clipped to the image,
    divided by the window clipped to the PADDED image (geom.ave_divisor())."""
    ends = _end_pads(geom)
    kk = geom.kernel[0] * geom.kernel[1]
    divisor = geom.ave_divisor()
    if _native_pads_ok(geom, ends) and np.all(divisor == kk):
        # Every window lies inside the padded input: ONNX divides by the kernel
        # size as Caffe does.
        pads = list(geom.pad) + ends
        return ctx.g.node('AveragePool', [x], hint, kernel_shape=list(geom.kernel),
                          strides=list(geom.stride), pads=pads, count_include_pad=1)
    y = _padded_pool(ctx, x, geom, ends, 'AveragePool', 0.0, hint)
    if np.all(divisor == kk):
        return y
    # A window that starts at the padded edge has divisor 0: Caffe's 0 / 0 = NaN
    # there, and so is 0 * inf here.
    with np.errstate(divide='ignore'):
        rescale = kk / divisor.astype(np.float64)
    return ctx.g.node('Mul', [y, ctx.g.const(rescale, hint + '_rescale')], hint + '_caffe_divisor')


@converter('Pooling')
def pooling(ctx):
    layer, g = ctx.layer, ctx.g
    x = ctx.bottoms[0]
    geom = layer.geom
    masked = len(ctx.top_shapes) > 1
    if layer.method not in (MAX, AVE):
        raise Unsupported('STOCHASTIC pooling (random in TRAIN; Caffe has no CPU forward)')
    if geom.global_window and not masked:
        return [g.node('GlobalMaxPool' if layer.method == MAX else 'GlobalAveragePool', [x],
                       ctx.hint())]
    if layer.method == AVE:
        return [ave_pool(ctx, x, geom, ctx.hint())]
    ends = _end_pads(geom)
    if _native_pads_ok(geom, ends):
        pads = list(geom.pad) + ends
        if not masked:
            return [g.node('MaxPool', [x], ctx.hint(), kernel_shape=list(geom.kernel),
                           strides=list(geom.stride), pads=pads)]
        y, idx = g.node('MaxPool', [x], ctx.hint(), outputs=2, kernel_shape=list(geom.kernel),
                        strides=list(geom.stride), pads=pads)
        # ONNX indexes the whole (N, C, H, W) tensor; Caffe's mask is h * W + w.
        plane = g.node('Mod', [idx, g.ints([geom.H * geom.W], 'plane')], ctx.hint('plane'))
        return [y, g.cast_float(plane, ctx.hint('mask'))]
    if masked:
        raise Unsupported('the mask top of a MAX pooling whose last window ONNX cannot pad to')
    return [_padded_pool(ctx, x, geom, ends, 'MaxPool', -FLT_MAX, ctx.hint())]


@converter('LRN')
def lrn(ctx):
    layer, g = ctx.layer, ctx.g
    x = ctx.bottoms[0]
    if layer.region == pb.LRNParameter.ACROSS_CHANNELS:
        # ONNX's window (c - (n-1)/2 .. c + (n-1)/2 for odd n) and alpha / n are Caffe's.
        return [g.node('LRN', [x], ctx.hint(), size=layer.size, alpha=layer.alpha,
                       beta=layer.beta, bias=float(ctx.lp.lrn_param.k))]
    # WITHIN_CHANNEL: y = x (1 + alpha AVE-pool(x^2))^-beta, Caffe's AVE pooling.
    sq = g.node('Mul', [x, x], ctx.hint('sq'))
    a = ave_pool(ctx, sq, layer.geom, ctx.hint('pool'))
    base = g.add_const(g.mul_const(a, layer.alpha, ctx.hint('scaled')), 1.0, ctx.hint('base'))
    p = g.node('Pow', [base, g.const(-layer.beta)], ctx.hint('power'))
    return [g.node('Mul', [x, p], ctx.hint())]


@converter('Crop')
def crop(ctx):
    layer = ctx.layer
    if layer.start == 0:
        ctx.fixed_batch('crops axis 0')
    axes = list(range(layer.start, len(layer.window)))
    return [ctx.g.slice(ctx.bottoms[0], [layer.window[a].start for a in axes],
                        [layer.window[a].stop for a in axes], axes, ctx.hint())]


@converter('Im2col')
def im2col(ctx):
    """A grouped Conv with one-hot kernels: output channel c * prod(k) + i
    picks x[c] at kernel offset i, Caffe's column order (exact: one product by
    1, the rest by 0)."""
    layer = ctx.layer
    _check_conv_geometry(layer)
    kk = int(np.prod(layer.kernel))
    c = layer.channels
    w = np.zeros((c * kk, 1) + tuple(layer.kernel), np.float32)
    w.reshape(c, kk, kk)[:, np.arange(kk), np.arange(kk)] = 1.0
    return [ctx.g.node('Conv', [ctx.bottoms[0], ctx.g.const(w, ctx.hint('onehot'))], ctx.hint(),
                       kernel_shape=list(layer.kernel), strides=list(layer.stride),
                       pads=list(layer.pad) * 2, dilations=list(layer.dilation), group=c)]


@converter('SPP')
def spp(ctx):
    """Each pyramid level is a Caffe pooling (kernel ceil(H / 2^l), stride = kernel);
    the levels are flattened per item and concatenated (height 1: the pooling)."""
    layer, g = ctx.layer, ctx.g
    if layer.method not in (MAX, AVE):
        raise Unsupported('STOCHASTIC pooling (random in TRAIN; Caffe has no CPU forward)')
    x = ctx.bottoms[0]
    levels = []
    for i, geom in enumerate(layer.geoms):
        hint = ctx.hint('level%d' % i)
        if layer.method == AVE:
            y = ave_pool(ctx, x, geom, hint)
        else:
            ends = _end_pads(geom)
            if _native_pads_ok(geom, ends):
                y = g.node('MaxPool', [x], hint, kernel_shape=list(geom.kernel),
                           strides=list(geom.stride), pads=list(geom.pad) + ends)
            else:
                y = _padded_pool(ctx, x, geom, ends, 'MaxPool', -FLT_MAX, hint)
        levels.append(y)
    if len(levels) == 1:
        return [g.node('Identity', levels, ctx.hint())]
    flat = [g.node('Flatten', [y], ctx.hint('flat%d' % i), axis=1) for i, y in enumerate(levels)]
    return [g.node('Concat', flat, ctx.hint(), axis=1)]
