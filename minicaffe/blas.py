"""Accumulating GEMM, ``C += op(A) @ op(B)``, as Caffe's caffe_cpu_gemm with beta = 1,
on the BLAS chosen at run time: Intel MKL when it is installed (on Intel CPUs), else
numpy's OpenBLAS.

Caffe accumulates every weight gradient into the diff with one BLAS call (beta =
1).  NumPy's matmul has no beta: ``C += A @ B`` writes the product to a temporary
and adds it in a second pass, which for fc6's 151 MB gradient (a product over
only the batch) costs twice the GEMM itself.  So cblas_sgemm is called through
ctypes, with Caffe's arguments, from one of two libraries (select):

* ``mkl``: libmkl_rt from the PyPI ``mkl`` package (``pip install
  minicaffe[mkl]``; found through its distribution's file list, or in
  sys.prefix/lib, or on the loader's path), the BLAS Caffe's strongest CPU build
  links.  It is switched to its sequential threading layer before its first
  call (one thread per call, no OpenMP runtime): minicaffe's workers run the
  blocks, as with OpenBLAS below.
* ``openblas``: the BLAS numpy was built with, found among the libraries loaded
  into this process.

``MINICAFFE_BLAS=mkl|openblas|auto`` or select(name) chooses; auto (the default)
takes MKL when it is found and the CPU is Intel's (see cpu_vendor), else
OpenBLAS; a BLAS that cannot be loaded, or whose answer to a small check is
wrong, is passed over with a log line saying why.  Where neither works
(another platform, a BLAS without the CBLAS interface, MINICAFFE_NUMPY_GEMM=1)
numpy's products and a temporary-and-add give the same numbers up to rounding.

Large products are cut into blocks of rows or columns (gemm_blocks: the cut
depends only on the shapes) and the blocks run on minicaffe's worker threads,
each one single-threaded BLAS call (minicaffe.threads sets the BLAS to one
thread): the threads share the cores without oversubscribing them, and the
numbers do not depend on how many threads there are.  With MKL this holds
without its conditional numerical reproducibility (CNR) mode: a sequential MKL
call's sums depend on the shape, not on the thread count (with MKL's own
threads they do: 6x1000 by 1000x512 differs in ~900 of 3072 sums between 1 and
2 threads unless MKL_CBWR=AUTO,STRICT), and on this project's machine they did
not change with the arrays' alignment either (offsets of 1 to 16 floats).
"""
import ctypes
import importlib.metadata
import logging
import os
import sys
import threading

import numpy as np

from .errors import MinicaffeError
from .threads import run_calls, run_chunks

log = logging.getLogger('minicaffe')

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112

# (symbol, integer type): OpenBLAS as bundled with numpy's wheels (ILP64,
# prefixed), a system ILP64 OpenBLAS, and plain CBLAS with 32-bit integers.
_SYMBOLS = (('scipy_cblas_sgemm64_', ctypes.c_int64), ('cblas_sgemm64_', ctypes.c_int64),
            ('scipy_cblas_sgemm', ctypes.c_int32), ('cblas_sgemm', ctypes.c_int32))

BLAS_CHOICES = ('auto', 'mkl', 'openblas')

# sgemm: the bound cblas_sgemm (None: numpy fallback); info: what blas_info() says;
# short_k: (MKL's sgemm, its version) for short_k_sgemm, or None.
# ready: no select() under way (another thread's product waits for it).
_state = {'sgemm': None, 'looked': False, 'info': None, 'short_k': None, 'ready': False}
_select_lock = threading.RLock()

# Products with an inner dimension of at most SHORT_K, from callers that accept
# another BLAS's rounding (gemm(any_blas=True): the DEFAULT convolution engine),
# run on MKL where auto chose OpenBLAS on a non-Intel CPU and MKL is installed.
# On this project's AMD EPYC (1 thread, CPU time) MKL took 2.7 ms against
# OpenBLAS's 3.5 for LeNet's conv2 data-gradient blocks (250 x 4096, k = 50) and
# 0.88 against 1.25 for a one-GEMM conv1 forward (20 x 36864, k = 25; conv1 now
# runs stacked, per-image products); whole LeNet iterations 0.5-1.1 ms less.
# Not for every short product: CaffeNet's fc6 weight gradient at batch 10
# (4096 x 9216, k = 10) took 31 ms on MKL against 25.
SHORT_K = 64


