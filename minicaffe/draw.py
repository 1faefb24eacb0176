"""Draw a net as a graph with graphviz (`minicaffe draw`, pycaffe's caffe.draw).

    minicaffe draw NET.prototxt OUT.png|svg|pdf|dot [--rankdir LR|TB|BT|RL]
                   [--phase TRAIN|TEST|ALL] [--stage S ...] [--level N] [--display-lrm]

Layout choices that keep big recurrent nets (LRCN) readable:
* layers are the nodes, blobs are the labelled edges (a blob node appears only
  for net outputs), so a chain conv -> relu -> pool reads as three boxes;
* in-place layers (ReLU, Dropout on their input) sit in the chain of the blob
  they rewrite instead of producing cycles;
* each box names the layer, its type and its key settings (kernel/stride/pad,
  outputs, pooling method, LSTM units, dropout ratio, frozen parameters,
  shared parameter names); colours group the layer kinds (data, weights,
  pooling, neuron, recurrent, structure, loss);
* with ``--phase ALL`` (the default) layers limited to a phase or stage show
  their include/exclude rule and a dashed border; alternative producers of a
  blob (the TRAIN and TEST data layers) both feed its consumers.  With
  ``--phase TRAIN|TEST`` (plus ``--stage``/``--level``) the net is filtered as
  the Net would build it.

Writing PNG/SVG/PDF needs graphviz's ``dot`` (Debian package ``graphviz``);
``.dot``/``.gv`` writes the graph source without it.
"""
import os
import shutil
import subprocess

from .errors import MinicaffeError
from .protoio import pb

DOT_MISSING = ("graphviz's 'dot' program was not found on PATH; install graphviz (Debian/Ubuntu:"
               " apt-get install graphviz, macOS: brew install graphviz) or write a .dot file")

_KINDS = {
    'data': ('#D9D9D9', {'Data', 'ImageData', 'HDF5Data', 'WindowData', 'MemoryData', 'DummyData',
                         'Input', 'Python', 'HDF5Output'}),
    'weights': ('#9DC3E6', {'Convolution', 'Deconvolution', 'InnerProduct', 'Embed', 'Bias', 'Scale',
                            'Parameter', 'PReLU'}),
    'pool': ('#F4B183', {'Pooling', 'SPP', 'LRN', 'MVN', 'BatchNorm'}),
    'recurrent': ('#C5B0D5', {'LSTM', 'RNN', 'LSTMUnit', 'Recurrent'}),
    'structure': ('#FFF2CC', {'Concat', 'Slice', 'Split', 'Reshape', 'Flatten', 'Silence', 'Eltwise',
                              'Reduction', 'Crop', 'Tile', 'Filter', 'BatchReindex', 'ArgMax'}),
    'metric': ('#F8CBAD', {'Accuracy'}),
}
_NEURON = '#C6E0B4'
_LOSS = '#FF9999'


def _color(layer_type):
    if layer_type.endswith('Loss'):
        return _LOSS
    for color, types in _KINDS.values():
        if layer_type in types:
            return color
    return _NEURON


def _esc(text):
    return (str(text).replace('&', '&amp;').replace('<', '&lt;').replace('>', '&gt;')
            .replace('"', '&quot;'))


def _dims(values, h=None, w=None, default=None):
    vals = list(values)
    if h or w:
        return '%sx%s' % (h or (vals[0] if vals else default), w or (vals[-1] if vals else default))
    if not vals:
        return None if default is None else str(default)
    if len(vals) == 1:
        return '%dx%d' % (vals[0], vals[0])
    return 'x'.join(str(v) for v in vals)


