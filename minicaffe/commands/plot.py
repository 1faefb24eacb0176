"""``minicaffe plot METRICS_OR_LOG -o curves.png``: loss and accuracy curves.

Reads either the metrics JSONL that ``minicaffe train`` writes beside the
snapshots (``<snapshot_prefix>_metrics.jsonl``) or a training log in Caffe's
format (ours or Caffe's own: the lines Caffe's ``tools/extra/parse_log.py``
reads), and draws

- left: the training loss (per iteration and as displayed, smoothed over
  ``average_loss``) and every test output whose name contains "loss";
- right: the other test outputs (accuracy, ...), one curve per test net;
- the learning rate on a second axis of the left plot.

matplotlib is an optional extra: ``pip install 'minicaffe[plot]'``.
"""
import json
import os
import re

from ..errors import MinicaffeError

INSTALL_HINT = ("minicaffe plot needs matplotlib, an optional extra: pip install 'minicaffe[plot]'"
                " (or pip install matplotlib)")

# The patterns of Caffe's tools/extra/parse_log.py, plus the display line's loss.
RE_ITERATION = re.compile(r'Iteration (\d+)')
RE_TRAIN_OUTPUT = re.compile(r'Train net output #(\d+): (\S+) = ([\.\deE+-]+)')
RE_TEST_OUTPUT = re.compile(r'Test net output #(\d+): (\S+) = ([\.\deE+-]+)')
RE_LR = re.compile(r'lr = ([-+]?[0-9]*\.?[0-9]+([eE]?[-+]?[0-9]+)?)')
RE_DISPLAY_LOSS = re.compile(r'Iteration (\d+)(?: \([^)]*\))?, loss = ([-+\.\deEinfa]+)')
RE_TESTING = re.compile(r'Iteration (\d+), Testing net \(#(\d+)\)')


class Curves(object):
    """Series as {name: ([x...], [y...])} for train, test and lr."""

    def __init__(self):
        self.train = {}
        self.test = {}
        self.lr = ([], [])

    @staticmethod
    def _add(table, name, x, y):
        xs, ys = table.setdefault(name, ([], []))
        xs.append(x)
        ys.append(y)

    def empty(self):
        return not self.train and not self.test


