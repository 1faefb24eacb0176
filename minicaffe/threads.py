"""How many threads minicaffe computes on, and the one pool that runs them.

Policy (why it looks like this):

* One pool.  minicaffe's own workers run everything that is split over cores:
  the memory-bound passes (im2col, col2im, pooling, LRN, element-wise math)
  and the GEMMs (blas.gemm cuts them into blocks, each block one
  single-threaded BLAS call).  The BLAS itself is set to one thread at run time
  (threadpoolctl, whatever was imported first), so at most ``num_threads()``
  threads are ever busy: BLAS threads x workers = 1 x n <= the cores the
  process may use (``os.sched_getaffinity``), the default n.  OpenBLAS's own
  threads used to spin between calls and split each GEMM statically: with one
  other busy process on a 2-core machine a single descheduled BLAS thread held
  up every GEMM (11x slower nets; benchmarks/bench_gemm.py on the busy shared
  2-core machine: CaffeNet's per-image conv GEMMs took ~2.5 ms on one BLAS
  thread, 40-200 ms on two); blocks pulled from a shared counter let whichever
  thread runs take the next block instead.
* Fixed chunks.  Work is cut into chunks whose boundaries depend only on the
  problem's size, never on the number of threads; threads take chunks in any
  order, but each chunk is computed the same way whoever takes it.  Together
  with the single-threaded BLAS (whose sums do depend on its thread count:
  OpenBLAS 0.3.31 gives different last bits at 1 and 2 threads for many of the
  nets' conv and LSTM products, e.g. 128x1200 by 1200x729 or 6x1000 by
  1000x512) a run's numbers do not depend on the thread count.
* Waiting threads sleep (an Event), they never spin.

``MINICAFFE_NUM_THREADS`` (read once, at first use), the commands' ``--threads
N`` and ``minicaffe.set_num_threads(n)`` choose n; the default is the number of
cores the process may use (divided among the MPI ranks started on the machine),
at most DEFAULT_MAX_THREADS.
"""
import itertools
import logging
import os
import threading

from .errors import MinicaffeError

log = logging.getLogger('minicaffe')

DEFAULT_MAX_THREADS = 8

# parallel_for: work below this many elements runs on the calling thread alone;
# above, it is cut into chunks of at least PARALLEL_CHUNK_ELEMS elements, at
# most PARALLEL_MAX_CHUNKS (more chunks than threads, so that a thread that the
# OS deschedules holds up only its own chunk).
PARALLEL_MIN_ELEMS = 1 << 18
PARALLEL_CHUNK_ELEMS = 1 << 17
PARALLEL_MAX_CHUNKS = 16

_state = {'n': None, 'executor': None, 'blas_warned': False, 'chosen': False}
_lock = threading.Lock()
_local = threading.local()


def _env_threads():
    env = os.environ.get('MINICAFFE_NUM_THREADS')
    if not env:
        return None
    try:
        n = int(env)
    except ValueError:
        n = 0
    if n < 1:
        raise MinicaffeError('MINICAFFE_NUM_THREADS must be a positive integer, got %r' % env)
    return n