def layer_summary(lp):
    """Short description of a layer's key settings (one or two lines)."""
    t = lp.type
    out = []
    if t in ('Convolution', 'Deconvolution'):
        c = lp.convolution_param
        k = _dims(c.kernel_size, c.kernel_h, c.kernel_w)
        s = _dims(c.stride, c.stride_h, c.stride_w, 1)
        p = _dims(c.pad, c.pad_h, c.pad_w, 0)
        txt = '%d out, %s' % (c.num_output, k)
        if s not in ('1', '1x1'):
            txt += ' /%s' % s.split('x')[0] if len(set(s.split('x'))) == 1 else ' /%s' % s
        if p not in ('0', '0x0'):
            txt += ' pad %s' % (p.split('x')[0] if len(set(p.split('x'))) == 1 else p)
        if c.group > 1:
            txt += ' g%d' % c.group
        if len(c.dilation) and any(d != 1 for d in c.dilation):
            txt += ' dil %s' % 'x'.join(map(str, c.dilation))
        out.append(txt)
    elif t == 'InnerProduct':
        ip = lp.inner_product_param
        out.append('%d out%s' % (ip.num_output, ', axis %d' % ip.axis if ip.axis != 1 else ''))
    elif t == 'Embed':
        e = lp.embed_param
        out.append('%d words -> %d' % (e.input_dim, e.num_output))
    elif t == 'Pooling':
        p = lp.pooling_param
        method = pb.PoolingParameter.PoolMethod.Name(p.pool)
        if p.global_pooling:
            out.append('%s global' % method)
        else:
            k = _dims([p.kernel_size] if p.HasField('kernel_size') else [], p.kernel_h, p.kernel_w)
            txt = '%s %s' % (method, k)
            if p.stride != 1 or p.stride_h or p.stride_w:
                txt += ' /%s' % (p.stride_h or p.stride)
            if p.pad or p.pad_h or p.pad_w:
                txt += ' pad %d' % (p.pad or p.pad_h)
            out.append(txt)
    elif t == 'LRN':
        out.append('size %d' % lp.lrn_param.local_size)
    elif t == 'Dropout':
        out.append('ratio %g' % lp.dropout_param.dropout_ratio)
    elif t in ('LSTM', 'RNN'):
        r = lp.recurrent_param
        out.append('%d units%s' % (r.num_output, ', expose_hidden' if r.expose_hidden else ''))
    elif t in ('Concat', 'Softmax', 'Flatten', 'Slice'):
        axis = {'Concat': lp.concat_param.axis, 'Softmax': lp.softmax_param.axis,
                'Flatten': lp.flatten_param.axis, 'Slice': lp.slice_param.axis}[t]
        txt = 'axis %d' % axis
        if t == 'Slice' and len(lp.slice_param.slice_point):
            txt += ' at %s' % ','.join(map(str, lp.slice_param.slice_point))
        if axis != 1 or t == 'Slice':
            out.append(txt)
    elif t == 'Reshape':
        out.append('shape (%s)' % ', '.join(map(str, lp.reshape_param.shape.dim)))
    elif t == 'Eltwise':
        out.append(pb.EltwiseParameter.EltwiseOp.Name(lp.eltwise_param.operation))
    elif t == 'Input':
        shapes = ['(%s)' % ', '.join(map(str, s.dim)) for s in lp.input_param.shape]
        if len(shapes) == len(lp.top) > 1:
            shapes = ['%s %s' % (name, s) for name, s in zip(lp.top, shapes)]
        out.extend(shapes)
    elif t in ('Data', 'ImageData', 'HDF5Data', 'WindowData'):
        field = {'Data': 'data_param', 'ImageData': 'image_data_param', 'HDF5Data': 'hdf5_data_param',
                 'WindowData': 'window_data_param'}[t]
        p = getattr(lp, field)
        src = os.path.basename(p.source.rstrip('/')) or p.source
        out.append('%s, batch %d' % (src, p.batch_size))
        if lp.HasField('transform_param'):
            tp = lp.transform_param
            bits = []
            if tp.crop_size:
                bits.append('crop %d' % tp.crop_size)
            if tp.mirror:
                bits.append('mirror')
            if tp.scale != 1:
                bits.append('scale %g' % tp.scale)
            if bits:
                out.append(', '.join(bits))
    elif t == 'Python':
        out.append('%s.%s' % (lp.python_param.module, lp.python_param.layer))
    elif t == 'DummyData':
        out.extend('(%s)' % ', '.join(map(str, s.dim)) for s in lp.dummy_data_param.shape)
    elif t == 'Accuracy' and lp.accuracy_param.top_k != 1:
        out.append('top %d' % lp.accuracy_param.top_k)
    if len(lp.loss_weight) and any(w not in (0, 1) for w in lp.loss_weight):
        out.append('loss weight %s' % ', '.join('%g' % w for w in lp.loss_weight))
    if len(lp.param):
        if all(ps.HasField('lr_mult') and ps.lr_mult == 0 for ps in lp.param):
            out.append('frozen (lr_mult 0)')
        shared = [ps.name for ps in lp.param if ps.name]
        if shared:
            out.append('params: %s' % ', '.join(shared))
    return out


