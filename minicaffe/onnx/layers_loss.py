"""ONNX forms of Caffe's loss layers and Accuracy: the value the layer computes
(its top), written with ONNX ops.

Normalisation as minicaffe.layers.loss (Caffe's LossLayer): the sum is divided
by max(1, n), n = FULL outer*inner, VALID the non-ignored count, BATCH_SIZE
outer, NONE 1.  Labels are truncated towards zero (Cast to int64), as Caffe's
static_cast<int>.
"""
import numpy as np

from minicaffe.onnx.registry import converter
from minicaffe.protoio import pb

_NORM = pb.LossParameter
FLT_MIN = float(np.finfo(np.float32).tiny)


def _outer_c_inner(ctx, axis):
    shape = ctx.bottom_shapes[0]
    outer = int(np.prod(shape[:axis], dtype=np.int64))
    inner = int(np.prod(shape[axis + 1:], dtype=np.int64))
    return outer, shape[axis], inner


def _labels(ctx, outer, inner, ignore_label):
    """(labels as int64 (outer, 1, inner) safe to gather with, valid mask as
    float (outer, 1, inner) or None when every label counts)."""
    g = ctx.g
    lab = g.cast_int(g.reshape(ctx.bottoms[1], [outer, 1, inner], ctx.hint('label_rows')),
                     ctx.hint('label'))
    if ignore_label is None:
        return lab, None
    ignored = g.node('Equal', [lab, g.ints([ignore_label], 'ignore')], ctx.hint('ignored'))
    valid = g.cast_float(g.node('Not', [ignored], ctx.hint('valid_b')), ctx.hint('valid'))
    safe = g.node('Where', [ignored, g.ints([0], 'zero'), lab], ctx.hint('label_safe'))
    return safe, valid


def _normalize(ctx, total, mode, outer, inner, valid, hint):
    """total / max(1, n) for Caffe's normalization mode."""
    g = ctx.g
    if mode == _NORM.VALID and valid is not None:
        count = g.reduce('ReduceSum', valid, [0, 1, 2], keepdims=False, hint=ctx.hint('count'))
        n = g.node('Max', [count, g.const(1.0)], ctx.hint('norm'))
        return g.node('Div', [total, n], hint)
    n = {_NORM.FULL: outer * inner, _NORM.VALID: outer * inner, _NORM.BATCH_SIZE: outer,
         _NORM.NONE: 1}[mode]
    return g.node('Div', [total, g.const(max(1.0, float(np.float32(n))))], hint)


def _softmax_log_probs(ctx, floor):
    """The part both softmax losses share before their sums: p = softmax along
    the layer's axis as (outer, C, inner) rows, log(max(p, floor)), and the
    labels.  Returns (outer, C, inner, log p, labels, valid mask or None)."""
    g, layer = ctx.g, ctx.layer
    ctx.fixed_batch('the loss reads the labels with the batch size')
    outer, c, inner = _outer_c_inner(ctx, layer.axis)
    x = g.reshape(ctx.bottoms[0], [outer, c, inner], ctx.hint('rows'))
    p = g.node('Softmax', [x], ctx.hint('p'), axis=1)
    logp = g.node('Log', [g.node('Max', [p, g.const(floor)], ctx.hint('p_min'))], ctx.hint('logp'))
    lab, valid = _labels(ctx, outer, inner, layer.ignore_label)
    return outer, c, inner, logp, lab, valid


def _softmax_loss_tops(ctx, per, outer, inner, valid, name):
    """-sum of the per-element terms ``per`` over the valid labels, normalized;
    and the second top, the softmax itself, when the layer has one."""
    g, layer = ctx.g, ctx.layer
    if valid is not None:
        per = g.node('Mul', [per, valid], ctx.hint(name + '_valid'))
    total = g.node('Neg', [g.reduce('ReduceSum', per, [0, 1, 2], keepdims=False,
                                    hint=ctx.hint('sum'))], ctx.hint('total'))
    outs = [_normalize(ctx, total, layer.normalization, outer, inner, valid, ctx.hint())]
    if len(ctx.top_shapes) > 1:
        outs.append(g.node('Softmax', [ctx.bottoms[0]], ctx.hint('prob'), axis=layer.axis))
    return outs


