"""ONNX forms of Caffe's element-wise and normalization layers: the neurons
(ReLU ... Swish), PReLU, Dropout, BatchNorm, Scale, Bias and MVN."""
import numpy as np

from minicaffe.onnx.registry import Unsupported, converter
from minicaffe.protoio import pb


def _unary(op, **attrs):
    def convert(ctx):
        return [ctx.g.node(op, [ctx.bottoms[0]], ctx.hint(), **attrs)]
    return convert


converter('Sigmoid')(_unary('Sigmoid'))
converter('TanH')(_unary('Tanh'))
converter('AbsVal')(_unary('Abs'))
# BNLL: y = log(1 + exp(x)), which ONNX's Softplus is.
converter('BNLL')(_unary('Softplus'))


@converter('ReLU')
def relu(ctx):
    slope = float(ctx.lp.relu_param.negative_slope)
    if slope == 0:
        return [ctx.g.node('Relu', [ctx.bottoms[0]], ctx.hint())]
    return [ctx.g.node('LeakyRelu', [ctx.bottoms[0]], ctx.hint(), alpha=slope)]


@converter('ELU')
def elu(ctx):
    return [ctx.g.node('Elu', [ctx.bottoms[0]], ctx.hint(), alpha=float(ctx.lp.elu_param.alpha))]


@converter('PReLU')
def prelu(ctx):
    """y = max(x, 0) + a_c min(x, 0); a (C) or shared (1), channels on axis 1."""
    shape = ctx.bottom_shapes[0]
    a = ctx.params[0]
    if a.size > 1:
        a = a.reshape((a.size,) + (1,) * (len(shape) - 2))
    return [ctx.g.node('PRelu', [ctx.bottoms[0], ctx.g.const(a, ctx.hint('slope'))], ctx.hint())]


@converter('Power')
def power(ctx):
    """y = (shift + scale x)^power."""
    g = ctx.g
    p = ctx.lp.power_param
    if p.power == 0:
        return [g.node('Add', [g.mul_const(ctx.bottoms[0], 0.0, ctx.hint('zero')), g.const(1.0)],
                       ctx.hint())]
    y = ctx.bottoms[0]
    if p.scale != 1:
        y = g.mul_const(y, float(p.scale), ctx.hint('scaled'))
    if p.shift != 0:
        y = g.add_const(y, float(p.shift), ctx.hint('shifted'))
    if p.power != 1:
        y = g.node('Pow', [y, g.const(float(p.power))], ctx.hint())
    elif y == ctx.bottoms[0]:
        y = g.node('Identity', [y], ctx.hint())
    return [y]


def _scaled_unary(ctx, op, scale, shift, out_scale, op_hint):
    """y = out_scale * op(shift + scale x), with nodes only for factors other than 1 and 0."""
    g = ctx.g
    y = ctx.bottoms[0]
    if scale != 1:
        y = g.mul_const(y, float(scale), ctx.hint('scaled'))
    if shift != 0:
        y = g.add_const(y, float(shift), ctx.hint('shifted'))
    y = g.node(op, [y], ctx.hint(op_hint) if out_scale != 1 else ctx.hint())
    if out_scale != 1:
        y = g.mul_const(y, float(out_scale), ctx.hint())
    return [y]


@converter('Exp')
def exp(ctx):
    """y = base^(shift + scale x) = outer exp(inner x)."""
    layer = ctx.layer
    return _scaled_unary(ctx, 'Exp', layer.inner_scale, 0, layer.outer_scale, 'exp')


@converter('Log')
def log(ctx):
    """y = log_base(shift + scale x) = ln(shift + scale x) / ln(base)."""
    layer = ctx.layer
    return _scaled_unary(ctx, 'Log', layer.scale, layer.shift, layer.base_scale, 'ln')


@converter('Threshold')
def threshold(ctx):
    """y = 1 if x > threshold else 0."""
    g = ctx.g
    t = float(ctx.lp.threshold_param.threshold)
    return [g.cast_float(g.node('Greater', [ctx.bottoms[0], g.const(t)], ctx.hint('above')),
                         ctx.hint())]


@converter('Clip')
def clip(ctx):
    p = ctx.lp.clip_param
    return [ctx.g.node('Clip', [ctx.bottoms[0], ctx.g.const(float(p.min)), ctx.g.const(float(p.max))],
                       ctx.hint())]


@converter('Swish')
def swish(ctx):
    """y = x sigmoid(beta x)."""
    g = ctx.g
    x = ctx.bottoms[0]
    beta = float(ctx.layer.beta)
    z = x if beta == 1 else g.mul_const(x, beta, ctx.hint('scaled'))
    return [g.node('Mul', [x, g.node('Sigmoid', [z], ctx.hint('gate'))], ctx.hint())]


@converter('Dropout')
def dropout(ctx):
    """TEST phase: the identity (Caffe scales at train time)."""
    if ctx.phase == pb.TRAIN:
        raise Unsupported('TRAIN-phase dropout is random (export the TEST phase)')
    return [ctx.g.node('Identity', [ctx.bottoms[0]], ctx.hint())]


def _channel_shape(ndim, c):
    """(C, 1, ..., 1): broadcasts over axis 1 of an ndim-D tensor."""
    return (c,) + (1,) * max(ndim - 2, 0)


