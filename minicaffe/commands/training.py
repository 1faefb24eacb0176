"""`minicaffe train` / `solve` and `minicaffe test`: Caffe's command-line tool.

train: build the solver, optionally resume (``--snapshot F`` or ``auto``) or
start from ``--weights a.caffemodel,b.caffemodel``, train, and honour SIGINT /
SIGHUP as Caffe does (stop | snapshot | none; SIGINT finishes the current
iteration, snapshots and exits 0 by default).  Log lines are Caffe's, so
Caffe's tools/extra/parse_log.py reads them; a metrics JSONL file is written
beside the snapshots and a progress bar is drawn when stderr is a terminal.
Every output path is checked before any net is built; ``--halt-on-nan`` stops
at the first non-finite loss (see Solver._nonfinite_loss) and exits 1.

Under ``mpiexec -n N`` (more than one rank) train runs data-parallel
(minicaffe.parallel): every rank builds the solver, rank 0's weights are
broadcast, gradients are averaged over the ranks; only rank 0 logs, tests,
writes metrics and snapshots; an error on any rank ends every rank.
"""
import errno
import json
import logging
import os
import signal
import sys
import time

import numpy as np

from ..errors import DataSourceError, MinicaffeError, NonFiniteLossError
from ..fileio import check_regular_file
from ..protoio import temp_path
from ..solvers import Solver, SolverAction
from ..solvers.snapshot import newest

log = logging.getLogger('minicaffe')


def add_train_arguments(p):
    p.add_argument('--solver', required=True, help='solver .prototxt')
    p.add_argument('--snapshot', help='resume from this .solverstate[.h5], or "auto" for the newest'
                                      ' snapshot under the solver\'s snapshot_prefix')
    p.add_argument('--weights', help='comma-separated .caffemodel[.h5] files to start from'
                                     ' (fine-tuning; not with --snapshot)')
    p.add_argument('--stage', action='append', default=[],
                   help='train net stage (repeatable, or comma-separated)')
    p.add_argument('--level', type=int, default=None, help='train net level')
    p.add_argument('--sigint_effect', '--sigint-effect', choices=['stop', 'snapshot', 'none'],
                   default='stop',
                   help='on SIGINT (Ctrl-C): stop = finish the current iteration, write the final'
                        ' snapshot (snapshot_after_train) and exit 0; snapshot = snapshot and go on;'
                        ' none = ignore (default stop, as Caffe)')
    p.add_argument('--sighup_effect', '--sighup-effect', choices=['stop', 'snapshot', 'none'],
                   default='snapshot', help='on SIGHUP (default snapshot, as Caffe)')
    p.add_argument('--gpu', default=None,
                   help='GPU id, or several ("0,1,2,3" or "all": one process per GPU, NCCL between'
                        ' them; under mpiexec each rank takes a GPU of its node); CPU when omitted')
    p.add_argument('--no-progress', action='store_true', help='plain log lines even on a terminal')
    p.add_argument('--metrics', default=None,
                   help='metrics JSONL file (default <snapshot_prefix>_metrics.jsonl; "none" to skip)')
    p.add_argument('--halt-on-nan', '--halt_on_nan', action='store_true',
                   help='stop at the first non-finite (NaN/inf) loss or gradient (checked every'
                        ' iteration): snapshot the last finite state (the weights before the update'
                        ' that would use it) and exit 1')


def add_test_arguments(p):
    p.add_argument('--model', required=True, help='net .prototxt')
    p.add_argument('--weights', required=True, help='.caffemodel or .h5 weights')
    p.add_argument('--iterations', type=int, default=50, help='batches to score')
    p.add_argument('--phase', choices=['TRAIN', 'TEST'], default='TEST', help='net phase')
    p.add_argument('--stage', action='append', default=[], help='net stage (repeatable)')
    p.add_argument('--level', type=int, default=0, help='net level')
    p.add_argument('--gpu', default=None, help='GPU id; CPU when omitted')


