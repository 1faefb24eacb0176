"""minicaffe.blas: gemm_accumulate (c += op(a) @ op(b), through BLAS with beta = 1
or numpy's fallback) on each BLAS, and the run-time choice of the BLAS (MKL when
installed, numpy's OpenBLAS otherwise, MINICAFFE_BLAS to force)."""
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import minicaffe
from minicaffe import blas
from minicaffe.errors import MinicaffeError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(params=['openblas', 'mkl', 'numpy'])
def backend(request, monkeypatch):
    if request.param == 'numpy':
        monkeypatch.setitem(blas._state, 'looked', True)
        monkeypatch.setitem(blas._state, 'sgemm', None)
        yield request.param
        return
    try:
        if blas.select(request.param)['name'] != request.param:
            pytest.skip('%s is not available on this platform' % request.param)
        yield request.param
    finally:
        blas.select()


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


# ------------------------------------------------------------ choosing the BLAS
def _have_mkl():
    return blas._load_mkl()[0] is not None


needs_mkl = pytest.mark.skipif(not _have_mkl(), reason='MKL is not installed (pip install mkl)')


@needs_mkl
@pytest.mark.parametrize('m,k,n,ta,tb', [(96, 363, 3025, False, False), (384, 1690, 2304, False, True),
                                         (4096, 10, 9216, True, False), (10, 4096, 9216, False, False),
                                         (100, 1000, 4000, False, True), (1, 4096, 4096, False, True)])
def test_mkl_and_openblas_agree_on_the_nets_products(m, k, n, ta, tb):
    a = _rand(*((k, m) if ta else (m, k)), seed=1)
    b = _rand(*((n, k) if tb else (k, n)), seed=2)
    c0 = _rand(m, n, seed=3)
    want = (a.T if ta else a).astype(np.float64) @ (b.T if tb else b).astype(np.float64)
    got = {}
    try:
        for name in ('openblas', 'mkl'):
            assert blas.select(name)['name'] == name
            y = blas.gemm(a, b, trans_a=ta, trans_b=tb)
            c = blas.gemm(a, b, c0.copy(), trans_a=ta, trans_b=tb, accumulate=True)
            got[name] = y, c
    finally:
        blas.select()
    tol = 2e-6 * np.abs(want).max() * np.sqrt(k)
    for y, c in got.values():
        assert np.abs(y - want).max() <= tol and np.abs(c - (c0 + want)).max() <= tol
    if k >= 300:    # long sums, different libraries, different orders: both really ran
        assert not np.array_equal(got['openblas'][0], got['mkl'][0])


def test_a_missing_mkl_falls_back_to_openblas_with_a_log_line(monkeypatch, caplog):
    monkeypatch.setattr(blas, 'mkl_candidates', lambda: ['libmkl_rt_is_not_here.so.3'])
    monkeypatch.setattr(blas, 'cpu_vendor', lambda: 'GenuineIntel')
    caplog.set_level(logging.INFO, logger='minicaffe')
    try:
        assert blas.select('mkl')['name'] == 'openblas'
        forced = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert forced and 'MKL was asked for but libmkl_rt not found' in forced[0].getMessage()
        assert 'using OpenBLAS' in forced[0].getMessage()
        caplog.clear()
        assert blas.select('auto')['name'] == 'openblas'
        line = [r.getMessage() for r in caplog.records if 'MKL not used' in r.getMessage()]
        assert line and 'pip install mkl' in line[0]
        assert all(r.levelno < logging.WARNING for r in caplog.records)   # not asked for: no warning
        np.testing.assert_allclose(blas.gemm(_rand(5, 6), _rand(6, 7)),
                                   _rand(5, 6).astype(np.float64) @ _rand(6, 7), rtol=1e-5)
    finally:
        blas.select()


@needs_mkl
@pytest.mark.parametrize('vendor,want', [('GenuineIntel', 'mkl'), ('AuthenticAMD', 'openblas'),
                                         (None, 'openblas')])