def available_cores():
    """The number of cores this process may run on (its CPU affinity)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:          # not Linux
        return os.cpu_count() or 1


# The number of ranks an MPI launcher started on this machine (MPICH's hydra,
# Open MPI): unbound ranks each see every core, so they share them.
_LOCAL_RANKS_ENV = ('MPI_LOCALNRANKS', 'OMPI_COMM_WORLD_LOCAL_SIZE')


def _local_ranks():
    for var in _LOCAL_RANKS_ENV:
        try:
            return max(1, int(os.environ.get(var, '')))
        except ValueError:
            continue
    return 1


def default_num_threads():
    """One thread per core this process may use (shared among the MPI ranks on
    this machine), at most DEFAULT_MAX_THREADS."""
    return max(1, min(available_cores() // _local_ranks(), DEFAULT_MAX_THREADS))


def num_threads():
    """The number of threads minicaffe computes on (see the module docstring)."""
    if _state['n'] is None:
        n = _env_threads()
        _set(n if n is not None else default_num_threads())
    return _state['n']


def share_cores(local_ranks):
    """Where local_ranks processes (MPI ranks) share this machine's cores, each
    computes on its share of them -- unless the thread count was chosen
    (set_num_threads, --threads, MINICAFFE_NUM_THREADS).  Returns the count."""
    if _state['chosen'] or _env_threads() is not None:
        return num_threads()
    share = available_cores() // max(1, int(local_ranks))
    return _set(max(1, min(share, DEFAULT_MAX_THREADS)))


def get_num_threads():
    """pycaffe-style alias of num_threads()."""
    return num_threads()


def set_num_threads(n):
    """Compute on n threads (minicaffe's workers; the BLAS stays at one thread
    per worker).  Results do not depend on n."""
    n = _set(n)
    _state['chosen'] = True
    return n


def _set(n):
    n = int(n)
    if n < 1:
        raise MinicaffeError('the number of threads must be at least 1, got %d' % n)
    with _lock:
        old = _state['executor']
        if old is not None and _state['n'] != n:
            old.shutdown(wait=False)
            _state['executor'] = None
        _state['n'] = n
    limit_blas_threads()
    return n


def limit_blas_threads():
    """Set every BLAS loaded into the process (numpy's OpenBLAS...) to one
    thread, at run time (threadpoolctl), whatever was imported first and
    whatever OPENBLAS_NUM_THREADS/OMP_NUM_THREADS said."""
    try:
        import threadpoolctl
    except ImportError:
        # Without it the BLAS keeps its own threads: still correct, but its
        # thread count then changes the last bits, and it may oversubscribe.
        if not _state['blas_warned']:
            _state['blas_warned'] = True
            log.warning('threadpoolctl is not installed: the BLAS keeps its own threads'
                        ' (pip install threadpoolctl)')
        return
    threadpoolctl.threadpool_limits(limits=1, user_api='blas')


def _executor():
    with _lock:
        if _state['executor'] is None:
            from concurrent.futures import ThreadPoolExecutor
            _state['executor'] = ThreadPoolExecutor(max(1, num_threads() - 1),
                                                    thread_name_prefix='minicaffe',
                                                    initializer=_mark_worker)
        return _state['executor']


def _mark_worker():
    _local.busy = True


class _Job(object):
    """Chunks 0..n-1 of one call, taken by whichever thread asks next."""

    def __init__(self, n, task):
        self.n, self.task = n, task
        self.claim = itertools.count()      # next() is atomic under the GIL
        self.lock = threading.Lock()
        self.left = n
        self.done = threading.Event()
        self.error = None

    def work(self):
        while True:
            i = next(self.claim)
            if i >= self.n:
                return
            try:
                self.task(i)
            except BaseException as e:       # re-raised by the calling thread
                if self.error is None:
                    self.error = e
            with self.lock:
                self.left -= 1
                if self.left == 0:
                    self.done.set()


def run_chunks(n, task):
    """task(i) for i in range(n), spread over the threads; returns when all are
    done (re-raising the first exception).  The calling thread works too and
    then sleeps until the others finish.  Called from inside a chunk (nested)
    it runs serially: only an outermost caller waits for the pool, so nothing
    can wait for itself."""
    t = min(num_threads(), n)
    if t <= 1 or getattr(_local, 'busy', False):
        for i in range(n):
            task(i)
        return
    job = _Job(n, task)
    pool = _executor()
    for _ in range(t - 1):
        pool.submit(job.work)
    _local.busy = True
    try:
        job.work()
    finally:
        _local.busy = False
    job.done.wait()
    if job.error is not None:
        raise job.error


def run_calls(calls):
    """Each of a list of independent calls (gemm_tasks' blocks, alternate's
    interleaving), spread over the threads; one call runs on the caller."""
    run_chunks(len(calls), lambda i: calls[i]())


def run_ranges(bounds, fn):
    """fn(bounds[i], bounds[i + 1]) for each block of consecutive bounds, spread
    over the threads."""
    run_chunks(len(bounds) - 1, lambda i: fn(bounds[i], bounds[i + 1]))


def alternate(xs, ys):
    """x0, y0, x1, y1, ... then the rest of the longer list: two products' calls
    interleaved for one run_chunks round, so that the threads take a block of
    each in turn."""
    out = [v for pair in zip(xs, ys) for v in pair]
    n = min(len(xs), len(ys))
    return out + list(xs[n:]) + list(ys[n:])


def chunk_bounds(n, elems):
    """Chunk boundaries over range(n) for work of elems elements in all: a
    function of (n, elems) only, so the same chunks whatever the thread count."""
    if n <= 1 or elems < PARALLEL_MIN_ELEMS:
        return [0, n]
    c = int(min(n, PARALLEL_MAX_CHUNKS, max(1, elems // PARALLEL_CHUNK_ELEMS)))
    return [n * i // c for i in range(c + 1)]


def parallel_for(n, fn, elems):
    """Call fn(lo, hi) over consecutive chunks of range(n) -- on the worker
    threads when the work (elems array elements in all) is large.  The chunks
    are the same for any thread count (chunk_bounds), so a fn that reduces
    within its chunk gives the same numbers with 1 or 8 threads."""
    bounds = chunk_bounds(n, elems)
    if len(bounds) == 2:
        fn(0, n)
        return
    run_ranges(bounds, fn)
