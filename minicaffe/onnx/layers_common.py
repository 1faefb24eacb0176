"""ONNX forms of Caffe's common and structural layers: InnerProduct, Embed,
Softmax, Split, Flatten, Reshape, Concat, Slice, Eltwise, Tile, Reduction,
ArgMax, BatchReindex, Filter, Parameter."""
from minicaffe.onnx.registry import converter
from minicaffe.protoio import pb


def _leading_copies(g, x, top_shape, keep, hint):
    """Reshape x to top_shape, copying (ONNX 0) its first `keep` dims so that a
    symbolic batch dimension passes through."""
    target = [0] * keep + list(top_shape[keep:])
    return g.reshape(x, target, hint)


@converter('InnerProduct')
def inner_product(ctx):
    """y = x' W^T + b, x' = x flattened from `axis` (W is (N, K); (K, N) with transpose)."""
    g, layer = ctx.g, ctx.layer
    shape = ctx.bottom_shapes[0]
    axis = layer.axis
    x = ctx.bottoms[0]
    if len(shape) != 2 or axis != 1:
        x = g.node('Flatten', [x], ctx.hint('flat'), axis=axis)
    w = ctx.param(0, 'W')
    inputs = [x, w] + ([ctx.param(1, 'b')] if layer.bias_term else [])
    y = g.node('Gemm', inputs, ctx.hint('gemm') if axis != 1 else ctx.hint(),
               transB=0 if layer.transpose else 1)
    if axis == 1:
        return [y]
    if axis == 0:
        ctx.fixed_batch('axis 0 is part of the inner product')
        return [g.reshape(y, ctx.top_shapes[0], ctx.hint())]
    ctx.fixed_batch('the output reshape after axis %d needs the leading dimensions' % axis)
    return [g.reshape(y, ctx.top_shapes[0], ctx.hint())]


@converter('Embed')
def embed(ctx):
    """y[..., :] = W[x[...]] + b: a Gather of the rows of W (input_dim, num_output)."""
    g = ctx.g
    idx = g.cast_int(ctx.bottoms[0], ctx.hint('index'))
    y = g.node('Gather', [ctx.param(0, 'W'), idx], ctx.hint('rows') if ctx.layer.bias_term
               else ctx.hint(), axis=0)
    if ctx.layer.bias_term:
        y = g.node('Add', [y, ctx.param(1, 'b')], ctx.hint())
    return [y]


@converter('Softmax')
def softmax(ctx):
    return [ctx.g.node('Softmax', [ctx.bottoms[0]], ctx.hint(), axis=ctx.layer.axis)]


@converter('Split')
def split(ctx):
    return [ctx.bottoms[0]] * len(ctx.top_shapes)


@converter('Flatten')
def flatten(ctx):
    p = ctx.lp.flatten_param
    n = len(ctx.bottom_shapes[0])
    axis = ctx.canonical_axis(p.axis, n)
    top = ctx.top_shapes[0]
    target = [0] * axis + [-1] + list(top[axis + 1:])
    return [ctx.g.reshape(ctx.bottoms[0], target, ctx.hint())]


@converter('Reshape')
def reshape(ctx):
    """Caffe's 0 (copy) and -1 (infer) inside the replaced range are ONNX's
    (same positions); the axes after it are written out."""
    p = ctx.lp.reshape_param
    s = ctx.bottom_shapes[0]
    top = ctx.top_shapes[0]
    start = p.axis if p.axis >= 0 else len(s) + p.axis + 1
    dims = list(p.shape.dim)
    target = [0] * start + dims + list(top[start + len(dims):])
    if not target or target[0] not in (0, -1) or (target[0] == -1 and top[0] != s[0]):
        ctx.fixed_batch('the new shape sets axis 0')
    elif target[0] == -1:
        ctx.fixed_batch('the new shape infers axis 0')
    return [ctx.g.reshape(ctx.bottoms[0], target, ctx.hint())]


@converter('Concat')
def concat(ctx):
    return [ctx.g.node('Concat', list(ctx.bottoms), ctx.hint(), axis=ctx.layer.axis)]


@converter('Slice')
def slice_(ctx):
    axis = ctx.layer.axis
    if axis == 0:
        ctx.fixed_batch('slices axis 0')
    sizes = [t[axis] for t in ctx.top_shapes]
    return ctx.g.split(ctx.bottoms[0], sizes, axis, ctx.hint())


