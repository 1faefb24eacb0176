"""Caffe 1.0's data-parallel training (parallel.cpp's NCCL class), written
against :class:`~minicaffe.parallel.comm.Communicator` so that the MPI and the
NCCL engines share all of it.

N ranks each hold a replica of the solver and its train net:

- :meth:`DataParallel.broadcast_params` gives every rank rank 0's parameters
  (and solver history) before the first iteration and after a restore or
  ``--weights``;
- after backward the learnable parameters' diffs are summed over the ranks and
  scaled by 1/N (Caffe: ncclAllReduce, then ``caffe_gpu_scal(1/solver_count)``),
  so every rank applies the same update and the replicas stay identical.  Each
  bucket of parameters moves as one flat float32 buffer: one bucket per layer
  with ``layer_wise_reduce`` (reduced as soon as the backward pass has finished
  with them, while the lower layers still compute -- Caffe's after_backward
  hook), else one bucket for the whole net reduced at ``on_gradients_ready``.
  A parameter shared by several layers goes in the bucket of the lowest of
  them (backward reaches it last, so its diff is complete there).  With
  ``iter_size`` > 1 the buckets are reduced in the last backward pass of the
  iteration only; averaging is linear, so this is the mean of the accumulated
  gradients, as Caffe's reduction in every pass gives;
- :meth:`DataParallel.agree_action` turns each rank's SIGINT/SIGHUP flags into
  one action all ranks take (the strongest any rank asked for);
- :func:`check_agreement` compares the ranks' nets, data batches and solvers at
  start and raises :class:`RanksDisagree` naming the ranks that differ.

Small exchanges (flags, descriptions) use ``allreduce`` of a zeroed float32
buffer in which each rank fills its own slot, so an engine needs only the five
operations of the interface.
"""
import contextlib
import json
import time

import numpy as np

from .. import mode as _mode
from ..errors import MinicaffeError

# SolverAction values in agreement order: a rank asking to stop wins over one
# asking for a snapshot.
_ACTION_CODES = {'none': 0, 'snapshot': 1, 'stop': 2}
_ACTIONS = {v: k for k, v in _ACTION_CODES.items()}


class RanksDisagree(MinicaffeError):
    """The ranks of one job train different nets, batches or solvers.  Raised on
    every rank; ``quiet`` is true on ranks that agree with rank 0 (only rank 0
    and the differing ranks need to print it)."""

    quiet = False


# ---------------------------------------------------------------- small collectives
def _zeros(comm, n):
    if comm.device_buffers:
        from ..gpu.backend import cupy_module
        return cupy_module().zeros(n, np.float32)
    return np.zeros(n, np.float32)


def _host(buf):
    return buf if isinstance(buf, np.ndarray) else np.asarray(buf.get())


def gather(comm, values):
    """Every rank's ``values`` (k small integers or float32-exact numbers) as a
    (size, k) host array on every rank: one all-reduce of a zeroed buffer."""
    values = np.asarray(values, np.float32).ravel()
    k = values.size
    buf = np.zeros(comm.size * k, np.float32)
    buf[comm.rank * k:(comm.rank + 1) * k] = values
    dev = _zeros(comm, buf.size)
    if comm.device_buffers:
        dev.set(buf)
    else:
        dev = buf
    comm.allreduce(dev)
    return _host(dev).reshape(comm.size, k)


def broadcast_text(comm, text, root=0, limit=1 << 16):
    """The root's ``text`` on every rank (UTF-8 bytes as float32 values)."""
    raw = text.encode('utf-8')[:limit] if comm.rank == root else b''
    n = int(gather(comm, [len(raw)])[root, 0])
    host = np.zeros(n, np.float32)
    if comm.rank == root:
        host[:] = np.frombuffer(raw, np.uint8)
    buf = _zeros(comm, n)
    if comm.device_buffers:
        buf.set(host)
    else:
        buf = host
    comm.broadcast(buf, root)
    return bytes(_host(buf).astype(np.uint8)).decode('utf-8', 'replace')


