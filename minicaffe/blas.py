"""Accumulating GEMM, ``C += op(A) @ op(B)``, as Caffe's caffe_cpu_gemm with beta = 1.

Caffe accumulates every weight gradient into the diff with one BLAS call (beta =
1).  NumPy's matmul has no beta: ``C += A @ B`` writes the product to a temporary
and adds it in a second pass, which for fc6's 151 MB gradient (a product over
only the batch) costs twice the GEMM itself.  So the same BLAS numpy was built
with -- found among the libraries loaded into this process -- is called through
ctypes, with Caffe's arguments.  Where none can be found (another platform, a
BLAS without the CBLAS interface) or its answer to a small check is wrong, the
temporary-and-add fallback gives the same numbers up to rounding.

Large products are cut into blocks of rows or columns (gemm_blocks: the cut
depends only on the shapes) and the blocks run on minicaffe's worker threads,
each one single-threaded BLAS call (minicaffe.threads sets the BLAS to one
thread): the threads share the cores without oversubscribing them, and the
numbers do not depend on how many threads there are.
"""
import ctypes
import os

import numpy as np

from .threads import run_chunks

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112

# (symbol, integer type): OpenBLAS as bundled with numpy's wheels (ILP64,
# prefixed), a system ILP64 OpenBLAS, and plain CBLAS with 32-bit integers.
_SYMBOLS = (('scipy_cblas_sgemm64_', ctypes.c_int64), ('cblas_sgemm64_', ctypes.c_int64),
            ('scipy_cblas_sgemm', ctypes.c_int32), ('cblas_sgemm', ctypes.c_int32))

_state = {'sgemm': None, 'looked': False}


def _loaded_blas_libraries():
    """Paths of the shared libraries with 'blas' in their name mapped into this
    process (numpy's own BLAS among them once numpy is imported); Linux only."""
    paths = []
    try:
        with open('/proc/self/maps') as maps:
            for line in maps:
                path = line.split()[-1] if line.strip() else ''
                name = os.path.basename(path).lower()
                if path.startswith('/') and 'blas' in name and '.so' in name and path not in paths:
                    paths.append(path)
    except OSError:
        pass
    return paths


def _bind(path):
    try:
        lib = ctypes.CDLL(path)
    except OSError:
        return None
    for symbol, int_t in _SYMBOLS:
        fn = getattr(lib, symbol, None)
        if fn is None:
            continue
        ptr = ctypes.c_void_p
        fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, int_t, int_t, int_t,
                       ctypes.c_float, ptr, int_t, ptr, int_t, ctypes.c_float, ptr, int_t]
        fn.restype = None
        return fn
    return None