def test_auto_takes_mkl_on_intel_cpus_only(monkeypatch, caplog, vendor, want):
    monkeypatch.setattr(blas, 'cpu_vendor', lambda: vendor)
    caplog.set_level(logging.INFO, logger='minicaffe')
    try:
        assert blas.select('auto')['name'] == want
        assert blas.select('mkl')['name'] == 'mkl'           # asked for: on any CPU
    finally:
        blas.select()
    if want == 'openblas':
        line = [r.getMessage() for r in caplog.records if 'MKL is installed but not used' in r.getMessage()]
        assert line and (vendor or 'unidentified') in line[0] and 'MINICAFFE_BLAS=mkl' in line[0]


@needs_mkl
def test_auto_on_other_cpus_runs_short_products_of_any_blas_callers_on_mkl(monkeypatch, caplog):
    """auto on a non-Intel CPU: OpenBLAS, but products with k <= SHORT_K from a
    caller that accepts any BLAS (the DEFAULT convolution engine) run on MKL;
    nothing else does, and never where a BLAS was asked for."""
    calls = []
    real_call = blas._call
    monkeypatch.setattr(blas, '_call', lambda fn, *a, **k: calls.append(fn) or real_call(fn, *a, **k))
    monkeypatch.setattr(blas, 'cpu_vendor', lambda: 'AuthenticAMD')
    caplog.set_level(logging.INFO, logger='minicaffe')
    try:
        info = blas.select('auto')
        assert info['name'] == 'openblas' and info['short_k'].startswith('mkl ')
        assert 'k <= %d' % blas.SHORT_K in blas.describe()
        assert any('MKL runs the DEFAULT convolution' in r.getMessage() for r in caplog.records)
        mkl_fn, main = blas._state['short_k'][0], blas._sgemm()
        for any_blas, k, want in ((True, 50, mkl_fn), (False, 50, main), (True, 300, main)):
            a, b = _rand(k, 40, seed=k), _rand(k, 30, seed=k + 1)
            c = np.zeros((40, 30), np.float32)
            del calls[:]
            blas.gemm(a, b, c, trans_a=True, accumulate=True, any_blas=any_blas)   # BLAS calls
            np.testing.assert_allclose(c, a.T.astype(np.float64) @ b, rtol=1e-5, atol=1e-5)
            assert calls and all(fn is want for fn in calls), (any_blas, k)
        for forced in ('openblas', 'mkl'):
            assert blas.select(forced)['short_k'] is None
        monkeypatch.setattr(blas, 'cpu_vendor', lambda: 'GenuineIntel')
        assert blas.select('auto')['short_k'] is None                  # MKL for everything
        monkeypatch.setattr(blas, 'cpu_vendor', lambda: 'AuthenticAMD')
        monkeypatch.setattr(blas, 'mkl_candidates', lambda: ['libmkl_rt_is_not_here.so.3'])
        info = blas.select('auto')
        assert info['name'] == 'openblas' and info['short_k'] is None
        assert 'k <=' not in blas.describe()
    finally:
        monkeypatch.undo()
        blas.select()


def test_cpu_vendor_reads_proc_cpuinfo():
    vendor = blas.cpu_vendor()
    if os.path.exists('/proc/cpuinfo'):
        assert vendor and ' ' not in vendor
    else:
        assert vendor is None


def test_an_mkl_file_that_does_not_load_is_named(monkeypatch, caplog, tmp_path):
    broken = tmp_path / 'libmkl_rt.so.3'
    broken.write_bytes(b'not a shared library')
    monkeypatch.setattr(blas, 'mkl_candidates', lambda: [str(broken)])
    try:
        assert blas.select('mkl')['name'] == 'openblas'
        assert any(str(broken) in r.getMessage() and 'did not load' in r.getMessage()
                   for r in caplog.records)
    finally:
        blas.select()


def test_an_unknown_choice_is_an_error(monkeypatch):
    monkeypatch.setenv('MINICAFFE_BLAS', 'fastest')
    with pytest.raises(MinicaffeError, match='MINICAFFE_BLAS must be one of auto, mkl, openblas'):
        blas.select()
    with pytest.raises(MinicaffeError, match="unknown BLAS 'atlas'"):
        blas.select('atlas')
    monkeypatch.delenv('MINICAFFE_BLAS')
    blas.select()


def test_blas_info_names_the_library_and_its_threads(blas_backend):
    info = minicaffe.blas_info()
    assert info['name'] == blas_backend
    assert os.path.exists(info['library'])
    assert info['threads_per_call'] == 1 and info['workers'] == minicaffe.get_num_threads()
    assert blas.describe().startswith(blas_backend + ' ')
    if blas_backend == 'mkl':
        assert info['threading'] == 'sequential'