def broadcast_seed(comm, seed=None):
    """A random seed drawn by rank 0 (``seed`` there, if given) on every rank,
    so data shuffles agree across ranks.  32 bits, sent as two exact 16-bit halves."""
    if comm.rank == 0:
        if seed is None:
            seed = int(np.random.SeedSequence().generate_state(1)[0])
        halves = [(seed >> 16) & 0xFFFF, seed & 0xFFFF]
    else:
        halves = [0, 0]
    got = gather(comm, halves)[0]
    return (int(got[0]) << 16) | int(got[1])


@contextlib.contextmanager
def untimed(comm):
    """Lift the communicator's watchdog timeout (ranks wait while rank 0 tests or
    writes a snapshot, which may take long)."""
    saved = comm.timeout
    comm.timeout = None
    try:
        yield
    finally:
        comm.timeout = saved


# ---------------------------------------------------------------- agreement at start
# The update's settings, and those that decide when the ranks meet (rank 0's
# tests and snapshots, after which the others wait for it).
_SOLVER_FIELDS = ('base_lr', 'lr_policy', 'gamma', 'power', 'stepsize', 'stepvalue',
                  'max_iter', 'momentum', 'momentum2', 'delta', 'rms_decay', 'weight_decay',
                  'regularization_type', 'clip_gradients', 'iter_size', 'layer_wise_reduce',
                  'test_interval', 'test_initialization', 'snapshot')


def describe(solver):
    """What must be the same on every rank: the train net's learnable parameter
    shapes, its data batch (the tops of its layers without bottoms), the solver
    settings that shape the update, and the iteration it starts at."""
    net = solver.net
    params = []
    for (lid, pid), owner in zip(net.param_layer_indices, net.param_owners):
        if owner < 0:
            params.append('%s[%d] %s' % (net.layers[lid].name, pid,
                                         'x'.join(str(d) for d in net.layers[lid].blobs[pid].shape)))
    batch = []
    for lid, layer in enumerate(net.layers):
        if not net.bottom_ids[lid]:
            for bid in net.top_ids[lid]:
                batch.append('%s %s' % (net.blob_names[bid],
                                        'x'.join(str(d) for d in net._blob_list[bid].shape)))
    p = solver.param
    settings = []
    for f in _SOLVER_FIELDS:
        v = getattr(p, f)
        if not isinstance(v, (str, bool, int, float)):
            v = list(v)
        settings.append('%s=%s' % (f, v))
    settings.insert(0, 'type=%s' % solver.type)
    return {'net (learnable parameter shapes)': ', '.join(params),
            'data batch (top shapes of the data layers)': ', '.join(batch),
            'solver settings': ', '.join(settings),
            'start iteration': str(solver.iter)}


def check_agreement(comm, solver):
    """Raise :class:`RanksDisagree` on every rank when some rank's description
    differs from rank 0's (a collective: every rank must call it)."""
    if comm.size == 1:
        return
    mine = describe(solver)
    root = json.loads(broadcast_text(comm, json.dumps(mine, sort_keys=True)))
    keys = sorted(mine)
    differs = [1 if mine[k] != root.get(k) else 0 for k in keys]
    table = gather(comm, differs)
    bad = [r for r in range(comm.size) if table[r].any()]
    if not bad:
        return
    parts = []
    for r in bad:
        what = [keys[i] for i in range(len(keys)) if table[r, i]]
        parts.append('rank %d differs from rank 0 in its %s' % (r, ' and '.join(what)))
    msg = 'the ranks disagree: %s' % '; '.join(parts)
    if comm.rank in bad:
        msg += ' -- rank %d has: %s; rank 0 has: %s' % (
            comm.rank, '; '.join('%s: %s' % (k, mine[k]) for k, d in zip(keys, differs) if d),
            '; '.join('%s: %s' % (k, root.get(k)) for k, d in zip(keys, differs) if d))
    err = RanksDisagree(msg)
    err.quiet = comm.rank != 0 and comm.rank not in bad
    raise err