@converter('Eltwise')
def eltwise(ctx):
    """PROD: x0 x1 ...; SUM: c0 x0 + c1 x1 + ... (coeffs default 1); MAX: elementwise max."""
    g = ctx.g
    p = ctx.lp.eltwise_param
    xs = list(ctx.bottoms)
    if p.operation == pb.EltwiseParameter.PROD:
        op = 'Mul'
    elif p.operation == pb.EltwiseParameter.MAX:
        op = 'Max'
    else:
        op = 'Sum'
        coeffs = list(p.coeff) or [1.0] * len(xs)
        xs = [x if c == 1 else g.mul_const(x, c, ctx.hint('scaled')) for x, c in zip(xs, coeffs)]
    y = xs[0]
    for i, x in enumerate(xs[1:]):
        y = g.node('Mul' if op == 'Mul' else ('Max' if op == 'Max' else 'Add'), [y, x],
                   ctx.hint() if i == len(xs) - 2 else ctx.hint('partial'))
    if len(xs) == 1:
        y = g.node('Identity', [y], ctx.hint())
    return [y]


@converter('Tile')
def tile(ctx):
    layer = ctx.layer
    reps = [1] * len(ctx.bottom_shapes[0])
    reps[layer.axis] = layer.tiles
    if layer.axis == 0:
        ctx.fixed_batch('tiles axis 0')
    return [ctx.g.node('Tile', [ctx.bottoms[0], ctx.g.ints(reps, 'repeats')], ctx.hint())]


@converter('Reduction')
def reduction(ctx):
    """y[i] = coeff * op over all axes from `axis` on (MEAN: coeff / count)."""
    g, layer = ctx.g, ctx.layer
    x = ctx.bottoms[0]
    n = len(ctx.bottom_shapes[0])
    if layer.axis == 0:
        ctx.fixed_batch('reduces axis 0')
    op = layer.op
    if op == pb.ReductionParameter.ASUM:
        x = g.node('Abs', [x], ctx.hint('abs'))
    elif op == pb.ReductionParameter.SUMSQ:
        x = g.node('Mul', [x, x], ctx.hint('sq'))
    y = g.reduce('ReduceSum', x, list(range(layer.axis, n)), keepdims=False, hint=ctx.hint('sum'))
    return [g.mul_const(y, float(layer.coeff), ctx.hint())]


@converter('ArgMax')
def argmax(ctx):
    """TopK along `axis` (indices, or values with out_max_val), or per item over
    the flattened item: (N, 1, top_k) indices / (N, 2, top_k) indices then values."""
    g, layer = ctx.g, ctx.layer
    x = ctx.bottoms[0]
    k = g.ints([layer.top_k], 'k')
    if layer.has_axis:
        if layer.axis == 0:
            ctx.fixed_batch('ArgMax over axis 0')
        val, idx = g.node('TopK', [x, k], ctx.hint('topk'), outputs=2, axis=layer.axis)
        return [g.node('Identity', [val], ctx.hint()) if layer.out_max_val
                else g.cast_float(idx, ctx.hint())]
    flat = g.node('Flatten', [x], ctx.hint('flat'), axis=1)
    val, idx = g.node('TopK', [flat, k], ctx.hint('topk'), outputs=2, axis=1)
    y = g.cast_float(idx, ctx.hint('index'))
    if layer.out_max_val:
        y = g.node('Concat', [y, val], ctx.hint('index_value'), axis=1)
    return [_leading_copies(g, y, ctx.top_shapes[0], 1, ctx.hint())]


@converter('BatchReindex')
def batch_reindex(ctx):
    ctx.fixed_batch('the output batch is the length of the index')
    idx = ctx.g.cast_int(ctx.bottoms[1], ctx.hint('index'))
    return [ctx.g.node('Gather', [ctx.bottoms[0], idx], ctx.hint(), axis=0)]


@converter('Filter')
def filter_(ctx):
    """Compress along axis 0 where the selector (last bottom) is nonzero; the
    outputs' axis 0 depends on the data."""
    g = ctx.g
    keep = g.node('Not', [g.node('Equal', [g.reshape(ctx.bottoms[-1], [-1], ctx.hint('selector')),
                                           g.const(0.0)], ctx.hint('zero'))], ctx.hint('keep'))
    return [g.node('Compress', [b, keep], ctx.hint(), axis=0) for b in ctx.bottoms[:-1]]


@converter('Parameter')
def parameter(ctx):
    return [ctx.g.node('Identity', [ctx.param(0, 'value')], ctx.hint())]
