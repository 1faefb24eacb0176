"""Accumulating GEMM, ``C += op(A) @ op(B)``, as Caffe's caffe_cpu_gemm with beta = 1.

Caffe accumulates every weight gradient into the diff with one BLAS call (beta =
1).  NumPy's matmul has no beta: ``C += A @ B`` writes the product to a temporary
and adds it in a second pass, which for fc6's 151 MB gradient (a product over
only the batch) costs twice the GEMM itself.  So the same BLAS numpy was built
with -- found among the libraries loaded into this process -- is called through
ctypes, with Caffe's arguments.  Where none can be found (another platform, a
BLAS without the CBLAS interface) or its answer to a small check is wrong, the
temporary-and-add fallback gives the same numbers up to rounding.
"""
import ctypes
import os

import numpy as np

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


def _call(fn, a, b, c, trans_a, trans_b):
    m, n = c.shape
    k = a.shape[0] if trans_a else a.shape[1]
    fn(_ROW_MAJOR, _TRANS if trans_a else _NO_TRANS, _TRANS if trans_b else _NO_TRANS,
       m, n, k, 1.0, a.ctypes.data, a.strides[0] // 4, b.ctypes.data, b.strides[0] // 4,
       1.0, c.ctypes.data, c.strides[0] // 4)


def _row_major(x):
    """Whether a 2-D float32 array can be handed to BLAS as it is (rows of
    contiguous elements)."""
    return (x.dtype == np.float32 and x.ndim == 2 and x.strides[1] == 4
            and x.strides[0] >= max(1, x.shape[1]) * 4 and x.strides[0] % 4 == 0)


def gemm_accumulate(a, b, c, trans_a=False, trans_b=False, scratch=None):
    """c += op(a) @ op(b), op(x) = x.T where trans_x; all float32 2-D arrays.

    a and b are the stored matrices (a (k, m) when trans_a, else (m, k)).  c is
    updated in place.  scratch, if given, is a (m, n) array for the fallback."""
    fn = _sgemm()
    if fn is not None and c.size and _row_major(a) and _row_major(b) and _row_major(c) \
            and c.flags.writeable:
        _call(fn, a, b, c, trans_a, trans_b)
        return c
    prod = np.dot(a.T if trans_a else a, b.T if trans_b else b,
                  out=scratch if scratch is not None and c.flags.c_contiguous else None)
    c += prod
    return c


def uses_blas():
    """Whether gemm_accumulate calls BLAS directly (else numpy's product and add)."""
    return _sgemm() is not None
