"""`minicaffe summary NET`: one table of a net -- layer, type, top shapes, learnable
parameters, FLOPs per forward pass and the memory of its tops -- plus totals.

The shapes and the memory are the facts Caffe logs while it builds a net ("Top shape:
64 20 24 24 (737280)", "Memory required for data: N"): memory is 4 bytes per top
value, every top counted, in-place ones again, so the total is Caffe's last "Memory
required for data" line.  Params count the values of the learnable blobs a layer
owns (a blob shared by name is counted at its owner; the sharer shows ``shared``).

FLOPs count one forward pass of the whole batch, a multiply-add as 2 FLOPs, one per
element for other arithmetic; data movement (copies, splits, reshapes, data layers)
is 0.  One function per layer kind (:data:`FLOP_RULES`); any other layer counts one
FLOP per top value (an element-wise layer's cost):

    Convolution     2 * top.count * (C_in / group) * prod(kernel) [+ top.count bias]
    Deconvolution   2 * bottom.count * (C_out / group) * prod(kernel) [+ top.count bias]
    InnerProduct    2 * top.count * K [+ top.count bias]           (K inputs per output)
    Pooling         top.count * prod(kernel)                         (max compares or sums)
    LRN             across channels: bottom.count * (2 * local_size + 3);
                    within a channel: bottom.count * (2 * local_size^2 + 3)
    LSTM            2 * T*N * 4H * (D + H) [+ 2 * N * 4H * D_static + T*N * 4H]
                    + T*N * 4H (bias) + 10 * T*N * H (gates and cell)
    RNN             2 * T*N * H * (D + H) [+ static as LSTM] + 2 * T*N * O * H
                    + 2 * T*N * (H + O) (biases and tanh)
    Softmax         3 * count (exp, sum, divide); the softmax losses the same on bottom 0
"""
import collections

from ..blob import shape_string
from ..errors import MinicaffeError

Row = collections.namedtuple('Row', 'name type top_shapes params flops memory')

# Layers that only move or name data: no arithmetic.
NO_FLOPS = {'Input', 'Data', 'ImageData', 'HDF5Data', 'MemoryData', 'WindowData', 'DummyData',
            'VideoData', 'Python', 'Split', 'Reshape', 'Flatten', 'Silence', 'Concat', 'Slice',
            'Crop', 'Tile', 'HDF5Output', 'Parameter'}


def _prod(values):
    out = 1
    for v in values:
        out *= int(v)
    return out


def _has_bias(layer):
    return len(layer.blobs) > 1


def conv_flops(layer, bottom, top):
    weight = layer.blobs[0].shape              # (C_out, C_in / group, k...)
    return sum(2 * t.count * _prod(weight[1:]) + (t.count if _has_bias(layer) else 0) for t in top)


def deconv_flops(layer, bottom, top):
    weight = layer.blobs[0].shape              # (C_in, C_out / group, k...)
    return sum(2 * b.count * _prod(weight[1:]) for b in bottom) + \
        (sum(t.count for t in top) if _has_bias(layer) else 0)


def inner_product_flops(layer, bottom, top):
    weight = layer.blobs[0].shape              # (N_out, K), or (K, N_out) transposed
    k = weight[0] if layer.layer_param.inner_product_param.transpose else weight[1]
    t = top[0].count
    return 2 * t * int(k) + (t if _has_bias(layer) else 0)


def pooling_flops(layer, bottom, top):
    return top[0].count * _prod(layer.kernel)


def lrn_flops(layer, bottom, top):
    p = layer.layer_param.lrn_param
    window = p.local_size if p.norm_region == p.ACROSS_CHANNELS else p.local_size ** 2
    return bottom[0].count * (2 * window + 3)


def _static(layer, bottom, gates):
    """The static input's share: its transform once per stream, then added at every step."""
    if len(bottom) < 3:
        return 0
    T, N = bottom[0].shape[:2]
    return 2 * N * gates * _prod(bottom[2].shape[1:]) + T * N * gates


def lstm_flops(layer, bottom, top):
    T, N = bottom[0].shape[:2]
    D, H = _prod(bottom[0].shape[2:]), int(layer.layer_param.recurrent_param.num_output)
    rows, gates = T * N, 4 * H
    return 2 * rows * gates * (D + H) + rows * gates + 10 * rows * H + _static(layer, bottom, gates)


def rnn_flops(layer, bottom, top):
    T, N = bottom[0].shape[:2]
    D, H = _prod(bottom[0].shape[2:]), int(layer.layer_param.recurrent_param.num_output)
    O = _prod(top[0].shape[2:])
    rows = T * N
    return (2 * rows * H * (D + H) + 2 * rows * O * H + 2 * rows * (H + O)
            + _static(layer, bottom, H))


def softmax_flops(layer, bottom, top):
    return 3 * bottom[0].count


def no_flops(layer, bottom, top):
    return 0


