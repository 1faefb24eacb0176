"""minicaffe.cmath rounds as the C library's float functions Caffe calls."""
import ctypes
import ctypes.util

import numpy as np
import pytest

from minicaffe import cmath


@pytest.fixture(scope='module')
def libm():
    name = ctypes.util.find_library('m')
    if name is None:
        pytest.skip('no C math library to compare with')
    return ctypes.CDLL(name)


def _c(lib, name, nargs=1, double=False):
    fn = getattr(lib, name)
    t = ctypes.c_double if double else ctypes.c_float
    fn.restype, fn.argtypes = t, [t] * nargs
    return fn


def _disagreeing(ours, want, max_ulps=1):
    """How many values differ, after checking that none differs by more than max_ulps."""
    ulps = np.abs(ours.view(np.int32).astype(np.int64) - want.view(np.int32))
    assert ulps.max() <= max_ulps
    return np.count_nonzero(ulps)


X = (np.random.default_rng(0).standard_normal(5000) * 6).astype(np.float32)
POS = np.abs(X) + np.float32(1e-3)


@pytest.mark.parametrize('name,fn,x,at_most,max_ulps', [
    ('expf', cmath.expf, X, 10, 1),          # numpy's float32 exp: ~1900 of 5000 differ
    ('logf', cmath.logf, POS, 50, 1),
    ('tanhf', cmath.tanhf, X, 700, 2),       # glibc's tanhf is not correctly rounded
])
def test_unary_functions_round_as_the_c_library(libm, name, fn, x, at_most, max_ulps):
    c = _c(libm, name)
    want = np.array([c(float(v)) for v in x], np.float32)
    assert _disagreeing(fn(x), want, max_ulps) <= at_most


def test_powf_rounds_as_the_c_library(libm):
    c = _c(libm, 'powf', 2)
    want = np.array([c(float(v), -0.75) for v in POS], np.float32)
    assert _disagreeing(cmath.powf(POS, -0.75), want) <= 25


def test_sigmoid_is_caffes_double_expression(libm):
    tanh = _c(libm, 'tanh', double=True)
    want = np.array([0.5 * tanh(0.5 * float(v)) + 0.5 for v in X], np.float32)
    ours = cmath.sigmoid(X)
    # the double tanh's last bit (numpy's and glibc's may differ) survives the
    # cancellation in 0.5 tanh + 0.5 where the sigmoid is tiny
    tiny = want < 1e-5
    assert _disagreeing(ours[~tiny], want[~tiny]) <= 5
    np.testing.assert_allclose(ours[tiny], want[tiny], rtol=1e-5)
    # far out the double expression keeps the tail that float32 tanh rounds away
    assert cmath.sigmoid(np.float32([-20.0]))[0] > 0


def test_in_place_strided_and_empty():
    x = np.arange(24, dtype=np.float32).reshape(4, 6) / 8
    want = cmath.expf(x.copy())
    view = x[:, ::2]                            # not contiguous: written back in place
    cmath.expf(view, out=view)
    np.testing.assert_array_equal(x[:, ::2], want[:, ::2])
    np.testing.assert_array_equal(x[:, 1::2], (np.arange(24, dtype=np.float32).reshape(4, 6)
                                               / 8)[:, 1::2])
    y = np.ones(5, np.float32)
    assert cmath.logf(y, out=y) is y and not y.any()
    assert cmath.tanhf(np.zeros((0, 3), np.float32)).shape == (0, 3)
    with np.errstate(all='raise'):               # C semantics, no floating-point warnings
        big = cmath.expf(np.float32([100.0, -200.0]))
    assert np.isinf(big[0]) and big[1] == 0
