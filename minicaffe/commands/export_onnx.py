"""``minicaffe export-onnx NET.prototxt [WEIGHTS] -o model.onnx``: the net's
forward (TEST phase by default) as an ONNX model (minicaffe.onnx).  Kept apart
from minicaffe.onnx so that the command and its --help work without the onnx
package; running it without onnx is a clear error."""
from ..errors import MinicaffeError
from .nets import build_net, split_stages

DEFAULT_OPSET = 17      # minicaffe.onnx.DEFAULT_OPSET (not imported: onnx may be absent)


def add_arguments(p):
    p.add_argument('model', help='net .prototxt')
    p.add_argument('weights', nargs='?', default=None,
                   help='trained weights (.caffemodel or .h5; comma-separated for several);'
                        ' default: the fillers\' values')
    p.add_argument('-o', '--output', required=True, help='the .onnx file to write')
    p.add_argument('--phase', type=str.upper, choices=['TRAIN', 'TEST'], default='TEST',
                   help='net phase (default TEST)')
    p.add_argument('--stage', action='append', default=[],
                   help='net state stage (repeatable, or comma-separated; default none)')
    p.add_argument('--level', type=int, default=0, help='net state level (default 0)')
    p.add_argument('--opset', type=int, default=DEFAULT_OPSET,
                   help='ONNX opset (default %d; 13 or later)' % DEFAULT_OPSET)
    p.add_argument('--blob', action='append', default=[], metavar='NAME',
                   help='export this blob as an output (repeatable; default: the net\'s outputs)')
    p.add_argument('--fixed-batch', action='store_true',
                   help='keep the inputs\' batch size (default: a symbolic N where the net allows)')


def run(args, out=print):
    try:
        import minicaffe.onnx as mo
    except ImportError as e:
        raise MinicaffeError("export-onnx needs the onnx package: pip install 'minicaffe[onnx]'"
                             ' (%s)' % e) from e
    net = build_net(args.model, args.phase, args.level, split_stages(args.stage), args.weights)
    outputs = split_stages(args.blob) or None
    model = mo.export(net, args.output, opset=args.opset, outputs=outputs,
                      dynamic_batch=not args.fixed_batch)

    def describe(values):
        return ', '.join('%s %s' % (v.name, tuple(d.dim_param or d.dim_value
                                                  for d in v.type.tensor_type.shape.dim))
                         for v in values)

    out('wrote %s (opset %d, %d nodes)' % (args.output, args.opset, len(model.graph.node)))
    out('  inputs:  %s' % describe(model.graph.input))
    out('  outputs: %s' % describe(model.graph.output))
    if not mo.has_dynamic_batch(model) and not args.fixed_batch:
        for line in model.doc_string.splitlines()[1:]:
            out('  ' + line)
    return 0