NET = """name: "tiny" input: "data" input_shape { dim: 4 dim: 32 }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 16 weight_filler { type: "gaussian" std: 0.1 } } }"""

REPORT = 'import minicaffe, sys; info = minicaffe.blas_info(); print(info["name"], info["threads_per_call"])'


def _in_a_fresh_process(args, **env):
    env = dict(os.environ, PYTHONPATH=str(ROOT), **env)
    return subprocess.run([sys.executable] + args, env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize('choice', ['openblas', 'mkl', 'auto'])
def test_the_environment_chooses_in_a_fresh_process(choice):
    if choice == 'mkl' and not _have_mkl():
        pytest.skip('MKL is not installed')
    # MKL's and OpenBLAS's own thread settings do not matter: one thread per call
    r = _in_a_fresh_process(['-c', REPORT], MINICAFFE_BLAS=choice, MKL_NUM_THREADS='2',
                            OPENBLAS_NUM_THREADS='2', OMP_NUM_THREADS='2')
    assert r.returncode == 0, r.stderr
    intel = blas.cpu_vendor() == 'GenuineIntel'
    want = {'auto': 'mkl' if _have_mkl() and intel else 'openblas'}.get(choice, choice)
    assert r.stdout.split() == [want, '1']


@pytest.mark.parametrize('choice', ['openblas', 'mkl'])
def test_time_header_says_which_blas_ran(tmp_path, choice):
    if choice == 'mkl' and not _have_mkl():
        pytest.skip('MKL is not installed')
    (tmp_path / 'net.prototxt').write_text(NET)
    r = _in_a_fresh_process(['-m', 'minicaffe', 'time', str(tmp_path / 'net.prototxt'),
                             '--iterations', '2', '--threads', '2'], MINICAFFE_BLAS=choice)
    assert r.returncode == 0, r.stderr
    header = [line for line in r.stderr.splitlines() if 'BLAS:' in line]
    assert header and ('BLAS: %s ' % choice) in header[0]
    assert '1 thread per call, on 2 minicaffe threads' in header[0]


def test_an_unknown_choice_stops_the_cli_with_a_clear_error(tmp_path):
    (tmp_path / 'net.prototxt').write_text(NET)
    r = _in_a_fresh_process(['-m', 'minicaffe', 'time', str(tmp_path / 'net.prototxt'),
                             '--iterations', '1'], MINICAFFE_BLAS='fastest')
    assert r.returncode == 2
    assert 'minicaffe: error: MINICAFFE_BLAS must be one of auto, mkl, openblas' in r.stderr
    assert 'Traceback' not in r.stderr


def test_products_on_several_threads_wait_for_the_first_choice_of_the_blas(monkeypatch):
    """The first products, started on several threads at once, all run on the
    chosen BLAS: none sees a choice that another thread has half made."""
    import threading
    monkeypatch.setitem(blas._state, 'looked', False)
    monkeypatch.setitem(blas._state, 'ready', False)
    for loader in ('_load_openblas', '_load_mkl'):      # the others ask while the
        def slow(real=getattr(blas, loader)):          # choice is under way
            import time
            time.sleep(0.05)
            return real()
        monkeypatch.setattr(blas, loader, slow)
    a, b = _rand(40, 50), _rand(50, 60)
    results, errors, calls = [], [], []
    real_call = blas._call
    monkeypatch.setattr(blas, '_call', lambda fn, *args, **kw: calls.append(fn is not None)
                        or real_call(fn, *args, **kw))

    def work():
        try:
            results.append(blas.gemm(a, b, np.zeros((40, 60), np.float32), accumulate=True))
        except Exception as e:           # pragma: no cover - the failure being tested
            errors.append(e)
    threads_ = [threading.Thread(target=work) for _ in range(4)]
    for t in threads_:
        t.start()
    for t in threads_:
        t.join()
    assert not errors and len(results) == 4
    assert calls.count(True) >= 4          # each product a BLAS call (not numpy's fallback)
    for r in results:
        np.testing.assert_allclose(r, a.astype(np.float64) @ b, rtol=1e-5, atol=1e-5)
    assert blas._state['ready'] and blas._state['sgemm'] is not None
