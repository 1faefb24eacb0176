"""`minicaffe train` / `solve` and `minicaffe test`: Caffe's command-line tool.

train: build the solver, optionally resume (``--snapshot F`` or ``auto``) or
start from ``--weights a.caffemodel,b.caffemodel``, train, and honour SIGINT /
SIGHUP as Caffe does (stop | snapshot | none; SIGINT finishes the current
iteration, snapshots and exits 0 by default).  Log lines are Caffe's, so
Caffe's tools/extra/parse_log.py reads them; a metrics JSONL file is written
beside the snapshots and a progress bar is drawn when stderr is a terminal.
"""
import json
import logging
import os
import signal
import sys
import time

import numpy as np

from .errors import MinicaffeError
from .solvers import Solver, SolverAction
from .solvers.snapshot import newest

log = logging.getLogger('minicaffe')


def add_train_arguments(p):
    p.add_argument('--solver', required=True, help='solver .prototxt')
    p.add_argument('--snapshot', help='resume from this .solverstate[.h5], or "auto" for the newest under the prefix')
    p.add_argument('--weights', help='comma-separated .caffemodel files to start from (not with --snapshot)')
    p.add_argument('--stage', action='append', default=[], help='net stage (repeatable)')
    p.add_argument('--level', type=int, default=None)
    p.add_argument('--sigint_effect', choices=['stop', 'snapshot', 'none'], default='stop')
    p.add_argument('--sighup_effect', choices=['stop', 'snapshot', 'none'], default='snapshot')
    p.add_argument('--gpu', default=None, help='GPU id(s); CPU when omitted')
    p.add_argument('--no-progress', action='store_true', help='plain log lines even on a terminal')


def add_test_arguments(p):
    p.add_argument('--model', required=True, help='net .prototxt')
    p.add_argument('--weights', required=True, help='.caffemodel or .h5 weights')
    p.add_argument('--iterations', type=int, default=50)
    p.add_argument('--phase', choices=['TRAIN', 'TEST'], default='TEST')
    p.add_argument('--stage', action='append', default=[])
    p.add_argument('--level', type=int, default=0)
    p.add_argument('--gpu', default=None)


class SignalActions(object):
    """Turns SIGINT/SIGHUP into solver actions checked after each update."""

    def __init__(self, sigint_effect, sighup_effect):
        self.effects = {signal.SIGINT: sigint_effect}
        if hasattr(signal, 'SIGHUP'):
            self.effects[signal.SIGHUP] = sighup_effect
        self.pending = []
        self.previous = {}

    def __enter__(self):
        for sig in self.effects:
            self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, prev in self.previous.items():
            signal.signal(sig, prev)

    def _handle(self, signum, frame):
        self.pending.append(self.effects[signum])

    def __call__(self):
        while self.pending:
            effect = self.pending.pop(0)
            if effect == 'stop':
                return SolverAction.STOP
            if effect == 'snapshot':
                return SolverAction.SNAPSHOT
        return SolverAction.NONE


class MetricsWriter(object):
    """One JSON object per line: {"iter", "lr", "loss", "smoothed_loss", outputs...}."""

    def __init__(self, path):
        self.path = path
        d = os.path.dirname(path)
        if d:
            os.makedirs(d, exist_ok=True)
        self.f = open(path, 'a', buffering=1)

    def train(self, it, lr, loss, smoothed, outputs):
        rec = {'phase': 'train', 'iter': it, 'lr': lr, 'loss': loss, 'smoothed_loss': smoothed}
        rec.update(outputs or {})
        self.f.write(json.dumps(rec) + '\n')

    def test(self, it, net_id, values):
        rec = {'phase': 'test', 'iter': it, 'test_net': net_id}
        rec.update(values)
        self.f.write(json.dumps(rec) + '\n')

    def close(self):
        self.f.close()


class ProgressBar(object):
    """A one-line bar on a terminal: iterations, loss, it/s, ETA."""

    def __init__(self, solver, stream=sys.stderr):
        self.solver, self.stream = solver, stream
        self.start_iter, self.t0 = solver.iter, time.time()

    def on_start(self):
        pass

    def on_gradients_ready(self):
        s = self.solver
        done = s.iter + 1 - self.start_iter
        total = max(1, s.param.max_iter - self.start_iter)
        rate = done / max(1e-9, time.time() - self.t0)
        eta = (s.param.max_iter - s.iter - 1) / rate if rate else 0
        width = 30
        filled = int(width * min(1.0, done / total))
        self.stream.write('\r[%s%s] %d/%d loss %.4g %.1f it/s ETA %ds ' % (
            '#' * filled, '.' * (width - filled), s.iter + 1, s.param.max_iter,
            s.smoothed_loss, rate, int(eta)))
        self.stream.flush()

    def close(self):
        self.stream.write('\n')


def run_train(args):
    if args.snapshot and args.weights:
        raise MinicaffeError('give either --snapshot (resume) or --weights (fine-tune), not both')
    if args.gpu is not None:
        from . import mode
        mode.set_mode_gpu()
    if not os.path.exists(args.solver):
        raise MinicaffeError('solver file %s does not exist' % args.solver)
    t0 = time.time()
    solver = Solver(args.solver, stages=args.stage, level=args.level)
    resume = args.snapshot
    if resume == 'auto':
        resume = newest(solver.param.snapshot_prefix)
        if resume:
            log.info('Resuming from the newest snapshot %s', resume)
        else:
            log.info('No snapshot under %s yet; starting from iteration 0', solver.param.snapshot_prefix)
    if args.weights:
        for w in args.weights.split(','):
            solver.net.copy_from(w)
    solver.metrics = MetricsWriter(solver.param.snapshot_prefix + '_metrics.jsonl')
    bar = None
    if sys.stderr.isatty() and not args.no_progress:
        bar = ProgressBar(solver)
        solver.add_callback(bar.on_start, bar.on_gradients_ready)
    with SignalActions(args.sigint_effect, args.sighup_effect) as actions:
        solver.action_request = actions
        try:
            solver.solve(resume)
        finally:
            if bar:
                bar.close()
            solver.metrics.close()
    log.info('Wall time: %.1f s', time.time() - t0)
    return 0


def run_test(args):
    from .net import Net, TRAIN, TEST
    if args.gpu is not None:
        from . import mode
        mode.set_mode_gpu()
    phase = TRAIN if args.phase == 'TRAIN' else TEST
    net = Net(args.model, phase, level=args.level, stages=args.stage, weights=args.weights)
    log.info('Running for %d iterations.', args.iterations)
    scores = {}
    total_loss = 0.0
    weights = net.blob_loss_weights
    for i in range(args.iterations):
        loss = net.forward_all_loss()
        total_loss += loss
        idx = 0
        for name in net.outputs:
            for v in np.asarray(net.blobs[name].data, np.float64).ravel():
                scores.setdefault((idx, name), 0.0)
                scores[(idx, name)] += v
                log.info('Batch %d, %s = %g', i, name, v)
                idx += 1
    total_loss /= args.iterations
    log.info('Loss: %g', total_loss)
    for (idx, name), s in sorted(scores.items()):
        mean = s / args.iterations
        w = weights.get(name, 0.0)
        extra = ' (* %g = %g loss)' % (w, w * mean) if w else ''
        log.info('%s = %g%s', name, mean, extra)
    return 0