def parse_gpu_ids(flag):
    """The device ids a ``--gpu`` value names: an id, a comma-separated list or
    ``all`` (every visible device, as Caffe's ``-gpu all``)."""
    text = str(flag).strip()
    if text.lower() == 'all':
        from ..gpu.backend import require_cupy
        count = require_cupy().cuda.runtime.getDeviceCount()
        return list(range(count))
    try:
        ids = [int(x) for x in text.split(',') if x.strip()]
    except ValueError:
        ids = []
    if not ids or any(i < 0 for i in ids):
        raise MinicaffeError('--gpu: expected a device id, a comma-separated list of ids or'
                             ' "all", got "%s"' % flag)
    if len(set(ids)) != len(ids):
        raise MinicaffeError('--gpu %s: a device is named twice (one rank per GPU)' % flag)
    return ids


def use_gpu(flag):
    """GPU mode on the first device a ``--gpu`` value names (``test`` and
    ``time`` run on one device, as Caffe's do).  Returns the device id."""
    ids = parse_gpu_ids(flag)
    if len(ids) > 1:
        log.warning('--gpu %s: this command runs on one device; using GPU %d', flag, ids[0])
    from .. import mode
    mode.set_device(ids[0])
    mode.set_mode_gpu()
    log.info('Use GPU with device ID %d', ids[0])
    return ids[0]


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
    """The metrics file: one JSON object per line.

    Train lines: ``{"phase": "train", "iter", "lr", "loss", "smoothed_loss", <outputs>}``
    every iteration (the net's outputs on display iterations); test lines:
    ``{"phase": "test", "iter", "test_net", <outputs>}``.  A fresh run starts the
    file anew; a resumed run keeps the lines before the iteration it resumes at
    and appends (so an interrupted and resumed run reads as one run).

    Every line is strict JSON: a NaN or infinite value is written as null.  When
    a write fails (a full disk, an I/O error) one warning is logged, the file
    is no longer written and training goes on (the log still has the numbers).
    """

    def __init__(self, path, resume_iter=None):
        self.path = path
        try:
            d = os.path.dirname(path)
            if d:
                os.makedirs(d, exist_ok=True)
            kept = []
            if resume_iter is not None and os.path.exists(path):
                with open(path, 'r', encoding='utf-8') as f:
                    for line in f:
                        try:
                            rec = json.loads(line)
                        except ValueError:
                            continue            # a line cut short by a crash
                        if isinstance(rec, dict) and isinstance(rec.get('iter', resume_iter), int) \
                                and rec.get('iter', resume_iter) < resume_iter:
                            kept.append(rec)
            self.f = open(path, 'w', buffering=1, encoding='utf-8')
        except (OSError, UnicodeDecodeError) as e:
            raise MinicaffeError('metrics file %s: cannot write it: %s'
                                 % (path, getattr(e, 'strerror', None) or e)) from None
        for rec in kept:                    # older files may hold bare NaN: rewritten as null
            self._write({k: _finite_or_none(v) for k, v in rec.items()})

    @staticmethod
    def _clean(values):
        return {k: _f32(v) for k, v in (values or {}).items()}

    def _write(self, rec):
        if self.f is None:
            return
        try:
            self.f.write(json.dumps(rec, allow_nan=False) + '\n')
        except OSError as e:
            f, self.f = self.f, None
            try:
                f.close()
            except OSError:
                pass
            log.warning('metrics file %s: writing failed (%s); metrics are no longer written,'
                        ' training goes on', self.path, e.strerror or e)

    def train(self, it, lr, loss, smoothed, outputs):
        rec = {'phase': 'train', 'iter': int(it), 'lr': _f32(lr), 'loss': _f32(loss),
               'smoothed_loss': _f32(smoothed)}
        rec.update(self._clean(outputs))
        self._write(rec)

    def test(self, it, net_id, values):
        rec = {'phase': 'test', 'iter': int(it), 'test_net': int(net_id)}
        rec.update(self._clean(values))
        self._write(rec)

    def close(self):
        if self.f is not None:
            f, self.f = self.f, None
            try:
                f.close()
            except OSError as e:
                log.warning('metrics file %s: writing failed (%s)', self.path, e.strerror or e)