def _rule_text(rule):
    bits = []
    if rule.HasField('phase'):
        bits.append(pb.Phase.Name(rule.phase))
    bits.extend('stage %s' % s for s in rule.stage)
    bits.extend('not %s' % s for s in rule.not_stage)
    if rule.HasField('min_level'):
        bits.append('level >= %d' % rule.min_level)
    if rule.HasField('max_level'):
        bits.append('level <= %d' % rule.max_level)
    return ', '.join(bits)


def _rules(lp):
    inc = ' | '.join(_rule_text(r) for r in lp.include)
    exc = ' | '.join(_rule_text(r) for r in lp.exclude)
    out = []
    if inc:
        out.append('only ' + inc)
    if exc:
        out.append('not ' + exc)
    return out


def prepare_net(net_param, phase=None, stages=(), level=0, source='<net>'):
    """Upgrade legacy syntax and, for a phase, keep only the layers it builds."""
    from . import netbuild
    param = pb.NetParameter()
    param.CopyFrom(net_param)
    netbuild.upgrade_net(param, source)
    if phase is None:
        return param
    if isinstance(phase, str):
        phase = pb.Phase.Value(phase.upper())
    param.state.phase = phase
    param.state.level = int(level)
    del param.state.stage[:]
    param.state.stage.extend(stages)
    return netbuild.filter_net(param, source)