@converter('BatchNorm')
def batch_norm(ctx):
    """y = (x - mean) / sqrt(var + eps) per channel (axis 1).  Global stats:
    mean = blob0 / s, var = blob1 / s (s = blob2, Caffe's scale factor; 1/0 = 0);
    otherwise the batch's own: mean and E[(x - mean)^2] over every axis but 1."""
    g, layer = ctx.g, ctx.layer
    x = ctx.bottoms[0]
    shape = ctx.bottom_shapes[0]
    nd = len(shape)
    if nd < 2:
        raise Unsupported('a 1-axis bottom (ONNX needs a channel axis)')
    cs = _channel_shape(nd, layer.channels)
    eps = np.float32(layer.eps)
    if layer.use_global_stats:
        s = ctx.params[2].reshape(-1)[0]
        factor = np.float32(0 if s == 0 else 1 / s)
        mean = factor * ctx.params[0]
        var = factor * ctx.params[1]
        std = np.sqrt(var + eps).astype(np.float32)
        centered = g.node('Sub', [x, g.const(mean.reshape(cs), ctx.hint('mean'))], ctx.hint('centered'))
        return [g.node('Div', [centered, g.const(std.reshape(cs), ctx.hint('std'))], ctx.hint())]
    axes = [0] + list(range(2, nd))
    mean = g.reduce('ReduceMean', x, axes, keepdims=True, hint=ctx.hint('batch_mean'))
    centered = g.node('Sub', [x, mean], ctx.hint('centered'))
    var = g.reduce('ReduceMean', g.node('Mul', [centered, centered], ctx.hint('sq')), axes,
                   keepdims=True, hint=ctx.hint('batch_var'))
    std = g.node('Sqrt', [g.add_const(var, float(eps), ctx.hint('var_eps'))], ctx.hint('std'))
    return [g.node('Div', [centered, std], ctx.hint())]


def _operand(ctx, value, shape, axis_param, hint):
    """A scale/bias operand (bottom or learned blob) of `shape` placed at the
    canonical axis of bottom[0], trailing ones appended."""
    nd = len(ctx.bottom_shapes[0])
    shape = tuple(shape)
    axis = 0 if len(shape) == 0 else ctx.canonical_axis(axis_param, nd)
    trailing = list(range(axis + len(shape), nd))
    if axis == 0 and len(shape) > 0:
        ctx.fixed_batch('its operand spans axis 0')
    if isinstance(value, np.ndarray):
        return ctx.g.const(value.reshape(shape + (1,) * len(trailing)), ctx.hint(hint))
    if not trailing:
        return value
    # A bottom operand: unsqueeze the trailing axes (its own axes keep their sizes).
    return ctx.g.unsqueeze(value, list(range(len(shape), len(shape) + len(trailing))),
                           ctx.hint(hint))


@converter('Scale')
def scale(ctx):
    """y = x s [+ b], s (and b) spanning axes [axis, axis + num_axes) of x."""
    g, layer = ctx.g, ctx.layer
    p = ctx.lp.scale_param
    if len(ctx.bottoms) > 1:
        s = _operand(ctx, ctx.bottoms[1], ctx.bottom_shapes[1], p.axis, 'scale')
        sshape = ctx.bottom_shapes[1]
    else:
        s = _operand(ctx, ctx.params[0], ctx.params[0].shape, p.axis, 'scale')
        sshape = ctx.params[0].shape
    has_bias = layer.bias_index is not None
    y = g.node('Mul', [ctx.bottoms[0], s], ctx.hint('scaled') if has_bias else ctx.hint())
    if has_bias:
        b = ctx.params[layer.bias_index]
        bias = _operand(ctx, b, b.shape if b.ndim else sshape, p.axis, 'bias')
        y = g.node('Add', [y, bias], ctx.hint())
    return [y]


@converter('Bias')
def bias(ctx):
    """y = x + b, b spanning axes [axis, axis + num_axes) of x."""
    p = ctx.lp.bias_param
    if len(ctx.bottoms) > 1:
        b = _operand(ctx, ctx.bottoms[1], ctx.bottom_shapes[1], p.axis, 'bias')
    else:
        b = _operand(ctx, ctx.params[0], ctx.params[0].shape, p.axis, 'bias')
    return [ctx.g.node('Add', [ctx.bottoms[0], b], ctx.hint())]


@converter('MVN')
def mvn(ctx):
    """y = x - mean, or (x - mean) / (sqrt(E[(x - mean)^2]) + eps), statistics per
    (n, c) over the spatial axes, or per n with across_channels."""
    g = ctx.g
    p = ctx.lp.mvn_param
    nd = len(ctx.bottom_shapes[0])
    first = 1 if p.across_channels else 2
    axes = list(range(first, nd))
    if not axes:
        raise Unsupported('a bottom without axes to normalize over (shape %s)'
                          % (ctx.bottom_shapes[0],))
    x = ctx.bottoms[0]
    mean = g.reduce('ReduceMean', x, axes, keepdims=True, hint=ctx.hint('mean'))
    centered = g.node('Sub', [x, mean], ctx.hint('centered') if p.normalize_variance else ctx.hint())
    if not p.normalize_variance:
        return [centered]
    var = g.reduce('ReduceMean', g.node('Mul', [centered, centered], ctx.hint('sq')), axes,
                   keepdims=True, hint=ctx.hint('var'))
    sigma = g.add_const(g.node('Sqrt', [var], ctx.hint('std')), float(np.float32(p.eps)),
                        ctx.hint('sigma'))
    return [g.node('Div', [centered, sigma], ctx.hint())]


