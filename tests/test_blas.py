"""gemm_accumulate: c += op(a) @ op(b), through BLAS (beta = 1) or numpy's fallback."""
import numpy as np
import pytest

from minicaffe import blas


@pytest.fixture(params=['blas', 'numpy'])
def backend(request, monkeypatch):
    if request.param == 'numpy':
        monkeypatch.setitem(blas._state, 'looked', True)
        monkeypatch.setitem(blas._state, 'sgemm', None)
    elif not blas.uses_blas():
        pytest.skip('no CBLAS sgemm found beside numpy on this platform')
    return request.param


def _rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize('trans_a,trans_b', [(False, False), (True, False), (False, True),
                                             (True, True)])
def test_accumulates_the_product(backend, trans_a, trans_b):
    m, n, k = 7, 5, 9
    a = _rand(*((k, m) if trans_a else (m, k)), seed=1)
    b = _rand(*((n, k) if trans_b else (k, n)), seed=2)
    c = _rand(m, n, seed=3)
    want = c.astype(np.float64) + (a.T if trans_a else a).astype(np.float64) @ (
        b.T if trans_b else b)
    out = blas.gemm_accumulate(a, b, c, trans_a=trans_a, trans_b=trans_b)
    assert out is c
    np.testing.assert_allclose(c, want, rtol=1e-5, atol=1e-5)


def test_row_strided_views_are_read_and_written_in_place(backend):
    big_a, big_b, big_c = _rand(6, 20, seed=1), _rand(20, 8, seed=2), _rand(12, 9, seed=3)
    a, b, c = big_a[:, 3:13], big_b[::2, :5], big_c[::2, 2:7]      # rows strided
    keep = big_c.copy()
    want = c.astype(np.float64) + a.astype(np.float64) @ b
    blas.gemm_accumulate(a, b, c)
    np.testing.assert_allclose(c, want, rtol=1e-5, atol=1e-5)
    untouched = np.ones(big_c.shape, bool)
    untouched[::2, 2:7] = False
    assert np.array_equal(big_c[untouched], keep[untouched])


def test_column_strided_inputs_fall_back_to_numpy():
    a = _rand(4, 12, seed=1)[:, ::2]            # elements not contiguous within a row
    b, c = _rand(6, 3, seed=2), _rand(4, 3, seed=3)
    want = c.astype(np.float64) + a.astype(np.float64) @ b
    blas.gemm_accumulate(a, b, c)
    np.testing.assert_allclose(c, want, rtol=1e-5, atol=1e-5)
