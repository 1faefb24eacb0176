"""Caffe's Solver: training loop, testing, snapshots and restore.

One class serves all six solver types; the type only selects the update rule
(see updates.py) and how many history blobs each parameter keeps.  The step
order is Caffe's (solver.cpp / sgd_solver.cpp):

    clear diffs → test (iter % test_interval == 0, and iter > 0 or
    test_initialization) → iter_size × forward+backward → smoothed loss and
    display → lr for this iter → clip (global L2 norm) → per param:
    diff /= iter_size, weight decay (L2 or L1), update rule → w -= diff →
    iter += 1 → snapshot (every `snapshot` iters, or on request)

In GPU mode (minicaffe.mode) the update runs on the device: clipping,
regularization, the update rule and w -= Δ use the params' ``gpu_diff`` /
``gpu_data`` and the history is a list of CuPy arrays; in CPU mode the same
code runs on NumPy arrays.  The history follows the mode: it moves to the
device (or back) at the next update after a mode switch, snapshots copy it to
the host and a restore in GPU mode puts it on the device.
"""
import logging
import os
import time

import numpy as np

from .. import mode as _mode
from .. import protoio
from ..errors import MinicaffeError, NonFiniteLossError
from ..net import Net, TRAIN, TEST
from ..parallel import state as _parallel
from ..protoio import pb
from ..threads import parallel_for
from . import lr_policy, nonfinite, snapshot as snap
from .updates import RULES, array_module

log = logging.getLogger('minicaffe')

# The host update works on pieces of this many elements of each array (w, diff,
# one or two histories and a rule's temporaries: <= 1 MB for 1 << 15 floats, so
# they stay in a core's L2 cache between the steps).
HOST_UPDATE_BLOCK = 1 << 15

# Legacy SolverParameter.solver_type enum -> type string.
LEGACY_TYPES = {0: 'SGD', 1: 'Nesterov', 2: 'AdaGrad', 3: 'RMSProp', 4: 'AdaDelta', 5: 'Adam'}


class SolverAction(object):
    NONE, STOP, SNAPSHOT = 'none', 'stop', 'snapshot'


def read_solver_param(path):
    param = protoio.read_text(path, pb.SolverParameter)
    upgrade_solver_param(param, path)
    return param


def upgrade_solver_param(param, path=None):
    """Legacy solver_type enum -> type; Caffe's snapshot_prefix defaults."""
    if param.HasField('solver_type'):
        if param.HasField('type'):
            raise MinicaffeError('%s: both the old solver_type field (enum) and the new type field'
                                 ' (string) are given; keep only type' % (path or 'solver'))
        param.type = LEGACY_TYPES[param.solver_type]
        param.ClearField('solver_type')
    if path is not None:
        # Caffe's UpgradeSnapshotPrefixProperty: no prefix -> the solver file's
        # path without its extension; a prefix naming an existing folder ->
        # <folder>/<solver file stem>.
        if not param.HasField('snapshot_prefix'):
            param.snapshot_prefix = os.path.splitext(os.fspath(path))[0]
            log.info('snapshot_prefix was not specified and is set to %s', param.snapshot_prefix)
        elif os.path.isdir(param.snapshot_prefix):
            stem = os.path.splitext(os.path.basename(os.fspath(path)))[0]
            param.snapshot_prefix = os.path.join(param.snapshot_prefix, stem)
            log.info('snapshot_prefix was a directory and is replaced to %s', param.snapshot_prefix)
    return param