def get_dot_source(net_param, rankdir='LR', phase=None, stages=(), level=0, source='<net>',
                   display_lrm=False, label_edges=True):
    """The graphviz source of a NetParameter (see module doc for the layout);
    ``display_lrm`` adds the learning rate multipliers of the weight layers,
    ``label_edges=False`` leaves the blob names off the edges."""
    if rankdir not in ('LR', 'RL', 'TB', 'BT'):
        raise MinicaffeError('rankdir must be LR, RL, TB or BT, got %r' % (rankdir,))
    param = prepare_net(net_param, phase, stages, level, source)
    title = param.name or 'net'
    if phase is not None:
        title += ' (%s%s)' % (phase if isinstance(phase, str) else pb.Phase.Name(phase),
                              ''.join(', stage %s' % s for s in stages))
    lines = ['digraph net {',
             '  graph [rankdir=%s, fontname="Helvetica", fontsize=16, labelloc=t, label="%s",'
             ' nodesep=0.25, ranksep=0.35, newrank=true];' % (rankdir, _esc(title)),
             '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=11,'
             ' margin="0.12,0.05"];',
             '  edge [fontname="Helvetica", fontsize=9, color="#555555", fontcolor="#1F4E79",'
             ' arrowsize=0.7];']
    writers = {}          # blob -> [(node id, restricted)]
    consumed = set()
    edges = []
    for i, lp in enumerate(param.layer):
        node = 'L%d' % i
        restricted = bool(len(lp.include) or len(lp.exclude))
        label = ['<B>%s</B>' % _esc(lp.name or '(unnamed)'),
                 '<FONT POINT-SIZE="9">%s</FONT>' % _esc(lp.type)]
        label += ['<FONT POINT-SIZE="9">%s</FONT>' % _esc(s) for s in layer_summary(lp)]
        if display_lrm and lp.type in _LR_MULT_TYPES:
            label.append('<FONT POINT-SIZE="9">lr mult: %s</FONT>'
                         % ', '.join('%.1f' % m for m in get_layer_lr_mult(lp)))
        label += ['<FONT POINT-SIZE="8" COLOR="#7F3F00"><I>%s</I></FONT>' % _esc(r) for r in _rules(lp)]
        style = '"rounded,filled,dashed"' if restricted and phase is None else '"rounded,filled"'
        lines.append('  %s [label=<%s>, fillcolor="%s", style=%s];'
                     % (node, '<BR/>'.join(label), _color(lp.type), style))
        in_place = set()
        for j, b in enumerate(lp.bottom):
            for w, _ in writers.get(b, []):
                edges.append((w, node, b))
            if not writers.get(b):
                # read before any producer: an undeclared input, drawn as a blob
                bid = 'B_%s' % _node_id(b)
                lines.append('  %s [label="%s", shape=ellipse, style=filled, fillcolor="#FFFFFF",'
                             ' fontsize=10];' % (bid, _esc(b)))
                writers[b] = [(bid, False)]
                edges.append((bid, node, b))
            consumed.add(b)
            if j < len(lp.top) and lp.top[j] == b:
                in_place.add(b)
        for t in lp.top:
            prev = writers.get(t, [])
            if t not in in_place and restricted and prev and all(r for _, r in prev) and phase is None:
                writers[t] = prev + [(node, restricted)]       # alternative producer (other phase/stage)
            else:
                writers[t] = [(node, restricted)]
            consumed.discard(t)
    outputs = [b for b in writers if b not in consumed and not b.startswith('B_')]
    for b in outputs:
        if all(w.startswith('B_') for w, _ in writers[b]):
            continue
        bid = 'OUT_%s' % _node_id(b)
        lines.append('  %s [label="%s", shape=ellipse, style=filled, fillcolor="#FFFFFF",'
                     ' fontsize=10, color="#888888"];' % (bid, _esc(b)))
        for w, _ in writers[b]:
            edges.append((w, bid, None))
    seen = set()
    for a, b, blob in edges:
        key = (a, b, blob)
        if key in seen:
            continue
        seen.add(key)
        lab = ' [label="%s"]' % _esc(blob) if blob and label_edges else ''
        lines.append('  %s -> %s%s;' % (a, b, lab))
    lines.append('}')
    return '\n'.join(lines) + '\n'


def _node_id(name):
    return ''.join(ch if ch.isalnum() else '_%02x' % ord(ch) for ch in name)


def draw_net(caffe_net, rankdir='LR', ext='png', phase=None, display_lrm=False, stages=(), level=0):
    """The picture of a NetParameter as bytes in format ``ext`` (png, svg, pdf, dot);
    the first five arguments are pycaffe's, in its order."""
    return render(get_dot_source(caffe_net, rankdir, phase, stages, level,
                                 display_lrm=display_lrm), ext)


def render(src, ext):
    """Graphviz source -> bytes in format ``ext`` ('dot'/'gv' return the source)."""
    if ext in ('dot', 'gv', 'raw'):
        return src.encode('utf-8')
    dot = shutil.which('dot')
    if dot is None:
        raise MinicaffeError(DOT_MISSING)
    try:
        res = subprocess.run([dot, '-T' + ext], input=src.encode('utf-8'), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, timeout=300)
    except subprocess.TimeoutExpired:
        raise MinicaffeError('graphviz dot took more than 300 s to lay out the net') from None
    if res.returncode != 0:
        raise MinicaffeError('graphviz dot failed (format "%s"): %s'
                             % (ext, res.stderr.decode('utf-8', 'replace').strip()))
    return res.stdout


def draw_net_to_file(caffe_net, filename, rankdir='LR', phase=None, display_lrm=False, stages=(),
                     level=0):
    """Draw a NetParameter to ``filename``; its extension picks the format (pycaffe's
    python/draw_net.py passes the first five positionally)."""
    ext = os.path.splitext(filename)[1].lstrip('.').lower() or 'png'
    data = draw_net(caffe_net, rankdir, ext, phase, display_lrm, stages, level)
    with open(filename, 'wb') as f:
        f.write(data)