# ---------------------------------------------------------------- gradient buckets
class _Bucket(object):
    """Learnable params reduced together, through one flat float32 buffer."""

    def __init__(self, layer_id, indices, blobs, comm):
        self.layer_id = layer_id
        self.indices = indices
        self.blobs = [blobs[i] for i in indices]
        self.offsets = []
        n = 0
        for b in self.blobs:
            self.offsets.append((n, n + b.count))
            n += b.count
        self.count = n
        self.buffer = _zeros(comm, max(n, 1))
        self.handle = None

    def _diffs(self, device):
        return [b.gpu_diff if device else b.diff for b in self.blobs]

    def pack(self, device):
        for (a, z), d in zip(self.offsets, self._diffs(device)):
            self.buffer[a:z] = d.reshape(-1)

    def unpack(self, device, scale):
        """diff = sum * (1/N), in one pass per blob (Caffe scales the sum in place)."""
        from ..solvers.updates import array_module
        for (a, z), d in zip(self.offsets, self._diffs(device)):
            array_module(d).multiply(self.buffer[a:z].reshape(d.shape), scale, out=d)


def gradient_buckets(net, layer_wise):
    """[(layer id, [learnable param indices])] in backward order: one per layer
    that completes some param's diff (layer-wise), or one for the whole net."""
    n = len(net.learnable_params)
    if not layer_wise:
        return [(0, list(range(n)))] if n else []
    last = {}
    for (lid, _), li in zip(net.param_layer_indices, net.learnable_param_ids):
        last[li] = min(lid, last.get(li, lid))
    by_layer = {}
    for li in range(n):
        by_layer.setdefault(last[li], []).append(li)
    return [(lid, by_layer[lid]) for lid in sorted(by_layer, reverse=True)]