def _loaded_libraries():
    """Paths of the shared libraries mapped into this process; Linux only."""
    paths = []
    try:
        with open('/proc/self/maps') as maps:
            for line in maps:
                path = line.split()[-1] if line.strip() else ''
                if path.startswith('/') and '.so' in os.path.basename(path) and path not in paths:
                    paths.append(path)
    except OSError:
        pass
    return paths


def _loaded_blas_libraries():
    """The loaded libraries with 'blas' in their name (numpy's own BLAS among
    them once numpy is imported)."""
    return [p for p in _loaded_libraries() if 'blas' in os.path.basename(p).lower()]


def _bind(path):
    try:
        lib = ctypes.CDLL(path)
    except OSError:
        return None
    for symbol, int_t in _SYMBOLS:
        if getattr(lib, symbol, None) is not None:
            return _bind_symbol(lib, symbol, int_t)
    return None


def _bind_symbol(lib, symbol, int_t):
    fn = getattr(lib, symbol)
    ptr = ctypes.c_void_p
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, int_t, int_t, int_t,
                   ctypes.c_float, ptr, int_t, ptr, int_t, ctypes.c_float, ptr, int_t]
    fn.restype = None
    return fn


def _works(fn):
    """A 3x4 @ 4x2 accumulation checked against numpy (catches a wrong integer width)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((3, 4)).astype(np.float32)
    b = rng.standard_normal((4, 2)).astype(np.float32)
    c = np.ones((3, 2), np.float32)
    _call(fn, a, b, c, False, False)
    return np.allclose(c, 1 + a.astype(np.float64) @ b, rtol=1e-5, atol=1e-5)


def _sgemm():
    if not _state['ready']:
        # (a worker thread's first product waits for a choice under way on another)
        with _select_lock:
            if not _state['looked']:
                select()
    return _state['sgemm']


def _requested():
    choice = os.environ.get('MINICAFFE_BLAS', 'auto').strip().lower() or 'auto'
    if choice not in BLAS_CHOICES:
        raise MinicaffeError('MINICAFFE_BLAS must be one of %s, got %r'
                             % (', '.join(BLAS_CHOICES), os.environ['MINICAFFE_BLAS']))
    return choice


def select(name=None):
    """Choose the BLAS minicaffe's GEMMs call: 'mkl', 'openblas' or 'auto' (MKL
    when found on an Intel CPU, else OpenBLAS); None reads MINICAFFE_BLAS
    (default auto).  A requested library that cannot be used falls back to the
    other one (then to numpy's products) with a log line saying why.  Returns
    blas_info()."""
    with _select_lock:
        _state['ready'] = False
        try:
            return _select(name)
        finally:
            _state['ready'] = True


def _select(name):
    choice = _requested() if name is None else str(name).lower()
    if choice not in BLAS_CHOICES:
        raise MinicaffeError('unknown BLAS %r: expected one of %s'
                             % (name, ', '.join(BLAS_CHOICES)))
    _state.update(sgemm=None, looked=True, info=None, short_k=None)
    if os.environ.get('MINICAFFE_NUMPY_GEMM') == '1':
        _state['info'] = _numpy_info('MINICAFFE_NUMPY_GEMM=1')
        return blas_info()
    vendor = cpu_vendor()
    if choice == 'auto' and vendor != 'GenuineIntel' and mkl_candidates_exist():
        found, _ = _load_mkl()
        if found is not None:
            _state['short_k'] = (found[0], found[1]['version'])
        log.info('BLAS choice: MKL is installed but not used on this %s CPU (OpenBLAS was faster'
                 ' on an AMD EPYC for the nets\' large products; MINICAFFE_BLAS=mkl uses it)%s',
                 vendor or 'unidentified', '' if found is None else
                 '; MKL runs the DEFAULT convolution engine\'s products with k <= %d' % SHORT_K)
    elif choice in ('auto', 'mkl'):
        found, why = _load_mkl()
        if found is not None:
            _state['sgemm'], _state['info'] = found
            return blas_info()
        if choice == 'mkl':
            log.warning('BLAS choice: MKL was asked for but %s; using OpenBLAS (numpy\'s)'
                        ' instead', why)
        else:
            log.info('BLAS choice: MKL not used (%s); using OpenBLAS (numpy\'s)', why)
    found = _load_openblas()
    if found is not None:
        _state['sgemm'], _state['info'] = found
    else:
        _state['info'] = _numpy_info('no CBLAS sgemm found among the loaded BLAS libraries')
        log.warning('BLAS choice: %s; minicaffe uses numpy\'s products (accumulating GEMMs'
                    ' through a temporary)', _state['info']['reason'])
    return blas_info()


def _load_openblas():
    """(sgemm, info) for numpy's own BLAS, or None."""
    for path in _loaded_blas_libraries():
        fn = _bind(path)
        if fn is not None and _works(fn):
            name = 'openblas' if 'openblas' in os.path.basename(path).lower() else 'blas'
            return fn, {'name': name, 'version': _threadpool_field(path, 'version'),
                        'library': path, 'reason': None,
                        'threading': _threadpool_field(path, 'threading_layer'),
                        'threads_per_call': lambda: _threadpool_field(path, 'num_threads')}
    return None


def _threadpool_field(path, key):
    try:
        from threadpoolctl import threadpool_info
        for info in threadpool_info():
            if os.path.realpath(info.get('filepath', '')) == os.path.realpath(path):
                return info.get(key)
    except Exception:           # not installed, or a library it cannot query
        pass
    return None


def _numpy_info(reason):
    return {'name': 'numpy', 'version': np.__version__, 'library': None,
            'threading': None, 'reason': reason, 'threads_per_call': None}


def cpu_vendor():
    """The CPU's vendor id ('GenuineIntel', 'AuthenticAMD', ...) from /proc/cpuinfo,
    or None where it cannot be read.  auto picks MKL on Intel CPUs only: on this
    project's AMD EPYC (single-threaded, MKL 2026.2 against OpenBLAS 0.3.31) MKL
    took 0.55x OpenBLAS's time for few-row products (fc6 forward at batch 10,
    LSTM steps at N=10) but 1.05-1.4x for the large convolution and LSTM
    products: whole iterations (CPU time) LSTM language model 1.31x, LRCN
    captioning 1.10x, CaffeNet 1.04x, LeNet 1.0x, LRCN activity 0.96x."""
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('vendor_id'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return None


def mkl_candidates_exist():
    """Whether a libmkl_rt file is installed where mkl_candidates() looks first."""
    return any(os.path.isabs(p) for p in mkl_candidates())


def mkl_candidates():
    """Where libmkl_rt may be, most specific first: the files of the installed
    ``mkl`` distribution (pip puts them in <prefix>/lib), sys.prefix/lib (and the
    base prefix under a virtual environment), then the bare names for the
    loader's own search (LD_LIBRARY_PATH, the system's directories)."""
    paths = []
    try:
        for f in importlib.metadata.distribution('mkl').files or ():
            if os.path.basename(str(f)).startswith('libmkl_rt.so'):
                paths.append(os.path.normpath(str(f.locate())))
    except importlib.metadata.PackageNotFoundError:
        pass
    for prefix in dict.fromkeys((sys.prefix, sys.base_prefix)):
        for name in ('libmkl_rt.so.3', 'libmkl_rt.so.2', 'libmkl_rt.so'):
            paths.append(os.path.join(prefix, 'lib', name))
    found = [p for p in dict.fromkeys(paths) if os.path.exists(p)]
    return found + ['libmkl_rt.so.3', 'libmkl_rt.so.2', 'libmkl_rt.so']


# MKL's service functions (their C names; the lower-case ones are the Fortran
# interface, which takes pointers): LP64 integers, the sequential layer.
_MKL_INTERFACE_LP64, _MKL_THREADING_SEQUENTIAL = 0, 1
_MKL_LAYERS = {0: 'intel (OpenMP)', 1: 'sequential', 2: 'pgi', 3: 'gnu (OpenMP)', 4: 'tbb'}


def _load_mkl():
    """((sgemm, info), None) for libmkl_rt, or (None, why not)."""
    failed = []
    for path in mkl_candidates():
        try:
            lib = ctypes.CDLL(path)
        except OSError as e:
            if os.path.isabs(path):         # a file that is there but does not load
                failed.append('%s: %s' % (path, e))
            continue
        if getattr(lib, 'cblas_sgemm', None) is None:
            return None, '%s has no cblas_sgemm' % path
        # Both must come before MKL's first computing call; where MKL was already
        # running in this process (a numpy built on MKL) they return the layer
        # in force, and its threads are set to 1 below and by minicaffe.threads.
        lib.MKL_Set_Interface_Layer.restype = ctypes.c_int
        lib.MKL_Set_Threading_Layer.restype = ctypes.c_int
        lib.MKL_Set_Interface_Layer(_MKL_INTERFACE_LP64)
        layer = lib.MKL_Set_Threading_Layer(_MKL_THREADING_SEQUENTIAL)
        lib.MKL_Set_Num_Threads(1)
        fn = _bind_symbol(lib, 'cblas_sgemm', ctypes.c_int32)
        if not _works(fn):
            return None, '%s gave a wrong answer to a small product' % path
        return (fn, {'name': 'mkl', 'version': _mkl_version(lib), 'library': _mkl_path(path),
                     'threading': _MKL_LAYERS.get(layer, 'layer %d' % layer), 'reason': None,
                     'threads_per_call': lib.MKL_Get_Max_Threads}), None
    if failed:
        return None, 'libmkl_rt did not load (%s)' % '; '.join(failed)
    return None, ('libmkl_rt not found (no `mkl` package, nothing in %s/lib, nothing on the'
                  ' loader\'s path; pip install mkl)' % sys.prefix)


def _mkl_version(lib):
    buf = ctypes.create_string_buffer(256)
    try:
        lib.MKL_Get_Version_String(buf, len(buf))
    except AttributeError:
        return None
    text = buf.value.decode('ascii', 'replace')
    # "Intel(R) oneAPI Math Kernel Library Version 2026.2.1-Product Build ..."
    words = text.split()
    return words[words.index('Version') + 1].split('-')[0] if 'Version' in words[:-1] else text


def _mkl_path(fallback):
    """The file libmkl_rt was loaded from (a bare name is resolved by the loader)."""
    for path in _loaded_libraries():
        if os.path.basename(path).startswith('libmkl_rt.so'):
            return path
    return fallback


def _call(fn, a, b, c, trans_a, trans_b, beta=1.0):
    m, n = c.shape
    k = a.shape[0] if trans_a else a.shape[1]
    fn(_ROW_MAJOR, _TRANS if trans_a else _NO_TRANS, _TRANS if trans_b else _NO_TRANS,
       m, n, k, 1.0, a.ctypes.data, a.strides[0] // 4, b.ctypes.data, b.strides[0] // 4,
       beta, c.ctypes.data, c.strides[0] // 4)


def _row_major(x):
    """Whether a 2-D float32 array can be handed to BLAS as it is (rows of
    contiguous elements)."""
    return (x.dtype == np.float32 and x.ndim == 2 and x.strides[1] == 4
            and x.strides[0] >= max(1, x.shape[1]) * 4 and x.strides[0] % 4 == 0)


# gemm_blocks: products of fewer multiply-adds run as one call; larger ones are
# cut across the longer of the output's two sides into at most GEMM_MAX_CHUNKS
# blocks of at least GEMM_CHUNK_MIN_SIDE rows/columns (a multiple of
# GEMM_CHUNK_ALIGN, the BLAS kernels' width) and GEMM_CHUNK_MIN_MACS.  Each block
# packs the shared operand again (the BLAS's own threads share it) and pays a
# call: on the bench nets' products (CaffeNet's convolutions and fc6, the LSTMs,
# LeNet's conv2), run one after another on one thread, 4 blocks took 1-10% more
# CPU time than one call, 8 blocks 5-25%.  So at most 4: enough for 2-4 cores to
# share a product and to even out a core that another process takes for a while
# (on more cores a product still uses at most 4 of them).
GEMM_SPLIT_MIN_MACS = 1 << 23
GEMM_CHUNK_MIN_MACS = 1 << 22
GEMM_CHUNK_MIN_SIDE = 128
GEMM_CHUNK_ALIGN = 16
GEMM_MAX_CHUNKS = 4
# numpy's fallback (no CBLAS found): the largest temporary product, in elements
FALLBACK_TEMP_ELEMS = 1 << 16


def gemm_blocks(m, n, k):
    """(axis, bounds): an (m x k) @ (k x n) product is computed in blocks
    [bounds[i], bounds[i+1]) of output rows (axis 0) or columns (axis 1).  A
    function of the shape only, so the sums are the same on any thread count."""
    axis = 0 if m >= n else 1
    side = m if axis == 0 else n
    macs = m * n * k
    chunks = 1
    if macs >= GEMM_SPLIT_MIN_MACS:
        chunks = min(GEMM_MAX_CHUNKS, side // GEMM_CHUNK_MIN_SIDE, macs // GEMM_CHUNK_MIN_MACS)
        if chunks == 3:
            # 3 blocks keep one of 2 cores idle for a third of the product (LeNet's
            # conv2 weight gradient and ip1 forward, 500 rows): 2 blocks instead
            chunks = 2
    if chunks <= 1:
        return axis, [0, side]
    width = -(-side // chunks)
    width = -(-width // GEMM_CHUNK_ALIGN) * GEMM_CHUNK_ALIGN
    return axis, list(range(0, side, width)) + [side]


def gemm_k_blocks(m, n, k):
    """Bounds [bounds[i], bounds[i+1]) over the inner dimension k of an (m x k)
    @ (k x n) product that is large but whose output gemm_blocks cannot cut
    (both sides short: e.g. 25 x 20 over k = 36864, a conv1-like weight gradient),
    for gemm_summed_over_k; [0, k] when it needs no cut.  A function of the
    shape only, so the sums are the same on any thread count."""
    macs = m * n * k
    if macs < GEMM_SPLIT_MIN_MACS or len(gemm_blocks(m, n, k)[1]) > 2:
        return [0, k]
    chunks = min(GEMM_MAX_CHUNKS, k // GEMM_CHUNK_MIN_SIDE, macs // GEMM_CHUNK_MIN_MACS)
    if chunks <= 1:
        return [0, k]
    width = -(-k // chunks)
    width = -(-width // GEMM_CHUNK_ALIGN) * GEMM_CHUNK_ALIGN
    return list(range(0, k, width)) + [k]


def gemm_summed_over_k(a, b, out, trans_a=False, trans_b=False, any_blas=False):
    """out = op(a) @ op(b) (float32 2-D), where gemm_k_blocks cuts k: each block
    of k is one BLAS call on a worker thread into a buffer of its own, and the
    partial products are added in block order -- a product with a short output
    and a long k then uses every core.  The sums are grouped differently from
    one call's (by block): for callers free to change the summation order (the
    DEFAULT convolution engine); elsewhere gemm.  Returns out."""
    m = a.shape[1] if trans_a else a.shape[0]
    k = a.shape[0] if trans_a else a.shape[1]
    n = b.shape[0] if trans_b else b.shape[1]
    bounds = gemm_k_blocks(m, n, k)
    if len(bounds) == 2:
        return gemm(a, b, out, trans_a, trans_b, any_blas=any_blas)
    parts = np.empty((len(bounds) - 1, m, n), np.float32)
    fn = short_k_sgemm(k) if any_blas else _sgemm()

    def block(i):
        lo, hi = bounds[i], bounds[i + 1]
        _gemm_block(a[lo:hi] if trans_a else a[:, lo:hi], b[:, lo:hi] if trans_b else b[lo:hi],
                    parts[i], trans_a, trans_b, False, fn=fn)
    run_chunks(len(bounds) - 1, block)
    np.copyto(out, parts[0])
    for p in parts[1:]:
        out += p
    return out


def short_k_sgemm(k):
    """The sgemm for a product of inner dimension k from a caller that accepts
    another BLAS's rounding: MKL's where SHORT_K's rule applies, else the
    chosen BLAS's (None: numpy's products)."""
    fn = _sgemm()
    if k <= SHORT_K and _state['short_k'] is not None:
        return _state['short_k'][0]
    return fn


def gemm(a, b, out=None, trans_a=False, trans_b=False, accumulate=False, scratch=None,
         any_blas=False, split=True):
    """out = op(a) @ op(b), or out += op(a) @ op(b) with accumulate (Caffe's
    caffe_cpu_gemm with beta 0 or 1); op(x) = x.T where trans_x; float32 2-D.

    a and b are the stored matrices (a (k, m) when trans_a, else (m, k)); out
    (m, n) is written in place (a new array if None).  Large products run in
    blocks on the worker threads (gemm_blocks); small ones are one call, numpy's
    own product where nothing is accumulated.  scratch, if given, is a (m, n)
    array for the fallback's temporary.  any_blas: the caller accepts another
    BLAS's rounding, so a short product may run on MKL (SHORT_K).  split=False:
    one call whatever the size, for a caller that runs its own blocks on the
    threads (cut again, a block's pieces would run one after another on its
    thread, each packing the shared operand again: 2-4% slower)."""
    if out is None:
        m = a.shape[1] if trans_a else a.shape[0]
        n = b.shape[0] if trans_b else b.shape[1]
        out = np.zeros((m, n), np.float32) if accumulate else np.empty((m, n), np.float32)
    run_calls(gemm_tasks(a, b, out, trans_a, trans_b, accumulate, scratch, any_blas, split))
    return out


def gemm_tasks(a, b, out, trans_a=False, trans_b=False, accumulate=False, scratch=None,
               any_blas=False, split=True):
    """gemm's work as a list of calls, one per block of the output
    (gemm_blocks), for a caller that runs them on the worker threads together
    with other independent work; gemm runs exactly these, so the numbers are
    the same."""
    m = a.shape[1] if trans_a else a.shape[0]
    k = a.shape[0] if trans_a else a.shape[1]
    n = b.shape[0] if trans_b else b.shape[1]
    fn = short_k_sgemm(k) if any_blas else _sgemm()
    axis, bounds = gemm_blocks(m, n, k) if split else (0, [0, m])
    if len(bounds) == 2 or fn is None:
        # (numpy's fallback takes the product whole: it would copy a block of
        # columns of b, which for dx = dy W is a block of the weights)
        return [lambda: _gemm_block(a, b, out, trans_a, trans_b, accumulate, scratch,
                                    whole=True, fn=fn)]

    def block(lo, hi):
        if axis == 0:
            _gemm_block(a[:, lo:hi] if trans_a else a[lo:hi], b, out[lo:hi],
                        trans_a, trans_b, accumulate, fn=fn)
        else:
            _gemm_block(a, b[lo:hi] if trans_b else b[:, lo:hi], out[:, lo:hi],
                        trans_a, trans_b, accumulate, fn=fn)
    return [lambda lo=lo, hi=hi: block(lo, hi) for lo, hi in zip(bounds, bounds[1:])]


def _gemm_block(a, b, c, trans_a, trans_b, accumulate, scratch=None, whole=False, fn=None):
    """One BLAS call: c = (or +=) op(a) @ op(b), on fn (default: the chosen
    BLAS's sgemm)."""
    if c.size == 0:
        return
    if fn is None:
        fn = _sgemm()
    direct = (fn is not None and _row_major(a) and _row_major(b) and _row_major(c)
              and c.flags.writeable)
    op_a, op_b = (a.T if trans_a else a), (b.T if trans_b else b)
    numpy_blas = fn is None or (fn is _state['sgemm'] and _state['info']['name'] != 'mkl')
    if not accumulate:
        if (whole and c.flags.c_contiguous and c.dtype == op_a.dtype == op_b.dtype
                and not (direct and not numpy_blas)):
            # numpy's own call (gemv where a side is 1, as Caffe's InnerProduct);
            # with MKL chosen, MKL's sgemm below instead
            np.dot(op_a, op_b, out=c)
        elif direct:
            _call(fn, a, b, c, trans_a, trans_b, beta=0.0)
        else:
            c[...] = np.dot(op_a, op_b)
        return
    if direct:
        _call(fn, a, b, c, trans_a, trans_b)
        return
    if scratch is not None and whole and c.flags.c_contiguous:
        c += np.dot(op_a, op_b, out=scratch)
        return
    # no BLAS to accumulate into c: the product's temporary is cut into row
    # blocks of FALLBACK_TEMP_ELEMS, so a weight gradient (fc6: 151 MB) gets none
    # of its own size
    rows = max(1, FALLBACK_TEMP_ELEMS // max(1, c.shape[1]))
    for lo in range(0, c.shape[0], rows):
        c[lo:lo + rows] += np.dot(op_a[lo:lo + rows], op_b)


def gemm_accumulate(a, b, c, trans_a=False, trans_b=False, scratch=None):
    """c += op(a) @ op(b), op(x) = x.T where trans_x; all float32 2-D arrays.

    a and b are the stored matrices (a (k, m) when trans_a, else (m, k)).  c is
    updated in place.  scratch, if given, is a (m, n) array for the fallback."""
    return gemm(a, b, c, trans_a, trans_b, accumulate=True, scratch=scratch)


def uses_blas():
    """Whether gemm_accumulate calls BLAS directly (else numpy's product and add)."""
    return _sgemm() is not None


def name():
    """The chosen BLAS's name: 'mkl', 'openblas', 'blas' (another CBLAS) or 'numpy'."""
    if not _state['looked']:
        select()
    return _state['info']['name']


def blas_info():
    """Which BLAS minicaffe's GEMMs run on, chosen at first use (select()):
    {'name': 'mkl' | 'openblas' | 'blas' | 'numpy', 'version', 'library' (its
    file), 'threading' (the library's threading layer), 'threads_per_call' (as
    the library reports it: 1 under minicaffe.threads' policy), 'workers'
    (minicaffe's threads, which run the blocks of large products), 'reason'
    (why numpy's products, if so), 'short_k' (the BLAS of SHORT_K's products,
    or None)}."""
    from .threads import num_threads
    if not _state['looked']:
        select()
    info = dict(_state['info'])
    workers = num_threads()         # (sets the BLAS to one thread on first use)
    if callable(info['threads_per_call']):
        info['threads_per_call'] = info['threads_per_call']()
    info['workers'] = workers
    info['short_k'] = None if _state['short_k'] is None else 'mkl %s' % _state['short_k'][1]
    return info


def describe():
    """One line for logs: which BLAS minicaffe's GEMMs run on and with how many
    threads, e.g. 'mkl 2026.2 (sequential, /usr/lib/libmkl_rt.so.3), 1 thread per
    call, on 2 minicaffe threads'."""
    info = blas_info()
    if info['name'] == 'numpy':
        return 'numpy %s products (%s)' % (info['version'], info['reason'])
    detail = ', '.join(str(x) for x in (info['threading'], info['library']) if x)
    per_call = info['threads_per_call']
    short = ('' if info['short_k'] is None else '; %s for the DEFAULT convolution engine\'s'
             ' products with k <= %d' % (info['short_k'], SHORT_K))
    return '%s %s (%s), %s thread%s per call, on %d minicaffe thread%s%s' % (
        info['name'], info['version'] or '', detail, '?' if per_call is None else per_call,
        '' if per_call == 1 else 's', info['workers'], '' if info['workers'] == 1 else 's', short)