class Solver(object):
    """pycaffe-compatible solver: ``net``, ``test_nets``, ``iter``, ``step``,
    ``solve``, ``restore``, ``snapshot``, ``add_callback``."""

    def __init__(self, param_or_path, stages=None, level=None, logger=None, source=None):
        """``param_or_path``: a solver .prototxt path or a SolverParameter
        (``source`` then names its file, for messages and relative net paths).
        ``stages``/``level`` (a minicaffe extension) go into every net's state,
        train and test, after train_state/test_state.  (``minicaffe train
        --stage/--level`` edits train_state only, as Caffe's tool does.)"""
        if isinstance(param_or_path, pb.SolverParameter):
            self.param = pb.SolverParameter()
            self.param.CopyFrom(param_or_path)
            self.source = os.fspath(source) if source is not None else '<solver>'
            upgrade_solver_param(self.param)
        else:
            self.source = os.fspath(param_or_path)
            self.param = read_solver_param(self.source)
        log.info('Initializing solver from parameters: \n%s', protoio.DebugString(self.param))
        self.type = self.param.type or 'SGD'
        if self.type not in RULES:
            raise MinicaffeError('%s: unknown solver type "%s" (known: %s)'
                                 % (self.source, self.type, ', '.join(RULES)))
        if self.type in ('AdaGrad', 'RMSProp') and self.param.momentum != 0:
            raise MinicaffeError('%s: momentum cannot be used with %s (got momentum: %g)'
                                 % (self.source, self.type, self.param.momentum))
        if self.type == 'RMSProp' and not 0 <= self.param.rms_decay < 1:
            raise MinicaffeError('%s: rms_decay should lie between 0 and 1 (got %g)'
                                 % (self.source, self.param.rms_decay))
        lr_policy.check_parameters(self.param, self.source)
        if self.param.average_loss < 1:
            raise MinicaffeError('%s: average_loss must be at least 1 (got %d)'
                                 % (self.source, self.param.average_loss))
        if self.param.iter_size < 1:
            raise MinicaffeError('%s: iter_size must be at least 1 (got %d)'
                                 % (self.source, self.param.iter_size))
        if self.param.lr_policy and self.param.lr_policy not in lr_policy.POLICIES:
            raise MinicaffeError('%s: unknown lr_policy "%s" (known: %s)'
                                 % (self.source, self.param.lr_policy, ', '.join(lr_policy.POLICIES)))
        if self.param.regularization_type not in ('L1', 'L2'):
            raise MinicaffeError('%s: unknown regularization_type "%s" (L1 or L2)'
                                 % (self.source, self.param.regularization_type))
        self._extra_stages = list(stages or [])
        self._level = level
        self._log = logger          # None: the 'minicaffe' logger
        self.iter = 0
        self.current_step = 0
        self.callbacks = []
        self.action_request = None          # callable returning a SolverAction
        # Whether tests poll action_request between test iterations (data-parallel
        # training agrees on actions once per iteration instead: only rank 0 tests).
        self.actions_in_test = True
        self.requested_early_exit = False
        self._losses = []
        self.smoothed_loss = 0.0
        if self.param.random_seed >= 0:
            from ..rng import set_random_seed
            set_random_seed(self.param.random_seed)
        self._check_snapshot_prefix()
        self._init_train_net()
        self._init_test_nets()
        log.info('Solver scaffolding done.')
        self.n_params = len(self.net.learnable_params)
        self.update_rule, sets = RULES[self.type]
        self.history = _zero_history(self.net, sets)
        self.metrics = None
        # Beyond Caffe: at the first NaN/inf loss, one warning naming where the
        # values went bad; with halt_on_nonfinite (train --halt-on-nan) training
        # stops there, after a snapshot of the last finite state.
        self.halt_on_nonfinite = False
        self._warned_nonfinite = False

    def log(self, msg):
        # Caffe's LOG_IF(INFO, Caffe::root_solver()): one rank speaks for all.
        if not _parallel.root_solver():
            return
        if self._log is None:
            log.info(msg, stacklevel=2)     # tagged with the caller's file:line, as glog would
        else:
            self._log(msg)

    def _check_snapshot_prefix(self):
        """Caffe's CheckSnapshotWritePermissions, before any net is built: with
        ``snapshot`` set, a prefix must be given and its folder writable (we
        create a missing folder; Caffe insists that it exists)."""
        p = self.param
        if not _parallel.root_solver():      # only rank 0 writes snapshots
            return
        if p.snapshot_prefix:
            snap.remove_stale_temp_files(p.snapshot_prefix, self.log)
        if not p.snapshot:
            return
        if not p.snapshot_prefix:
            raise MinicaffeError('%s: snapshot is set (every %d iterations) but snapshot_prefix is not'
                                 % (self.source, p.snapshot))
        snap.check_prefix_writable(p.snapshot_prefix, self.source)

    # ------------------------------------------------------------ nets
    def _resolve(self, path):
        """Net files: as Caffe, relative to the working directory; failing
        that, relative to the solver file's folder."""
        if os.path.exists(path) or self.source.startswith('<'):
            return path
        alt = os.path.join(os.path.dirname(self.source), path)
        return alt if os.path.exists(alt) else path

    def _net_from(self, net_param, phase, extra_state, source):
        # Caffe: state = phase, then the net's own state, then train_state/test_state.
        state = pb.NetState(phase=phase)
        state.MergeFrom(net_param.state)
        if extra_state is not None:
            state.MergeFrom(extra_state)
        if self._level is not None:
            state.level = self._level
        state.stage.extend(self._extra_stages)
        net_param.state.CopyFrom(state)
        try:
            return Net(net_param=net_param, phase=state.phase, level=state.level, source=source,
                       stages=None)
        except MinicaffeError as e:
            if self.source in str(e):
                raise
            # the net's message names the net file; name the solver that led to it too
            raise type(e)('%s: building its %s net: %s' % (
                self.source, 'train' if phase == TRAIN else 'test', e)) from None

    def _read_net_file(self, path):
        from ..net import read_net_param
        path = self._resolve(path)
        if not os.path.exists(path):
            raise MinicaffeError('%s: net file "%s" does not exist' % (self.source, path))
        try:
            return read_net_param(path), path
        except MinicaffeError as e:
            # name the solver too: the net file may be the wrong one
            raise type(e)('%s: reading its net file "%s": %s' % (self.source, path, e)) from None

    def _init_train_net(self):
        p = self.param
        given = [f for f in ('net', 'net_param', 'train_net', 'train_net_param') if p.HasField(f)]
        if len(given) != 1:
            raise MinicaffeError('%s: give exactly one of net, net_param, train_net, train_net_param'
                                 ' (found %s)' % (self.source, ', '.join(given) or 'none'))
        field = given[0]
        # Caffe's words, e.g. "Creating training net from net file: lenet.prototxt"
        log.info('Creating training net specified in %s.' % field if field.endswith('_param') else
                 'Creating training net from %s file: %s' % (field, getattr(p, field)))
        if field.endswith('_param'):
            net_param, src = pb.NetParameter(), '%s (%s)' % (self.source, field)
            net_param.CopyFrom(getattr(p, field))
        else:
            net_param, src = self._read_net_file(getattr(p, field))
        self.net = self._net_from(net_param, TRAIN,
                                  p.train_state if p.HasField('train_state') else None, src)
        self._load_weights(self.net)

    def _weight_files(self):
        """The ``weights`` field: each entry a comma-separated list (Caffe's LoadNetWeights)."""
        return [self._resolve(w.strip()) for entry in self.param.weights
                for w in entry.split(',') if w.strip()]

    def _load_weights(self, net):
        from .. import weights as W
        W.load_weight_files(net, self._weight_files(),
                            lambda w: self.log('Finetuning from %s' % w) if net is self.net else None)

    def _init_test_nets(self):
        p = self.param
        if not _parallel.root_solver():
            self.test_nets = []         # as Caffe: only the root solver tests
            return
        sources, specified_by = [], []      # specified_by: Caffe's words for each source
        for tp in p.test_net_param:
            q = pb.NetParameter()
            q.CopyFrom(tp)
            sources.append((q, '%s (test_net_param)' % self.source))
            specified_by.append('test_net_param')
        for f in p.test_net:
            sources.append(self._read_net_file(f))
            specified_by.append('test_net file: %s' % f)
        generic = len(p.test_iter) - len(sources)
        if (p.HasField('net') or p.HasField('net_param')) and generic > 0:
            for _ in range(generic):
                if p.HasField('net_param'):
                    q = pb.NetParameter()
                    q.CopyFrom(p.net_param)
                    sources.append((q, '%s (net_param)' % self.source))
                    specified_by.append('net_param')
                else:
                    sources.append(self._read_net_file(p.net))
                    specified_by.append('net file: %s' % p.net)
        if len(p.test_iter) != len(sources):
            raise MinicaffeError('%s: test_iter must be given once per test net (%d test nets,'
                                 ' %d test_iter values)' % (self.source, len(sources), len(p.test_iter)))
        if sources and not p.test_interval:
            raise MinicaffeError('%s: test_iter is given but test_interval is not (or is 0):'
                                 ' set test_interval to say how often to test' % self.source)
        if len(p.test_state) and len(p.test_state) != len(sources):
            raise MinicaffeError('%s: test_state must be given once per test net' % self.source)
        self.test_nets = []
        for i, (q, src) in enumerate(sources):
            st = p.test_state[i] if len(p.test_state) else None
            log.info('Creating test net (#%d) specified by %s', i, specified_by[i])
            net = self._net_from(q, TEST, st, src)
            self._load_weights(net)
            self.test_nets.append(net)

    # ------------------------------------------------------------ training
    def add_callback(self, on_start=None, on_gradients_ready=None):
        """pycaffe's add_callback(on_start, on_gradients_ready), or an object with those methods."""
        if on_gradients_ready is None and hasattr(on_start, 'on_start'):
            obj = on_start
            on_start, on_gradients_ready = obj.on_start, getattr(obj, 'on_gradients_ready', None)
        self.callbacks.append((on_start, on_gradients_ready))

    def _requested_action(self):
        return self.action_request() if self.action_request else SolverAction.NONE

    def step(self, iters):
        p = self.param
        start_iter = self.iter
        stop_iter = self.iter + int(iters)
        self._losses = []
        self.smoothed_loss = 0.0
        self._iter_last = self.iter
        timer = time.time()
        while self.iter < stop_iter:
            self.net.clear_param_diffs()
            if (p.test_interval and self.iter % p.test_interval == 0
                    and (self.iter > 0 or p.test_initialization)):
                if _parallel.root_solver():
                    self.test_all()
                if self.requested_early_exit:
                    break
            for on_start, _ in self.callbacks:
                if on_start:
                    on_start()
            display = p.display and self.iter % p.display == 0
            self.net.debug_info = bool(display and p.debug_info)
            loss = 0.0
            for _ in range(max(1, p.iter_size)):
                loss += self.net.forward_backward()
            loss /= max(1, p.iter_size)
            # A NaN gradient can come with a finite loss (on the GPU the softmax
            # loss clamps log(NaN) as Caffe's kernel does): the gradients are
            # checked too, every iteration with halt_on_nonfinite, else on
            # display iterations (one reduction per param).
            if not np.isfinite(loss) or ((self.halt_on_nonfinite or display) and not self._warned_nonfinite
                                         and not nonfinite.diffs_finite(self.net)):
                self._nonfinite_loss(loss)
            self._update_smoothed_loss(loss, start_iter, max(1, p.average_loss))
            outputs = None
            if display:
                lapse = time.time() - timer
                per_s = (self.iter - self._iter_last) / (lapse if lapse else 1)
                self.log('Iteration %d (%g iter/s, %gs/%d iters), loss = %g'
                         % (self.iter, per_s, lapse, p.display, self.smoothed_loss))
                timer = time.time()
                self._iter_last = self.iter
                outputs = self._log_outputs(self.net, 'Train', 1)
            for _, on_ready in self.callbacks:
                if on_ready:
                    on_ready()
            rate = self._apply_update(display)
            if self.metrics is not None:
                self.metrics.train(self.iter, rate, loss, self.smoothed_loss, outputs)
            self.iter += 1
            request = self._requested_action()
            if (((p.snapshot and self.iter % p.snapshot == 0) or request == SolverAction.SNAPSHOT)
                    and _parallel.root_solver()):
                self.snapshot()
            if request == SolverAction.STOP:
                self.requested_early_exit = True
                break
        return self.smoothed_loss

    def solve(self, resume=None):
        p = self.param
        self.requested_early_exit = False
        if resume:
            self.restore(resume)
        start_iter = self.iter
        self.log('Solving %s' % (self.net.name or self.source))
        self.log('Learning Rate Policy: %s' % p.lr_policy)
        self.step(p.max_iter - self.iter)
        if (p.snapshot_after_train and (not p.snapshot or self.iter % p.snapshot != 0)
                and _parallel.root_solver()):
            self.snapshot()
        if self.requested_early_exit:
            self.log('Optimization stopped early.')
            return
        if p.display and self.iter % p.display == 0:
            loss = self.net.forward_all_loss()
            self._update_smoothed_loss(loss, start_iter, max(1, p.average_loss))
            self.log('Iteration %d, loss = %g' % (self.iter, self.smoothed_loss))
        if p.test_interval and self.iter % p.test_interval == 0 and _parallel.root_solver():
            self.test_all()
        self.log('Optimization Done.')

    def _update_smoothed_loss(self, loss, start_iter, average_loss):
        if len(self._losses) < average_loss:
            self._losses.append(loss)
            n = len(self._losses)
            self.smoothed_loss = (self.smoothed_loss * (n - 1) + loss) / n
        else:
            idx = (self.iter - start_iter) % average_loss
            self.smoothed_loss += (loss - self._losses[idx]) / average_loss
            self._losses[idx] = loss

    def _log_outputs(self, net, kind, divisor, scores=None):
        """Caffe's "    Train net output #k: name = v (* w = wv loss)" lines."""
        values = {}
        k = 0
        weights = net.blob_loss_weights
        for name in net.outputs:
            vals = scores[name] if scores is not None else net.blobs[name].data
            w = np.float32(weights.get(name, 0.0))
            for v in np.asarray(vals, np.float32).ravel():
                v = v / np.float32(divisor)
                extra = ' (* %g = %g loss)' % (w, w * v) if w else ''
                self.log('    %s net output #%d: %s = %g%s' % (kind, k, name, v, extra))
                values['%s' % name if np.size(vals) == 1 else '%s_%d' % (name, k)] = float(v)
                k += 1
        return values

    # ------------------------------------------------------------ update
    def learning_rate(self):
        return lr_policy.learning_rate(self)

    @property
    def lr(self):
        """pycaffe's ``solver.lr``: the learning rate at the current iteration."""
        return self.learning_rate()

    def apply_update(self):
        """pycaffe's ``solver.apply_update()`` (Caffe's ApplyUpdate): update the
        weights from the diffs the caller computed, then count the iteration
        (``iter`` is the number of updates made), logging the rate on display
        iterations as step() does."""
        p = self.param
        self._apply_update(bool(p.display and self.iter % p.display == 0))
        self.iter += 1

    def share_weights(self, net):
        """pycaffe's ``solver.share_weights(net)``: ``net`` uses the train net's
        learnable blobs (layers matched by name), as test nets do."""
        net.share_with(self.net)

    def _apply_update(self, display=False):
        """The update of one iteration: clip, then per param normalize, regularize
        and compute the step, then w -= Δ (``iter`` is left to the caller).  On
        the device in GPU mode (gpu_diff, gpu_data, device history), on the host
        otherwise; same formulas.  Returns the learning rate used."""
        p = self.param
        rate = self.learning_rate()
        if display:
            self.log('Iteration %d, lr = %g' % (self.iter, rate))
        params = self.net.learnable_params
        gpu = _mode.is_gpu()
        self._place_history(gpu)
        self._clip_gradients(params)
        iter_size = max(1, p.iter_size)
        for i, blob in enumerate(params):
            local_rate = np.float32(rate) * np.float32(self.net.params_lr[i])
            if gpu:
                data, g = blob.gpu_data, blob.gpu_diff  # (no setters: in place on the arrays)
                self._update_piece(i, g, data, self._param_history(i), local_rate, iter_size)
                data -= g
            else:
                self._update_on_host(i, blob, local_rate, iter_size)
        return rate

    def _param_history(self, i):
        """The history arrays of learnable param i (one set, two for AdaDelta/Adam)."""
        return tuple(self.history[i::self.n_params])

    def _update_piece(self, i, g, w, hist, rate, iter_size):
        """Normalize, regularize and the update rule on (pieces of) param i's
        arrays: g (its diff) ends up holding the step Δ."""
        if iter_size > 1:
            g *= np.float32(1.0 / iter_size)
        self._regularize(i, g, w)
        self.update_rule(self, hist, g, rate)

    def _update_on_host(self, i, blob, rate, iter_size):
        """Param i's whole update (normalize, regularize, the rule, w -= Δ) in one
        pass over its arrays, HOST_UPDATE_BLOCK elements at a time on the worker
        threads.  Done array by array, every step reads and writes all of them:
        for CaffeNet's fc6 (151 MB each for w, diff and history) eight passes and
        two 151 MB temporaries (rate * g, decay * w); piece by piece the pieces
        stay in cache and the temporaries are piece-sized.  Every step is
        element-wise, so the numbers are the same."""
        arrays = (blob.diff, blob.data) + self._param_history(i)
        if not all(type(a) is np.ndarray and a.flags.c_contiguous for a in arrays):
            self._update_piece(i, blob.diff, blob.data, self._param_history(i), rate, iter_size)
            blob.data -= blob.diff
            return
        g, w, *hist = [a.reshape(-1) for a in arrays]

        def update(lo, hi):
            for a in range(lo, hi, HOST_UPDATE_BLOCK):
                b = min(hi, a + HOST_UPDATE_BLOCK)
                self._update_piece(i, g[a:b], w[a:b], tuple(h[a:b] for h in hist), rate, iter_size)
                w[a:b] -= g[a:b]
        parallel_for(g.size, update, g.size * len(arrays))

    def _clip_gradients(self, params):
        clip = self.param.clip_gradients
        if clip < 0:
            return
        gpu = _mode.is_gpu()
        sumsq = 0
        for b in params:
            d = (b.gpu_diff if gpu else b.diff).ravel()
            sumsq += float(array_module(d).dot(d, d))
        norm = np.sqrt(sumsq)
        if norm > clip:
            scale = clip / norm
            self.log('Gradient clipping: scaling down gradients (L2 norm %g > %g) by scale factor %g'
                     % (norm, clip, scale))
            for b in params:
                if gpu:
                    diff = b.gpu_diff
                    diff *= np.float32(scale)
                else:
                    b.diff *= np.float32(scale)

    def _regularize(self, i, diff, data):
        """Weight decay of param i on its diff (or a piece of it) from its data."""
        p = self.param
        decay = np.float32(p.weight_decay) * np.float32(self.net.params_weight_decay[i])
        if not decay:
            return
        kind = p.regularization_type
        if kind == 'L2':
            diff += decay * data
        elif kind == 'L1':
            diff += decay * array_module(data).sign(data)
        else:
            raise MinicaffeError('%s: unknown regularization_type "%s" (L1 or L2)' % (self.source, kind))

    # ------------------------------------------------------------ history placement
    def _place_history(self, gpu=None):
        """Put the history on the side the mode computes on: CuPy arrays in GPU
        mode, NumPy arrays in CPU mode (a no-op unless the mode changed)."""
        gpu = _mode.is_gpu() if gpu is None else gpu
        if gpu:
            if any(type(h) is np.ndarray for h in self.history):
                from ..gpu.backend import cupy_module
                cp = cupy_module()
                self.history = [cp.asarray(h) if type(h) is np.ndarray else h
                                for h in self.history]
        elif any(type(h) is not np.ndarray for h in self.history):
            self.history = [h if type(h) is np.ndarray else _to_host(h) for h in self.history]

    def host_history(self):
        """The history as host NumPy arrays (copies of device arrays; the arrays
        themselves in CPU mode) -- what snapshots write."""
        return [h if type(h) is np.ndarray else _to_host(h) for h in self.history]

    # ------------------------------------------------------------ testing
    def test_all(self):
        for i in range(len(self.test_nets)):
            if self.requested_early_exit:
                break
            self.test(i)

    def test(self, i=0):
        p = self.param
        self.log('Iteration %d, Testing net (#%d)' % (self.iter, i))
        net = self.test_nets[i]
        net.share_with(self.net)
        scores = {}
        loss = np.float32(0)
        n = p.test_iter[i]
        for _ in range(n):
            request = self._requested_action() if self.actions_in_test else SolverAction.NONE
            while request != SolverAction.NONE:
                if request == SolverAction.SNAPSHOT:
                    self.snapshot()
                elif request == SolverAction.STOP:
                    self.requested_early_exit = True
                request = self._requested_action()
            if self.requested_early_exit:
                break
            iter_loss = net.forward_all_loss()
            if p.test_compute_loss:
                loss = np.float32(loss + np.float32(iter_loss))
            # Caffe sums the scores in Dtype (float32)
            for name in net.outputs:
                v = np.array(net.blobs[name].data, np.float32)
                scores[name] = scores[name] + v if name in scores else v
        if self.requested_early_exit:
            self.log('Test interrupted.')
            return None
        if p.test_compute_loss:
            self.log('Test loss: %g' % (loss / np.float32(n)))
        values = self._log_outputs(net, 'Test', n, scores)
        if self.metrics is not None:
            self.metrics.test(self.iter, i, values)
        return values

    # ------------------------------------------------------------ non-finite loss
    def _nonfinite_loss(self, loss):
        """The loss or the gradients of this iteration are NaN/inf (its update
        has not run yet, so the weights are those of the last update).  Warn
        once; with halt_on_nonfinite snapshot these weights when they are
        finite and stop."""
        what = ('loss = %g is not finite' % loss if not np.isfinite(loss)
                else 'loss = %g but the gradients are not finite' % loss)
        if not self._warned_nonfinite:
            self._warned_nonfinite = True
            log.warning('Iteration %d: %s; %s.%s', self.iter, what, nonfinite.describe(self.net),
                        '' if self.halt_on_nonfinite else ' Training goes on (as in Caffe); '
                        '`minicaffe train --halt-on-nan` would stop here with a snapshot')
        if not self.halt_on_nonfinite:
            return
        if not _parallel.root_solver():
            kept = 'rank 0 writes the snapshots, not this rank'
        elif nonfinite.params_finite(self.net):
            model, state = self.snapshot()
            kept = ('the weights before this update (the last finite state) are saved in %s and %s'
                    % (model, state))
        else:
            previous = snap.newest(self.param.snapshot_prefix) if self.param.snapshot_prefix else None
            kept = ('the weights themselves are no longer finite, so no snapshot is written; %s'
                    % ('the newest snapshot is %s' % previous if previous else 'there is no snapshot'))
        raise NonFiniteLossError('%s: iteration %d: %s; training halted (--halt-on-nan); %s'
                                 % (self.source, self.iter, what, kept))

    # ------------------------------------------------------------ snapshots
    def snapshot(self):
        if self.halt_on_nonfinite and not nonfinite.params_finite(self.net):
            # never replace a good snapshot with non-finite weights
            previous = snap.newest(self.param.snapshot_prefix) if self.param.snapshot_prefix else None
            raise NonFiniteLossError('%s: iteration %d: the weights are not finite (%s); training'
                                     ' halted (--halt-on-nan) without snapshotting them; %s'
                                     % (self.source, self.iter, nonfinite.describe(self.net),
                                        'the newest snapshot is %s' % previous if previous
                                        else 'there is no snapshot'))
        return snap.snapshot(self)

    def restore(self, path):
        snap.restore(self, os.fspath(path))