class DataParallel(object):
    """Installs Caffe's data-parallel hooks on ``solver`` over ``comm``.

    ``install()`` adds it as a solver callback (``on_start``,
    ``on_gradients_ready``) and, with ``layer_wise_reduce``, as the train net's
    after_backward hook (``run(layer_id)``).  Counters for the benchmark:
    ``comm_seconds`` (inside the engine's all-reduce calls), ``wait_seconds``
    (time the solver was held up by the reduction: packing, starting, waiting,
    scaling and unpacking), ``bytes_reduced`` and ``iterations``.
    """

    def __init__(self, solver, comm):
        self.solver = solver
        self.comm = comm
        self.layer_wise = bool(solver.param.layer_wise_reduce)
        self.iter_size = max(1, solver.param.iter_size)
        blobs = solver.net.learnable_params
        self.buckets = [_Bucket(lid, idx, blobs, comm)
                        for lid, idx in gradient_buckets(solver.net, self.layer_wise)]
        self._by_layer = {b.layer_id: b for b in self.buckets}
        self.scale = np.float32(1.0 / comm.size)
        self.comm_seconds = 0.0
        self.wait_seconds = 0.0
        self.bytes_reduced = 0
        self.iterations = 0
        self._snapshot_agreed = False
        self._start_iter = solver.iter
        self._reset()

    def install(self):
        self.solver.add_callback(self.on_start, self.on_gradients_ready)
        if self.layer_wise:
            self.solver.net.after_backward(self)
        self.solver.actions_in_test = False     # actions are agreed once per iteration
        return self

    def _device(self):
        return self.comm.device_buffers and _mode.is_gpu()

    def _reset(self):
        self._passes = 0
        self._previous_layer = None
        self._started = []
        for b in self.buckets:
            b.handle = None

    # ------------------------------------------------------------ parameters
    def broadcast_params(self):
        """Rank 0's learnable parameters and solver history on every rank."""
        blobs = self.solver.net.learnable_params
        device = self._device()
        if blobs:
            sizes = [b.count for b in blobs]
            buf = _zeros(self.comm, sum(sizes))
            off = 0
            datas = [b.gpu_data if device else b.data for b in blobs]
            for d, n in zip(datas, sizes):
                buf[off:off + n] = d.reshape(-1)
                off += n
            self.comm.broadcast(buf, 0)
            off = 0
            for b, n in zip(blobs, sizes):
                d = b.gpu_data if device else b.data
                d[...] = buf[off:off + n].reshape(d.shape)
                off += n
        self._broadcast_history()

    def _broadcast_history(self):
        solver = self.solver
        history = solver.host_history()
        if not history:
            return
        sizes = [h.size for h in history]
        host = np.concatenate([h.reshape(-1) for h in history]).astype(np.float32)
        buf = _zeros(self.comm, host.size)
        if self.comm.device_buffers:
            buf.set(host)
        else:
            buf = host
        self.comm.broadcast(buf, 0)
        flat = _host(buf)
        off = 0
        for h, n in zip(history, sizes):
            h[...] = flat[off:off + n].reshape(h.shape)
            off += n
        solver.history = history
        solver._place_history()

    # ------------------------------------------------------------ solver callbacks
    def on_start(self):
        self._reset()
        s, p = self.solver, self.solver.param
        it = s.iter
        tested = p.test_interval and it % p.test_interval == 0 and (it > 0 or p.test_initialization)
        snapshotted = (p.snapshot and it % p.snapshot == 0 and it > self._start_iter) or self._snapshot_agreed
        self._snapshot_agreed = False
        if tested or snapshotted:
            # Rank 0 has been testing or writing: wait for it without the watchdog.
            t = time.perf_counter()
            with untimed(self.comm):
                self.comm.barrier()
            self.wait_seconds += time.perf_counter() - t

    def run(self, layer_id):
        """Net.after_backward hook: start reducing the bucket this layer completes
        (in the iteration's last backward pass); drive the ones in flight."""
        if self._previous_layer is None or layer_id >= self._previous_layer:
            self._passes += 1
        self._previous_layer = layer_id
        if self._passes < self.iter_size:
            return
        t = time.perf_counter()
        bucket = self._by_layer.get(layer_id)
        if bucket is not None and bucket.handle is None:
            self._start(bucket)
        else:
            c = time.perf_counter()
            for b in self._started:
                b.handle.test()
            self.comm_seconds += time.perf_counter() - c
        self.wait_seconds += time.perf_counter() - t

    def on_gradients_ready(self):
        t = time.perf_counter()
        device = self._device()
        for b in self.buckets:              # not started by a hook (or layer_wise off)
            if b.handle is None:
                self._start(b)
        for b in self._started:
            c = time.perf_counter()
            b.handle.wait()
            self.comm_seconds += time.perf_counter() - c
            b.unpack(device, self.scale)
        self.wait_seconds += time.perf_counter() - t
        self.iterations += 1
        self._reset()

    def _start(self, bucket):
        bucket.pack(self._device())
        c = time.perf_counter()
        bucket.handle = self.comm.allreduce_async(bucket.buffer)
        self.comm_seconds += time.perf_counter() - c
        self.bytes_reduced += 4 * bucket.count
        self._started.append(bucket)

    # ------------------------------------------------------------ signals
    def agree_action(self, local_request):
        """A solver action_request: every rank's own request (SIGINT/SIGHUP
        effects), exchanged once per iteration; all take the strongest."""
        def agreed():
            mine = local_request() if local_request else 'none'
            codes = gather(self.comm, [_ACTION_CODES[mine]])
            action = _ACTIONS[int(codes.max())]
            if action == 'snapshot':
                self._snapshot_agreed = True
            return action
        return agreed

    def summary(self):
        """Counters for benchmarks and the closing log line."""
        n = max(1, self.iterations)
        return {'iterations': self.iterations, 'comm_seconds': self.comm_seconds,
                'wait_seconds': self.wait_seconds, 'bytes_per_iteration': self.bytes_reduced / n,
                'buckets': len(self.buckets), 'layer_wise_reduce': self.layer_wise}