@converter('SoftmaxWithLoss')
def softmax_with_loss(ctx):
    """loss = -sum log(max(p[label], FLT_MIN)) / norm, p = softmax along axis;
    second top: p."""
    outer, _, inner, logp, lab, valid = _softmax_log_probs(ctx, FLT_MIN)
    picked = ctx.g.node('GatherElements', [logp, lab], ctx.hint('picked'), axis=1)
    return _softmax_loss_tops(ctx, picked, outer, inner, valid, 'picked')


@converter('InfogainLoss')
def infogain_loss(ctx):
    """loss = -sum_{non-ignored} sum_l H[label, l] log(max(p_l, 1e-20)) / norm,
    p = softmax along axis; H from the third bottom or the layer's source file;
    second top: p."""
    g, layer = ctx.g, ctx.layer
    outer, c, inner, logp, lab, valid = _softmax_log_probs(ctx, 1e-20)
    if len(ctx.bottoms) >= 3:
        H = g.reshape(ctx.bottoms[2], [c, c], ctx.hint('H'))
    else:
        H = g.const(np.asarray(layer.H_file, np.float32).reshape(c, c), ctx.hint('H'))
    rows = g.node('Gather', [H, g.squeeze(lab, [1], ctx.hint('label_flat'))], ctx.hint('H_rows'),
                  axis=0)                                                  # (outer, inner, C)
    rows = g.node('Transpose', [rows], ctx.hint('H_rows_t'), perm=[0, 2, 1])
    per = g.node('Mul', [rows, logp], ctx.hint('weighted'))
    return _softmax_loss_tops(ctx, per, outer, inner, valid, 'weighted')


@converter('EuclideanLoss')
def euclidean_loss(ctx):
    """loss = sum((a - b)^2) / N / 2."""
    g = ctx.g
    ctx.fixed_batch('the loss divides by the batch size')
    a = g.reshape(ctx.bottoms[0], [-1], ctx.hint('a'))
    b = g.reshape(ctx.bottoms[1], [-1], ctx.hint('b'))
    d = g.node('Sub', [a, b], ctx.hint('diff'))
    total = g.reduce('ReduceSum', g.node('Mul', [d, d], ctx.hint('sq')), [0], keepdims=False,
                     hint=ctx.hint('sum'))
    return [g.node('Div', [total, g.const(2.0 * ctx.bottom_shapes[0][0])], ctx.hint())]


@converter('SigmoidCrossEntropyLoss')
def sigmoid_cross_entropy_loss(ctx):
    """loss = -sum [x (t - [x >= 0]) - log(1 + exp(x - 2 x [x >= 0]))] / norm."""
    g, layer = ctx.g, ctx.layer
    ctx.fixed_batch('the loss divides by the batch size')
    outer, inner = layer.outer, layer.inner
    x = g.reshape(ctx.bottoms[0], [outer, 1, inner], ctx.hint('x'))
    t = g.reshape(ctx.bottoms[1], [outer, 1, inner], ctx.hint('t'))
    pos = g.cast_float(g.node('GreaterOrEqual', [x, g.const(0.0)], ctx.hint('pos_b')), ctx.hint('pos'))
    lin = g.node('Mul', [x, g.node('Sub', [t, pos], ctx.hint('t_pos'))], ctx.hint('lin'))
    arg = g.node('Sub', [x, g.mul_const(g.node('Mul', [x, pos], ctx.hint('xpos')), 2.0,
                                        ctx.hint('2xpos'))], ctx.hint('arg'))
    soft = g.node('Log', [g.add_const(g.node('Exp', [arg], ctx.hint('e')), 1.0, ctx.hint('1pe'))],
                  ctx.hint('log1pe'))
    term = g.node('Sub', [lin, soft], ctx.hint('term'))
    valid = None
    if layer.ignore_label is not None:
        kept = g.node('Not', [g.node('Equal', [g.cast_int(t, ctx.hint('t_int')),
                                               g.ints([layer.ignore_label], 'ignore')],
                                     ctx.hint('ignored'))], ctx.hint('valid_b'))
        valid = g.cast_float(kept, ctx.hint('valid'))
        term = g.node('Mul', [term, valid], ctx.hint('term_valid'))
    total = g.node('Neg', [g.reduce('ReduceSum', term, [0, 1, 2], keepdims=False,
                                    hint=ctx.hint('sum'))], ctx.hint('total'))
    return [_normalize(ctx, total, layer.normalization, outer, inner, valid, ctx.hint())]


