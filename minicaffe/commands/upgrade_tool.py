"""`minicaffe upgrade IN OUT`: write a legacy net or solver in the current format.

Caffe's upgrade_net_proto_text, upgrade_net_proto_binary and
upgrade_solver_proto_text in one command.  IN may be a text prototxt (net or
solver: whichever schema it parses as) or a binary NetParameter (a
.caffemodel); OUT is written in the same form (text stays text, binary stays
binary).  The rules are minicaffe.upgrade's (Caffe's UpgradeNetAsNeeded: V0
and V1 ``layers``, padding layers, data-layer transform fields, legacy
``input``/``input_dim`` fields, BatchNorm param specs; UpgradeSolverAsNeeded:
the ``solver_type`` enum).
"""
import logging
import os

from .. import fileio
from ..errors import MinicaffeError, PrototxtError
from ..protoio import caffe_text, parse_text, pb, read_binary, write_binary_atomic, write_bytes_atomic

log = logging.getLogger('minicaffe')


def _is_text(raw):
    if b'\0' in raw[:4096]:
        return False
    try:
        raw.decode('utf-8')
    except UnicodeDecodeError:
        return False
    return True


def upgrade_net_param(param, source='<net>'):
    """Every net upgrade Caffe's UpgradeNetAsNeeded applies, in place."""
    from .. import netbuild, upgrade
    netbuild.upgrade_net(param, source)          # V0/V1 layers (minicaffe.upgrade) and input fields
    if hasattr(upgrade, 'upgrade_batchnorm'):
        upgrade.upgrade_batchnorm(param)
    return param


def upgrade_solver_param(param, source='<solver>'):
    from .. import upgrade
    upgrade.upgrade_solver(param, source)
    return param


def upgrade_file(in_path, out_path):
    """Upgrade ``in_path`` into ``out_path``; returns (kind, changed): kind 'net',
    'solver' or 'binary net'; changed False when the file was already in the latest
    format (as Caffe's tools, OUT is still written then -- an unchanged copy -- unless
    OUT is IN itself, which is left as it is)."""
    in_path, out_path = os.fspath(in_path), os.fspath(out_path)
    raw = fileio.read_bytes(in_path, 'input file', MinicaffeError)
    if not _is_text(raw):
        param = read_binary(in_path, pb.NetParameter, 'binary net (caffemodel)')
        before = param.SerializeToString()
        upgrade_net_param(param, in_path)
        changed = param.SerializeToString() != before
        if changed or not _same_file(in_path, out_path):
            write_binary_atomic(out_path, param)
        return 'binary net', changed
    text = raw.decode('utf-8')
    try:
        param = parse_text(text, pb.NetParameter(), in_path)
        kind = 'net'
    except PrototxtError as net_error:
        try:
            param = parse_text(text, pb.SolverParameter(), in_path)
            kind = 'solver'
        except PrototxtError:
            raise net_error from None
    before = param.SerializeToString()
    if kind == 'net':
        upgrade_net_param(param, in_path)
    else:
        upgrade_solver_param(param, in_path)
        if param.HasField('net_param'):
            upgrade_net_param(param.net_param, in_path + ' (net_param)')
        for field in ('train_net_param', ):
            if param.HasField(field):
                upgrade_net_param(getattr(param, field), '%s (%s)' % (in_path, field))
        for i, tp in enumerate(param.test_net_param):
            upgrade_net_param(tp, '%s (test_net_param %d)' % (in_path, i))
    changed = param.SerializeToString() != before
    if changed or not _same_file(in_path, out_path):
        write_bytes_atomic(out_path, caffe_text(param).encode('utf-8'))
    return kind, changed


def _same_file(a, b):
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def add_arguments(p):
    p.add_argument('input', help='legacy net/solver prototxt, or binary net (.caffemodel)')
    p.add_argument('output', help='where to write the upgraded file (same format as the input)')


def run(args):
    kind, changed = upgrade_file(args.input, args.output)
    if changed:
        print('Wrote upgraded %s to %s' % (kind, args.output))
    elif _same_file(args.input, args.output):
        print('File already in latest proto format: %s (left unchanged)' % args.input)
    else:
        print('File already in latest proto format: %s; wrote it unchanged to %s' % (args.input, args.output))
    return 0


def main(argv=None):
    """``python -m minicaffe.commands.upgrade_tool`` -- the same as ``minicaffe upgrade``."""
    import sys
    from . import cli
    return cli.main(['upgrade'] + list(sys.argv[1:] if argv is None else argv))


if __name__ == '__main__':
    raise SystemExit(main())
