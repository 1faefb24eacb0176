"""The C math functions Caffe's CPU layers call, rounded as glibc rounds them.

Caffe calls expf, logf, tanhf and powf on floats (``exp(x)`` with a float x in
C++), and its Sigmoid works in double (``0.5 * tanh(0.5 * x) + 0.5``: the
literals are doubles).  numpy's float32 exp/log/tanh/power are SIMD
approximations on AVX-512 machines that differ from glibc's in the last bit for
15-40% of values; the double-precision function rounded once to float agrees
with glibc's expf on all but ~0.03% of values, logf and powf ~0.1-0.5%, tanhf
~10% (glibc's tanhf is itself not correctly rounded).  Nets that amplify last
bits (the LRCN captioning nets feed raw pixels) need Caffe's numbers, so the
layers use these.

Each function takes a float32 array, computes in blocks through a reused
double-precision scratch array on the worker threads, and writes float32 into
``out`` (a new array by default; ``out`` may be ``x`` itself).
"""
import numpy as np

from .im2col import elementwise, workspace


def _via_double(fn, x, out):
    """out = float32(fn(float64(x))) block by block; fn(w) works in place on w."""
    x = np.asarray(x)
    if out is None:
        out = np.empty(x.shape, np.float32)
    src = x.reshape(-1) if x.flags.c_contiguous else np.ascontiguousarray(x).reshape(-1)
    dst = out.reshape(-1) if out.flags.c_contiguous else np.empty(out.size, np.float32)

    def part(lo, hi):
        w = workspace('cmath_f64', (hi - lo,), np.float64)
        np.copyto(w, src[lo:hi])
        with np.errstate(over='ignore', under='ignore', divide='ignore', invalid='ignore'):
            fn(w)
            np.copyto(dst[lo:hi], w)          # (overflow to inf, as the C function)
    elementwise(part, src.size)
    if not out.flags.c_contiguous:
        out[...] = dst.reshape(out.shape)
    return out


def expf(x, out=None):
    """glibc's expf, elementwise."""
    return _via_double(lambda w: np.exp(w, out=w), x, out)


def logf(x, out=None):
    """glibc's logf, elementwise."""
    return _via_double(lambda w: np.log(w, out=w), x, out)


def tanhf(x, out=None):
    """glibc's tanhf, elementwise (as near as the double tanh rounded to float)."""
    return _via_double(lambda w: np.tanh(w, out=w), x, out)


def powf(x, y, out=None):
    """glibc's powf(x, y) for a scalar exponent y, elementwise."""
    y = np.float64(np.float32(y))
    if y == 0.5:
        # numpy computes x^0.5 as sqrt(x): sqrt(-inf) = NaN and sqrt(-0) = -0, where
        # C's pow gives +inf and +0 (checked against libm in tests/test_cmath.py)
        def fn(w):
            w[w == -np.inf] = np.inf
            np.power(w, y, out=w)
            w += 0.0
        return _via_double(fn, x, out)
    return _via_double(lambda w: np.power(w, y, out=w), x, out)


def sigmoid(x, out=None):
    """Caffe's SigmoidLayer: 0.5 * tanh(0.5 * x) + 0.5 evaluated in double, rounded."""
    def fn(w):
        w *= 0.5
        np.tanh(w, out=w)
        w *= 0.5
        w += 0.5
    return _via_double(fn, x, out)