# ------------------------------------------------- pycaffe's helper functions
_LR_MULT_TYPES = ('Convolution', 'Deconvolution', 'InnerProduct')


class DrawError(MinicaffeError, ValueError):
    """A bad argument to a draw helper (pycaffe raises ValueError)."""


def get_pooling_types_dict():
    """{pooling method number: name}, e.g. {0: 'MAX', 1: 'AVE', 2: 'STOCHASTIC'}."""
    return {v.number: name for name, v in
            pb.PoolingParameter.PoolMethod.DESCRIPTOR.values_by_name.items()}


def get_edge_label(layer):
    """pycaffe's edge label for the tops of a LayerParameter: the batch size of a
    Data layer, the output count of a weight layer, else '""' (an empty label)."""
    if layer.type == 'Data':
        return 'Batch %d' % layer.data_param.batch_size
    if layer.type in ('Convolution', 'Deconvolution'):
        return str(layer.convolution_param.num_output)
    if layer.type == 'InnerProduct':
        return str(layer.inner_product_param.num_output)
    return '""'


def get_layer_lr_mult(layer):
    """(weights lr_mult, bias lr_mult) of a Convolution, Deconvolution or
    InnerProduct LayerParameter; a missing param spec means 1."""
    if layer.type not in _LR_MULT_TYPES:
        raise DrawError('%s layers do not have a learning rate multiplier' % layer.type)
    if len(layer.param) > 2:
        raise DrawError('layer "%s" has %d param specs; a %s layer has at most 2'
                        % (layer.name, len(layer.param), layer.type))
    mults = [spec.lr_mult for spec in layer.param]
    return tuple(mults + [1.0] * (2 - len(mults)))


def get_layer_label(layer, rankdir, display_lrm=False):
    """pycaffe's node label (quoted for dot): name, (type[ method]), the kernel,
    stride and pad of spatial layers, optionally the lr multipliers; words are
    separated by spaces in vertical layouts (TB/BT), by line breaks otherwise."""
    sep = ' ' if rankdir in ('TB', 'BT') else r'\n'
    kind = layer.type
    if kind == 'Pooling':
        kind += ' ' + get_pooling_types_dict()[layer.pooling_param.pool]
    parts = [layer.name, '(%s)' % kind]
    if layer.type == 'Pooling':
        pp = layer.pooling_param
        parts += ['kernel size: %d' % pp.kernel_size, 'stride: %d' % pp.stride, 'pad: %d' % pp.pad]
    elif layer.type in ('Convolution', 'Deconvolution'):
        cp = layer.convolution_param
        first = lambda values, default: values[0] if len(values) else default  # noqa: E731
        parts += ['kernel size: %d' % first(cp.kernel_size, 1), 'stride: %d' % first(cp.stride, 1),
                  'pad: %d' % first(cp.pad, 0)]
    if display_lrm and layer.type in _LR_MULT_TYPES:
        mults = get_layer_lr_mult(layer)
        if any(mults):
            parts.append('lr mult: %.1f, %.1f' % mults)
    return '"%s"' % sep.join(parts)


def choose_color_by_layertype(layertype):
    """The fill colour of a layer type's node (minicaffe's palette, see _KINDS)."""
    return _color(layertype)


def get_pydot_graph(caffe_net, rankdir, label_edges=True, phase=None, display_lrm=False):
    """The drawing of a NetParameter as a pydot.Dot (needs the pydot package)."""
    try:
        import pydot
    except ImportError:
        raise MinicaffeError('get_pydot_graph needs the pydot package (pip install pydot);'
                             ' get_dot_source gives the graphviz source without it') from None
    src = get_dot_source(caffe_net, rankdir, phase, display_lrm=display_lrm,
                         label_edges=label_edges)
    return pydot.graph_from_dot_data(src)[0]