def _f32(x):
    """A float32 value as the shortest decimal that reads back to it (0.1, not
    0.10000000149); NaN/inf as None (JSON null: strict JSON has no NaN)."""
    v = np.float32(x)
    return float(str(v)) if np.isfinite(v) else None


def _finite_or_none(v):
    return None if isinstance(v, float) and not np.isfinite(v) else v


class ProgressBar(object):
    """A one-line bar on a terminal: iterations, loss, it/s, ETA.  Log lines
    clear the bar first (see :class:`_ClearBar`) and it is redrawn after.

    it/s and the ETA come from training iterations only, smoothed
    (:class:`~minicaffe.commands.progress.SmoothedRate`): the time of a test pass is not
    an iteration's, and the first ETA is the first iteration's forward+backward,
    not the iteration-0 test pass before it."""

    def __init__(self, solver, stream=None, clock=time.monotonic):
        from .progress import SmoothedRate
        self.solver, self.stream = solver, stream or sys.stderr
        self.start_iter = solver.iter
        self.rate = SmoothedRate(clock=clock)
        self.shown = False

    def on_start(self):
        s, p = self.solver, self.solver.param
        # Solver.step has just run the test nets when this holds (its own condition)
        tested = bool(p.test_interval and s.test_nets and s.iter % p.test_interval == 0
                      and (s.iter > 0 or p.test_initialization))
        self.rate.iteration_started(interrupted=tested)

    def line(self):
        s = self.solver
        done = s.iter + 1 - self.start_iter
        total = max(1, s.param.max_iter - self.start_iter)
        eta = self.rate.eta(s.param.max_iter - s.iter - 1)
        width = 30
        filled = int(width * min(1.0, done / total))
        return '[%s%s] %d/%d loss %.4g %.2f it/s ETA %s' % (
            '#' * filled, '.' * (width - filled), s.iter + 1, s.param.max_iter,
            s.smoothed_loss, self.rate.per_second(), '?' if eta is None else _hms(eta))

    def on_gradients_ready(self):
        self.rate.progress()
        self.stream.write('\r\x1b[K' + self.line())
        self.stream.flush()
        self.shown = True

    def clear(self):
        if self.shown:
            self.stream.write('\r\x1b[K')
            self.stream.flush()
            self.shown = False

    def close(self):
        if self.shown:
            self.stream.write('\n')
            self.stream.flush()
            self.shown = False


def _hms(seconds):
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    m, sec = divmod(rest, 60)
    return '%d:%02d:%02d' % (h, m, sec) if h else '%d:%02d' % (m, sec)


class _ClearBar(logging.Filter):
    """Erases the progress bar before a log line is written below it."""

    def __init__(self, bar):
        super(_ClearBar, self).__init__()
        self.bar = bar

    def filter(self, record):
        self.bar.clear()
        return True


def _read_param(args):
    """The solver file with Caffe's `caffe train` edits: --stage/--level into
    train_state, --weights replacing the file's `weights`, --snapshot clearing them."""
    from ..solvers import read_solver_param
    if not os.path.exists(args.solver):
        raise MinicaffeError('solver file %s does not exist' % args.solver)
    check_regular_file(args.solver, 'solver file')
    param = read_solver_param(args.solver)
    if args.level is not None:
        param.train_state.level = args.level
    for st in args.stage:
        param.train_state.stage.extend(x for x in st.split(',') if x)
    if args.snapshot:
        param.ClearField('weights')
    elif args.weights:
        files = [w.strip() for w in args.weights.split(',') if w.strip()]
        missing = [w for w in files if not os.path.exists(w)]
        if missing:
            raise MinicaffeError('--weights: %s does not exist' % ', '.join(missing))
        param.ClearField('weights')
        param.weights.append(','.join(files))
    return param