def _works(fn):
    """A 3x4 @ 4x2 accumulation checked against numpy (catches a wrong integer width)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((3, 4)).astype(np.float32)
    b = rng.standard_normal((4, 2)).astype(np.float32)
    c = np.ones((3, 2), np.float32)
    _call(fn, a, b, c, False, False)
    return np.allclose(c, 1 + a.astype(np.float64) @ b, rtol=1e-5, atol=1e-5)


def _sgemm():
    if not _state['looked']:
        _state['looked'] = True
        if os.environ.get('MINICAFFE_NUMPY_GEMM') != '1':
            for path in _loaded_blas_libraries():
                fn = _bind(path)
                if fn is not None and _works(fn):
                    _state['sgemm'] = fn
                    break
    return _state['sgemm']


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
    if chunks <= 1:
        return axis, [0, side]
    width = -(-side // chunks)
    width = -(-width // GEMM_CHUNK_ALIGN) * GEMM_CHUNK_ALIGN
    return axis, list(range(0, side, width)) + [side]


def gemm(a, b, out=None, trans_a=False, trans_b=False, accumulate=False, scratch=None):
    """out = op(a) @ op(b), or out += op(a) @ op(b) with accumulate (Caffe's
    caffe_cpu_gemm with beta 0 or 1); op(x) = x.T where trans_x; float32 2-D.

    a and b are the stored matrices (a (k, m) when trans_a, else (m, k)); out
    (m, n) is written in place (a new array if None).  Large products run in
    blocks on the worker threads (gemm_blocks); small ones are one call, numpy's
    own product where nothing is accumulated.  scratch, if given, is a (m, n)
    array for the fallback's temporary."""
    m = a.shape[1] if trans_a else a.shape[0]
    k = a.shape[0] if trans_a else a.shape[1]
    n = b.shape[0] if trans_b else b.shape[1]
    if out is None:
        out = np.zeros((m, n), np.float32) if accumulate else np.empty((m, n), np.float32)
    axis, bounds = gemm_blocks(m, n, k)
    if len(bounds) == 2:
        _gemm_block(a, b, out, trans_a, trans_b, accumulate, scratch, whole=True)
        return out

    def block(i):
        lo, hi = bounds[i], bounds[i + 1]
        if axis == 0:
            _gemm_block(a[:, lo:hi] if trans_a else a[lo:hi], b, out[lo:hi],
                        trans_a, trans_b, accumulate)
        else:
            _gemm_block(a, b[lo:hi] if trans_b else b[:, lo:hi], out[:, lo:hi],
                        trans_a, trans_b, accumulate)
    run_chunks(len(bounds) - 1, block)
    return out


def _gemm_block(a, b, c, trans_a, trans_b, accumulate, scratch=None, whole=False):
    """One BLAS call: c = (or +=) op(a) @ op(b)."""
    if c.size == 0:
        return
    fn = _sgemm()
    direct = (fn is not None and _row_major(a) and _row_major(b) and _row_major(c)
              and c.flags.writeable)
    op_a, op_b = (a.T if trans_a else a), (b.T if trans_b else b)
    if not accumulate:
        if whole and c.flags.c_contiguous and c.dtype == op_a.dtype == op_b.dtype:
            # numpy's own call (gemv where a side is 1, as Caffe's InnerProduct)
            np.dot(op_a, op_b, out=c)
        elif direct:
            _call(fn, a, b, c, trans_a, trans_b, beta=0.0)
        else:
            c[...] = np.dot(op_a, op_b)
        return
    if direct:
        _call(fn, a, b, c, trans_a, trans_b)
        return
    use_scratch = scratch is not None and whole and c.flags.c_contiguous
    c += np.dot(op_a, op_b, out=scratch if use_scratch else None)


def gemm_accumulate(a, b, c, trans_a=False, trans_b=False, scratch=None):
    """c += op(a) @ op(b), op(x) = x.T where trans_x; all float32 2-D arrays.

    a and b are the stored matrices (a (k, m) when trans_a, else (m, k)).  c is
    updated in place.  scratch, if given, is a (m, n) array for the fallback."""
    return gemm(a, b, c, trans_a, trans_b, accumulate=True, scratch=scratch)


def uses_blas():
    """Whether gemm_accumulate calls BLAS directly (else numpy's product and add)."""
    return _sgemm() is not None


def describe():
    """Which BLAS numpy's products (and gemm_accumulate) run on and with how many
    threads, e.g. 'openblas 0.3.31 (SkylakeX, pthreads), 2 threads' (from
    threadpoolctl, which reads it from the loaded library itself)."""
    try:
        from threadpoolctl import threadpool_info
        infos = [i for i in threadpool_info() if i.get('user_api') == 'blas']
    except Exception:           # not installed, or a library it cannot query
        infos = []
    if not infos:
        return 'BLAS not identified (threadpoolctl missing or no BLAS loaded)'
    i = infos[0]
    detail = ', '.join(str(i[k]) for k in ('architecture', 'threading_layer') if i.get(k))
    return '%s %s%s, %d thread%s' % (i.get('internal_api', '?'), i.get('version') or '',
                                     ' (%s)' % detail if detail else '', i.get('num_threads', 0),
                                     '' if i.get('num_threads') == 1 else 's')