def _items(ctx, hint):
    """bottom[0] as (N, D) rows and the labels as int64 (N, 1)."""
    g = ctx.g
    n = ctx.bottom_shapes[0][0]
    ctx.fixed_batch('the loss divides by the batch size')
    x = g.node('Flatten', [ctx.bottoms[0]], ctx.hint(hint), axis=1)
    lab = g.cast_int(g.reshape(ctx.bottoms[1], [n, 1], ctx.hint('label_rows')), ctx.hint('label'))
    return x, lab, n


@converter('MultinomialLogisticLoss')
def multinomial_logistic_loss(ctx):
    """loss = -sum_n log(max(p[n, y_n], 1e-20)) / N."""
    g = ctx.g
    p, lab, n = _items(ctx, 'p')
    picked = g.node('GatherElements', [p, lab], ctx.hint('picked'), axis=1)
    logp = g.node('Log', [g.node('Max', [picked, g.const(1e-20)], ctx.hint('p_min'))], ctx.hint('logp'))
    total = g.reduce('ReduceSum', logp, [0, 1], keepdims=False, hint=ctx.hint('sum'))
    return [g.node('Div', [total, g.const(-float(n))], ctx.hint())]


@converter('HingeLoss')
def hinge_loss(ctx):
    """m = max(0, 1 + s x), s = -1 at the label, +1 elsewhere; loss = sum(m) / N
    (L1) or sum(m^2) / N (L2)."""
    g = ctx.g
    x, lab, n = _items(ctx, 'x')
    d = int(np.prod(ctx.bottom_shapes[0][1:], dtype=np.int64))
    onehot = g.cast_float(g.node('Equal', [g.ints(np.arange(d), 'classes'), lab], ctx.hint('is_label')),
                          ctx.hint('onehot'))
    sign = g.node('Sub', [g.const(1.0), g.mul_const(onehot, 2.0, ctx.hint('two_onehot'))],
                  ctx.hint('sign'))
    m = g.node('Relu', [g.add_const(g.node('Mul', [sign, x], ctx.hint('sx')), 1.0, ctx.hint('margin'))],
               ctx.hint('m'))
    if ctx.lp.hinge_loss_param.norm == pb.HingeLossParameter.L2:
        m = g.node('Mul', [m, m], ctx.hint('m_sq'))
    total = g.reduce('ReduceSum', m, [0, 1], keepdims=False, hint=ctx.hint('sum'))
    return [g.node('Div', [total, g.const(float(n))], ctx.hint())]


