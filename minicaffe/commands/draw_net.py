"""``minicaffe draw NET OUT`` -- pycaffe's python/draw_net.py over minicaffe.draw
(the drawing itself lives there, with pycaffe's names)."""
import os
import sys

from ..draw import get_dot_source, render
from ..protoio import pb, read_text


def add_arguments(p):
    p.add_argument('net', help='net .prototxt')
    p.add_argument('out', help='output picture: .png, .svg, .pdf (graphviz) or .dot')
    p.add_argument('--rankdir', default='LR', choices=['LR', 'RL', 'TB', 'BT'],
                   help='direction of the graph (default LR: left to right)')
    p.add_argument('--phase', default='ALL', choices=['TRAIN', 'TEST', 'ALL'],
                   help='draw the layers of one phase, or all of them (default ALL)')
    p.add_argument('--stage', action='append', default=[], help='net stage (repeatable; with --phase)')
    p.add_argument('--level', type=int, default=0, help='net level (with --phase)')
    p.add_argument('--display-lrm', '--display_lrm', action='store_true',
                   help='show the lr_mult of Convolution/Deconvolution/InnerProduct layers')


def run(args):
    net = read_text(args.net, pb.NetParameter)
    phase = None if args.phase == 'ALL' else args.phase
    ext = os.path.splitext(args.out)[1].lstrip('.').lower() or 'png'
    src = get_dot_source(net, args.rankdir, phase, args.stage, args.level, source=args.net,
                         display_lrm=args.display_lrm)
    data = render(src, ext)
    with open(args.out, 'wb') as f:
        f.write(data)
    print('Drawing net to %s' % args.out)
    return 0


def main(argv=None):
    """``python -m minicaffe.commands.draw_net`` (tools/draw_net.py) -- the same as ``minicaffe draw``."""
    from . import cli
    return cli.main(['draw'] + list(sys.argv[1:] if argv is None else argv))


if __name__ == '__main__':
    raise SystemExit(main())