def _zero_history(net, sets):
    """``sets`` zero arrays per learnable param (on the device in GPU mode)."""
    history = [np.zeros(b.shape, np.float32) for _ in range(sets) for b in net.learnable_params]
    if _mode.is_gpu():
        from ..gpu.backend import cupy_module
        cp = cupy_module()
        history = [cp.asarray(h) for h in history]
    return history


def _to_host(a):
    """A device array's values as a new host float32 array."""
    return np.asarray(a.get(), np.float32)


def _typed(type_name):
    class _Typed(Solver):
        def __init__(self, param_or_path, **kw):
            super(_Typed, self).__init__(param_or_path, **kw)
            if self.type != type_name:
                # pycaffe's XSolver(path) trains with X whatever the file says.
                self.type = type_name
                self.update_rule, sets = RULES[type_name]
                self.history = _zero_history(self.net, sets)
    _Typed.__name__ = _Typed.__qualname__ = type_name + 'Solver'
    return _Typed


SGDSolver = _typed('SGD')
NesterovSolver = _typed('Nesterov')
AdaGradSolver = _typed('AdaGrad')
RMSPropSolver = _typed('RMSProp')
AdaDeltaSolver = _typed('AdaDelta')
AdamSolver = _typed('Adam')


def get_solver(path_or_param, **kw):
    """The solver its type field names (pycaffe's caffe.get_solver)."""
    return Solver(path_or_param, **kw)