@converter('ContrastiveLoss')
def contrastive_loss(ctx):
    """d2 = ||a - b||^2 per item; loss = sum(sim ? d2 : max(m - sqrt(d2), 0)^2)
    / N / 2 (legacy_version: max(m - d2, 0))."""
    g, layer = ctx.g, ctx.layer
    n = ctx.bottom_shapes[0][0]
    ctx.fixed_batch('the loss divides by the batch size')
    diff = g.node('Sub', [g.node('Flatten', [ctx.bottoms[0]], ctx.hint('a'), axis=1),
                          g.node('Flatten', [ctx.bottoms[1]], ctx.hint('b'), axis=1)], ctx.hint('d'))
    d2 = g.reduce('ReduceSum', g.node('Mul', [diff, diff], ctx.hint('d_sq')), [1], keepdims=False,
                  hint=ctx.hint('d2'))
    sim = g.node('Not', [g.node('Equal', [g.cast_int(g.reshape(ctx.bottoms[2], [n], ctx.hint('sim_rows')),
                                                     ctx.hint('sim_int')), g.ints([0], 'zero')],
                                ctx.hint('dissimilar'))], ctx.hint('similar'))
    m = g.const(float(layer.margin))
    if layer.legacy_version:
        far = g.node('Relu', [g.node('Sub', [m, d2], ctx.hint('mdist'))], ctx.hint('far'))
    else:
        mdist = g.node('Relu', [g.node('Sub', [m, g.node('Sqrt', [d2], ctx.hint('dist'))],
                                       ctx.hint('mdist_raw'))], ctx.hint('mdist'))
        far = g.node('Mul', [mdist, mdist], ctx.hint('far'))
    per = g.node('Where', [sim, d2, far], ctx.hint('per_item'))
    total = g.reduce('ReduceSum', per, [0], keepdims=False, hint=ctx.hint('sum'))
    return [g.node('Div', [total, g.const(2.0 * n)], ctx.hint())]


@converter('Accuracy')
def accuracy(ctx):
    """Correct iff #{k != y: s_k >= s_y} < top_k; accuracy = correct / counted
    (0 when nothing is counted); second top: per class, correct / items with
    that label (0 when none)."""
    g, layer = ctx.g, ctx.layer
    ctx.fixed_batch('the accuracy reads the labels with the batch size')
    axis = ctx.canonical_axis(ctx.lp.accuracy_param.axis, len(ctx.bottom_shapes[0]))
    outer, c, inner = _outer_c_inner(ctx, axis)
    s = g.reshape(ctx.bottoms[0], [outer, c, inner], ctx.hint('scores'))
    lab, valid = _labels(ctx, outer, inner, layer.ignore_label)
    s_y = g.node('GatherElements', [s, lab], ctx.hint('s_label'), axis=1)
    ge = g.cast_float(g.node('GreaterOrEqual', [s, s_y], ctx.hint('ge_b')), ctx.hint('ge'))
    better = g.reduce('ReduceSum', ge, [1], keepdims=True, hint=ctx.hint('rank'))
    # better counts the label itself too: correct iff better - 1 < top_k.
    correct = g.cast_float(g.node('Less', [better, g.const(float(layer.top_k + 1))],
                                  ctx.hint('correct_b')), ctx.hint('correct'))
    if valid is not None:
        correct = g.node('Mul', [correct, valid], ctx.hint('correct_valid'))
        count = g.reduce('ReduceSum', valid, [0, 1, 2], keepdims=False, hint=ctx.hint('count'))
    else:
        count = g.const(float(outer * inner))
    hits = g.reduce('ReduceSum', correct, [0, 1, 2], keepdims=False, hint=ctx.hint('hits'))
    outs = [g.node('Div', [hits, g.node('Max', [count, g.const(1.0)], ctx.hint('n'))], ctx.hint())]
    if len(ctx.top_shapes) > 1:
        # one-hot of the label over the classes (zero for ignored items): (outer, C, inner)
        onehot = g.cast_float(g.node('Equal', [lab, g.const(np.arange(c).reshape(1, c, 1), 'classes', np.int64)],
                                     ctx.hint('is_class_b')), ctx.hint('is_class'))
        if valid is not None:
            onehot = g.node('Mul', [onehot, valid], ctx.hint('is_class_valid'))
        per_n = g.reduce('ReduceSum', onehot, [0, 2], keepdims=False, hint=ctx.hint('class_n'))
        per_hits = g.reduce('ReduceSum', g.node('Mul', [onehot, correct], ctx.hint('class_correct')),
                            [0, 2], keepdims=False, hint=ctx.hint('class_hits'))
        outs.append(g.node('Div', [per_hits, g.node('Max', [per_n, g.const(1.0)], ctx.hint('class_d'))],
                           ctx.hint('per_class')))
    return outs