def _number(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def read_metrics(path):
    c = Curves()
    with open(path, 'r', encoding='utf-8') as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                raise MinicaffeError('%s:%d: not a JSON line' % (path, n)) from None
            it = rec.get('iter')
            if it is None:
                continue
            if rec.get('phase') == 'test':
                net = rec.get('test_net', 0)
                for k, v in rec.items():
                    if k in ('phase', 'iter', 'test_net') or _number(v) is None:
                        continue
                    c._add(c.test, '%s (test net #%d)' % (k, net) if net else k, it, _number(v))
            else:
                if _number(rec.get('loss')) is not None:
                    c._add(c.train, 'train loss', it, _number(rec['loss']))
                if _number(rec.get('smoothed_loss')) is not None:
                    c._add(c.train, 'train loss (displayed)', it, _number(rec['smoothed_loss']))
                if _number(rec.get('lr')) is not None:
                    c.lr[0].append(it)
                    c.lr[1].append(_number(rec['lr']))
    return c


def read_log(path):
    """A Caffe-format training log: display lines, lr lines, test outputs."""
    c = Curves()
    iteration = None
    test_net = 0
    with open(path, 'r', encoding='utf-8', errors='replace') as f:
        for line in f:
            m = RE_ITERATION.search(line)
            if m:
                iteration = int(m.group(1))
            if iteration is None:
                continue
            m = RE_TESTING.search(line)
            if m:
                test_net = int(m.group(2))
            m = RE_DISPLAY_LOSS.search(line)
            if m and 'Testing' not in line:
                v = _number(m.group(2))
                if v is not None:
                    c._add(c.train, 'train loss (displayed)', int(m.group(1)), v)
                continue
            m = RE_LR.search(line)
            if m:
                c.lr[0].append(iteration)
                c.lr[1].append(float(m.group(1)))
                continue
            m = RE_TEST_OUTPUT.search(line)
            if m:
                name = m.group(2)
                key = '%s (test net #%d)' % (name, test_net) if test_net else name
                v = _number(m.group(3))
                if v is not None:
                    c._add(c.test, key, iteration, v)
    return c


def read_curves(path):
    if not os.path.isfile(path):
        raise MinicaffeError('%s does not exist' % path)
    with open(path, 'r', encoding='utf-8', errors='replace') as f:
        first = ''
        for line in f:
            if line.strip():
                first = line.strip()
                break
    curves = read_metrics(path) if first.startswith('{') else read_log(path)
    if curves.empty():
        raise MinicaffeError('%s: no training or test values found (expected a metrics .jsonl written'
                             ' by minicaffe train, or a training log with Caffe\'s "Iteration N ...,'
                             ' loss = L" and "Test net output #k: name = v" lines)' % path)
    return curves


def _pyplot():
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        raise MinicaffeError(INSTALL_HINT) from None
    return plt


def plot(curves, output, title=None):
    plt = _pyplot()
    losses = dict(curves.train)
    raw = losses.get('train loss')
    if raw is not None:
        shown = losses.get('train loss (displayed)')
        if shown is not None and shown[1] == raw[1]:
            del losses['train loss (displayed)']        # average_loss 1: the same curve
        if len(raw[1]) > 100:
            # a moving mean, so the trend shows through per-batch noise
            import numpy as np
            w = max(10, len(raw[1]) // 50)
            ys = np.convolve(np.asarray(raw[1], np.float64), np.ones(w) / w, mode='valid')
            losses['train loss (mean of %d)' % w] = (list(raw[0][w - 1:]), list(ys))
    losses.update({('test ' + k): v for k, v in curves.test.items() if 'loss' in k})
    others = {k: v for k, v in curves.test.items() if 'loss' not in k}
    ncols = 2 if others else 1
    fig, axes = plt.subplots(1, ncols, figsize=(6.5 * ncols, 4.5), squeeze=False)
    ax = axes[0][0]
    for name, (xs, ys) in sorted(losses.items()):
        style = {'alpha': 0.35, 'linewidth': 0.8} if name == 'train loss' else {'linewidth': 1.5}
        marker = 'o' if name.startswith('test') else None
        ax.plot(xs, ys, label=name, marker=marker, markersize=3, **style)
    ax.set_xlabel('iteration')
    ax.set_ylabel('loss')
    if losses and all(y > 0 for _, ys in losses.values() for y in ys):
        ax.set_yscale('log')
    ax.grid(True, alpha=0.3)
    if curves.lr[0]:
        ax2 = ax.twinx()
        ax2.plot(curves.lr[0], curves.lr[1], color='gray', linestyle=':', linewidth=1, label='lr')
        ax2.set_ylabel('learning rate')
        lines, labels = ax.get_legend_handles_labels()
        l2, lab2 = ax2.get_legend_handles_labels()
        ax.legend(lines + l2, labels + lab2, loc='upper right', fontsize=8)
    elif losses:
        ax.legend(loc='upper right', fontsize=8)
    ax.set_title('loss')
    if others:
        ax = axes[0][1]
        for name, (xs, ys) in sorted(others.items()):
            ax.plot(xs, ys, label=name, marker='o', markersize=3)
            if ys:
                ax.annotate('%g' % ys[-1], (xs[-1], ys[-1]), textcoords='offset points',
                            xytext=(0, 6), ha='right', fontsize=8)
        ax.set_xlabel('iteration')
        ax.set_title('test outputs')
        ax.grid(True, alpha=0.3)
        ax.legend(loc='lower right', fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    d = os.path.dirname(os.fspath(output))
    if d:
        os.makedirs(d, exist_ok=True)
    fig.savefig(output, dpi=100)
    plt.close(fig)
    return output


def add_arguments(p):
    p.add_argument('input', help='metrics .jsonl written by minicaffe train, or a training log'
                                 ' (ours or Caffe\'s)')
    p.add_argument('-o', '--output', default='curves.png',
                   help='image to write (.png, .pdf, .svg; default curves.png)')
    p.add_argument('--title', default=None, help='figure title (default: the input file name)')


def run(args):
    curves = read_curves(args.input)
    plot(curves, args.output, args.title or os.path.basename(args.input))
    print('Wrote %s' % args.output)
    return 0