def run_train(args):
    if args.snapshot and args.weights:
        raise MinicaffeError('give either --snapshot (resume training) or --weights (fine-tune),'
                             ' not both')
    if args.snapshot and args.snapshot != 'auto' and not os.path.exists(args.snapshot):
        raise MinicaffeError('--snapshot: solver state %s does not exist' % args.snapshot)
    if args.gpu is not None:
        from ..parallel import gpu_ranks
        gpus = parse_gpu_ids(args.gpu)
        if gpu_ranks.should_spawn(args, gpus):
            _read_param(args)       # a missing solver or weights file: one error, before any rank
            from .runner import run_reporting_errors
            return gpu_ranks.spawn_gpu_ranks(args, gpus, run_reporting_errors)
        comm = gpu_ranks.join_gpu_ranks(args, gpus)     # NCCL in a rank of a multi-GPU job
        if comm is not None:
            return _train_ranks(args, comm)
    from ..parallel.launch import communicator_from_environment
    comm = communicator_from_environment()      # under mpiexec with several ranks
    if comm is None:
        return _train(args, None)
    return _train_ranks(args, comm)


def _train_ranks(args, comm):
    """One rank of a data-parallel job: an error on one rank ends every rank
    (MPI's abort), naming the rank; ranks that all see the same disagreement
    exit 2 together."""
    from ..parallel.data_parallel import RanksDisagree
    try:
        return _train(args, comm)
    except RanksDisagree as e:
        if not e.quiet:
            print('minicaffe: error: rank %d: %s' % (comm.rank, e), file=sys.stderr)
            sys.stderr.flush()
        return 2
    except MinicaffeError as e:
        comm.abort(str(e), 2)
    except KeyboardInterrupt:
        comm.abort('interrupted', 130)
    except Exception as e:
        import traceback
        traceback.print_exc()
        comm.abort('%s: %s' % (type(e).__name__, e), 1)


def _train(args, comm):
    t0 = time.time()
    if comm is not None:
        from ..parallel.launch import join
        join(comm)
    if comm is not None and comm.device_buffers:
        pass                        # a GPU rank: gpu_ranks.join_gpu_ranks took its device
    elif args.gpu is not None:
        use_gpu(args.gpu)
    else:
        log.info('Use CPU.')
    root = comm is None or comm.rank == 0
    param = _read_param(args)
    metrics_path = None
    if (args.metrics or '').lower() != 'none':
        metrics_path = args.metrics or param.snapshot_prefix + '_metrics.jsonl'
    if root:                                    # only rank 0 writes files
        _check_output_paths(param, args.solver, metrics_path)
    try:
        solver = Solver(param, source=args.solver)
    except DataSourceError as e:
        hint = ''
        if 'data/mnist' in str(e):
            hint = ' (prepare MNIST first: minicaffe data mnist)'
        raise DataSourceError('%s%s' % (e, hint)) from None
    resume = args.snapshot
    if resume == 'auto':
        resume = newest(solver.param.snapshot_prefix)
        if resume:
            log.info('--snapshot auto: the newest snapshot is %s', resume)
        else:
            log.info('--snapshot auto: no snapshot under %s yet; starting from iteration 0',
                     solver.param.snapshot_prefix)
    if resume:
        log.info('Resuming from %s', resume)
        solver.restore(resume)
    dp = None
    if comm is not None:
        from ..parallel.launch import start
        dp = start(solver, comm)
    metrics = None
    if metrics_path is not None and root:
        metrics = MetricsWriter(metrics_path, resume_iter=solver.iter if resume else None)
        log.info('Writing metrics to %s', metrics_path)
    solver.metrics = metrics
    solver.halt_on_nonfinite = args.halt_on_nan
    bar = clear = None
    if not args.no_progress and _is_tty(sys.stderr) and root:
        bar = ProgressBar(solver, sys.stderr)
        solver.add_callback(bar.on_start, bar.on_gradients_ready)
        clear = _ClearBar(bar)
        handlers = _handlers()
        for h in handlers:
            h.addFilter(clear)
    with SignalActions(args.sigint_effect, args.sighup_effect) as actions:
        solver.action_request = dp.agree_action(actions) if dp else actions
        try:
            log.info('Starting Optimization')
            solver.solve()
        except NonFiniteLossError as e:
            if comm is not None:
                raise               # every rank stops (_train_ranks aborts the job)
            print('minicaffe: error: %s' % e, file=sys.stderr)
            return 1
        finally:
            if bar:
                for h in handlers:
                    h.removeFilter(clear)
                bar.close()
            if metrics:
                metrics.close()
    if dp is not None:
        _finish_ranks(dp)
    log.info('Optimization Done.')
    log.info('Wall time: %.1f s (%d iterations)', time.time() - t0, solver.iter)
    return 0