def elementwise_flops(layer, bottom, top):
    """The default: one FLOP per top value."""
    return sum(t.count for t in top)


FLOP_RULES = {
    'Convolution': conv_flops,
    'Deconvolution': deconv_flops,
    'InnerProduct': inner_product_flops,
    'Pooling': pooling_flops,
    'LRN': lrn_flops,
    'LSTM': lstm_flops,
    'RNN': rnn_flops,
    'Softmax': softmax_flops,
    'SoftmaxWithLoss': softmax_flops,
    'SigmoidCrossEntropyLoss': softmax_flops,
}


def layer_flops(layer, bottom, top):
    """FLOPs of one forward pass of ``layer`` (see the module docstring)."""
    if layer.type in NO_FLOPS:
        return 0
    return FLOP_RULES.get(layer.type, elementwise_flops)(layer, bottom, top)


def summarize(net):
    """Rows of :class:`Row`, one per layer of ``net`` (automatic splits included, as
    Caffe builds them).  params is None for a layer whose blobs are all shared."""
    rows = []
    owned = {}
    for i, (lid, _) in enumerate(net.param_layer_indices):
        if net.param_owners[i] < 0:
            owned[lid] = owned.get(lid, 0) + net.all_params[i].count
    for lid, layer in enumerate(net.layers):
        bottom, top = net._bottom(lid), net._top(lid)
        shapes = []
        for tid, blob in zip(net.top_ids[lid], top):
            text = shape_string(blob.shape).rsplit(' (', 1)[0] if blob.shape else '(scalar)'
            if tid in net.bottom_ids[lid]:
                text += ' (in-place)'
            shapes.append(text)
        params = owned.get(lid, 0) if (lid in owned or not layer.blobs) else None
        rows.append(Row(net._layer_names[lid], layer.type, shapes, params,
                        layer_flops(layer, bottom, top), 4 * sum(b.count for b in top)))
    return rows


def _num(n):
    return '{:,}'.format(n)


def _human(n, unit=''):
    for scale, prefix in ((1e12, 'T'), (1e9, 'G'), (1e6, 'M'), (1e3, 'k')):
        if n >= scale:
            return '%.3g %s%s' % (n / scale, prefix, unit)
    return '%d %s' % (n, unit) if unit else '%d' % n


def _bytes(n):
    for scale, name in ((2 ** 30, 'GiB'), (2 ** 20, 'MiB'), (2 ** 10, 'KiB')):
        if n >= scale:
            return '%.3g %s' % (n / float(scale), name)
    return '%d B' % n


def format_table(rows, title=None):
    """The table as lines of text, totals last."""
    head = ('layer', 'type', 'top shapes', 'params', 'FLOPs', 'memory (B)')
    body = []
    for r in rows:
        shapes = r.top_shapes or ['']
        params = 'shared' if r.params is None else _num(r.params)
        body.append((r.name, r.type, shapes[0], params, _num(r.flops), _num(r.memory)))
        for extra in shapes[1:]:
            body.append(('', '', extra, '', '', ''))
    params = sum(r.params or 0 for r in rows)
    flops = sum(r.flops for r in rows)
    memory = sum(r.memory for r in rows)
    total = ('total', '%d layers' % len(rows), '', _num(params), _num(flops), _num(memory))
    widths = [max(len(x[i]) for x in [head, total] + body) for i in range(len(head))]
    right = (False, False, False, True, True, True)

    def line(cells):
        return '  '.join(c.rjust(w) if r else c.ljust(w)
                         for c, w, r in zip(cells, widths, right)).rstrip()

    out = [title] if title else []
    out += [line(head), line(['-' * w for w in widths])]
    out += [line(b) for b in body]
    out += [line(['-' * w for w in widths]), line(total), '']
    out.append('Learnable parameters: %s (%s as float32)' % (_num(params), _bytes(4 * params)))
    out.append('FLOPs per forward pass: %s (%s)' % (_num(flops), _human(flops, 'FLOP')))
    out.append('Memory required for data: %d (%s)' % (memory, _bytes(memory)))
    return out


# ---------------------------------------------------------------- command line
def add_arguments(p):
    p.add_argument('model', help='net .prototxt')
    p.add_argument('--phase', type=str.upper, choices=['TRAIN', 'TEST'], default='TRAIN',
                   help='net phase (as caffe time)')
    p.add_argument('--stage', action='append', default=[],
                   help='net stage (repeatable, or comma-separated)')
    p.add_argument('--level', type=int, default=0, help='net level')


def run(args, out=print):
    from .nets import build_net, split_stages
    net = build_net(args.model, args.phase, args.level, split_stages(args.stage))
    if not net.layers:
        raise MinicaffeError('%s: the net has no layers in phase %s' % (args.model, args.phase))
    title = 'Net %s (%s), phase %s' % (net.name or '(unnamed)', args.model, args.phase)
    for line in format_table(summarize(net), title):
        out(line)
    return 0