def _finish_ranks(dp):
    """All ranks end together (rank 0 may still be testing or snapshotting);
    rank 0 logs the communication counters."""
    from ..parallel.data_parallel import untimed
    with untimed(dp.comm):
        dp.comm.barrier()
    c = dp.summary()
    log.info('Communication: %.2f s in all-reduce, the solver waited %.2f s for gradients'
             ' (%d iterations, %.3f MB reduced per iteration, %d bucket(s))',
             c['comm_seconds'], c['wait_seconds'], c['iterations'],
             c['bytes_per_iteration'] / 1e6, c['buckets'])


def _check_output_paths(param, source, metrics_path):
    """Every file training will write, checked before any net is built (as
    Caffe checks the snapshot prefix): the snapshot prefix also when only the
    final snapshot (snapshot_after_train) will use it, and the metrics file.
    A clear error now instead of an OSError at the first write."""
    from ..solvers.snapshot import check_prefix_writable
    if param.snapshot_prefix and (param.snapshot or param.snapshot_after_train):
        check_prefix_writable(param.snapshot_prefix, source)
    if metrics_path is None:
        return
    folder = os.path.dirname(metrics_path) or '.'
    try:
        if os.path.isdir(metrics_path):
            raise IsADirectoryError(errno.EISDIR, 'it is a folder')
        if os.path.exists(metrics_path):
            with open(metrics_path, 'a'):     # append mode: the file is not changed
                pass
        else:
            os.makedirs(folder, exist_ok=True)
            probe = temp_path(metrics_path)
            with open(probe, 'wb'):
                pass
            os.remove(probe)
    except OSError as e:
        raise MinicaffeError('%s: cannot write the metrics file %s (%s); give a writable --metrics'
                             ' PATH, or --metrics none' % (source, metrics_path, e.strerror or e)) from None


def _handlers():
    """The handlers that write the ``minicaffe`` logger's records."""
    out, lg = [], log
    while lg is not None:
        out.extend(lg.handlers)
        if not lg.propagate:
            break
        lg = lg.parent
    return out


def _is_tty(stream):
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def run_test(args):
    from ..net import Net, TRAIN, TEST
    if args.gpu is not None:
        use_gpu(args.gpu)
    if args.iterations < 1:
        raise MinicaffeError('--iterations must be at least 1 (got %d)' % args.iterations)
    phase = TRAIN if args.phase == 'TRAIN' else TEST
    net = Net(args.model, phase, level=args.level, stages=args.stage, weights=args.weights)
    log.info('Running for %d iterations.', args.iterations)
    # Caffe's `caffe test`: scores summed in float32, per output element
    scores = []
    total_loss = np.float32(0)
    weights = net.blob_loss_weights
    for i in range(args.iterations):
        loss = net.forward_all_loss()
        total_loss = np.float32(total_loss + np.float32(loss))
        idx = 0
        for name in net.outputs:
            for v in np.asarray(net.blobs[name].data, np.float32).ravel():
                if i == 0:
                    scores.append([name, v])
                else:
                    scores[idx][1] = np.float32(scores[idx][1] + v)
                log.info('Batch %d, %s = %g', i, name, v)
                idx += 1
    total_loss = total_loss / np.float32(max(1, args.iterations))
    # The final scores are the command's report: Caffe's log lines, and the same
    # text on stdout (shown with -q too, and what a script reads).
    report = ['Loss: %g' % total_loss]
    for name, s in scores:
        mean = s / np.float32(args.iterations)
        w = np.float32(weights.get(name, 0.0))
        extra = ' (* %g = %g loss)' % (w, w * mean) if w else ''
        report.append('%s = %g%s' % (name, mean, extra))
    for line in report:
        log.info('%s', line)
    for line in report:
        print(line)
    return 0
