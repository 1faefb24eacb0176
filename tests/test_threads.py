"""minicaffe.threads and blas.gemm: the thread setting reaches the pool and the
BLAS, work is cut the same way whatever the thread count, and the numbers do
not depend on it."""
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import threadpoolctl

import minicaffe
from minicaffe import blas, threads
from minicaffe.commands import cli
from minicaffe.errors import MinicaffeError

ROOT = Path(__file__).resolve().parents[1]
LENET = ROOT.parent / 'shared' / 'bench' / 'lenet_b64.prototxt'


def _blas_threads():
    return [m['num_threads'] for m in threadpoolctl.threadpool_info() if m['user_api'] == 'blas']


def _rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _subprocess(code, **env_changes):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for k, v in env_changes.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    out = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


# ------------------------------------------------------------------ the setting
def test_set_num_threads_reaches_the_pool_and_the_blas(set_threads):
    set_threads(3, split_small=True)
    assert minicaffe.get_num_threads() == threads.num_threads() == 3
    assert _blas_threads() and set(_blas_threads()) == {1}
    seen = set()
    lock = threading.Lock()
    release = threading.Barrier(3, timeout=60)

    def part(lo, hi):
        me = threading.get_ident()
        with lock:
            first = me not in seen
            seen.add(me)
        if first:                       # hold each thread until three hold a chunk
            try:
                release.wait()
            except threading.BrokenBarrierError:
                pass
    threads.parallel_for(12, part, 12)
    assert len(seen) == 3
    minicaffe.set_num_threads(1)
    assert threads.num_threads() == 1 and set(_blas_threads()) == {1}


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason='OpenBLAS caps its threads at the cores')
def test_the_blas_is_limited_however_numpy_was_loaded():
    # OpenBLAS read 2 threads from the environment when numpy loaded; importing
    # minicaffe sets it to one at run time; MINICAFFE_NUM_THREADS sets ours.
    code = ('import numpy, threadpoolctl, json\n'
            'before = [m["num_threads"] for m in threadpoolctl.threadpool_info()'
            ' if m["user_api"] == "blas"]\n'
            'import minicaffe\n'
            'after = [m["num_threads"] for m in threadpoolctl.threadpool_info()'
            ' if m["user_api"] == "blas"]\n'
            'print(json.dumps([before, after, minicaffe.get_num_threads()]))\n')
    before, after, ours = json.loads(_subprocess(code, OPENBLAS_NUM_THREADS='2',
                                                 MINICAFFE_NUM_THREADS='3'))
    assert before and set(before) == {2}
    assert set(after) == {1}
    assert ours == 3


def test_default_is_one_thread_per_core_the_process_may_use():
    code = 'import minicaffe; print(minicaffe.get_num_threads())'
    got = int(_subprocess(code, MINICAFFE_NUM_THREADS=None, MPI_LOCALNRANKS=None,
                          OMPI_COMM_WORLD_LOCAL_SIZE=None))
    assert got == min(len(os.sched_getaffinity(0)), threads.DEFAULT_MAX_THREADS)
    # a narrower affinity (taskset) narrows the default
    code1 = 'import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); ' + code
    assert int(_subprocess(code1, MINICAFFE_NUM_THREADS=None)) == 1


def test_mpi_ranks_share_the_cores_unless_the_count_was_chosen(set_threads, monkeypatch):
    monkeypatch.setattr(threads, 'available_cores', lambda: 8)
    monkeypatch.delenv('MINICAFFE_NUM_THREADS', raising=False)
    monkeypatch.setitem(threads._state, 'chosen', False)
    assert threads.share_cores(4) == threads.num_threads() == 2
    assert threads.share_cores(1) == 8
    monkeypatch.setenv('MINICAFFE_NUM_THREADS', '3')
    assert threads.share_cores(4) == 8                   # the environment chose: unchanged
    monkeypatch.delenv('MINICAFFE_NUM_THREADS')
    set_threads(5)                                       # --threads / set_num_threads chose
    assert threads.share_cores(4) == 5
    assert set(_blas_threads()) == {1}


@pytest.mark.parametrize('var', threads._LOCAL_RANKS_ENV)
def test_mpi_ranks_on_one_machine_share_its_cores(var, monkeypatch):
    monkeypatch.setattr(threads, 'available_cores', lambda: 8)
    monkeypatch.setenv(var, '3')
    assert threads.default_num_threads() == 2
    monkeypatch.setenv(var, '16')
    assert threads.default_num_threads() == 1


@pytest.mark.parametrize('value', ['0', '-2', 'two'])
def test_bad_thread_counts_are_clear_errors(value, monkeypatch, capsys):
    with pytest.raises(MinicaffeError, match='at least 1|positive'):
        minicaffe.set_num_threads(int(value) if value.lstrip('-').isdigit() else 0)
    monkeypatch.setenv('MINICAFFE_NUM_THREADS', value)
    with pytest.raises(MinicaffeError, match='MINICAFFE_NUM_THREADS must be a positive integer'):
        threads._env_threads()
    assert cli.main(['time', str(LENET), '--threads', value]) == 2
    assert '--threads: expected a positive integer' in capsys.readouterr().err


@pytest.mark.parametrize('command', cli.COMPUTING)
def test_every_computing_command_has_threads(command):
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == 'command')
    assert '--threads' in sub.choices[command].format_help()


@pytest.mark.skipif(not LENET.exists(), reason='needs ../shared/bench')
def test_cli_threads_option_sets_the_count(set_threads, capsys):
    set_threads(1)
    assert cli.main(['-q', 'time', str(LENET), '--iterations', '1', '--threads', '2']) == 0
    assert threads.num_threads() == 2 and set(_blas_threads()) == {1}


# ------------------------------------------------------------------ the chunks
def test_chunks_depend_on_the_size_only(set_threads):
    seen = {}
    for n in (1, 2, 3, 5):
        set_threads(n)
        calls = []
        lock = threading.Lock()

        def part(lo, hi):
            with lock:
                calls.append((lo, hi))
        threads.parallel_for(1000, part, 1000 * 4096)
        seen[n] = sorted(calls)
    assert all(v == seen[1] for v in seen.values())
    assert len(seen[1]) == threads.PARALLEL_MAX_CHUNKS
    assert seen[1][0][0] == 0 and seen[1][-1][1] == 1000
    assert all(a[1] == b[0] for a, b in zip(seen[1], seen[1][1:]))


def test_a_reduction_over_chunks_is_the_same_on_any_thread_count(set_threads):
    x = _rand(1 << 20, seed=4)
    results = []
    for n in (1, 2, 3, 4):
        set_threads(n)
        partial = {}

        def part(lo, hi):
            partial[lo] = x[lo:hi].sum(dtype=np.float32)
        threads.parallel_for(x.size, part, x.size)
        total = np.float32(0)
        for lo in sorted(partial):
            total += partial[lo]
        results.append(total)
    assert len(set(r.tobytes() for r in results)) == 1


def test_run_chunks_reraises_a_chunks_exception_and_finishes_the_rest(set_threads):
    set_threads(3)
    done = np.zeros(20, np.int32)

    def task(i):
        done[i] += 1
        if i == 7:
            raise ValueError('chunk 7')
    with pytest.raises(ValueError, match='chunk 7'):
        threads.run_chunks(20, task)
    assert (done == 1).all()
    threads.run_chunks(4, lambda i: None)        # the pool still works


# ------------------------------------------------------------------ the GEMMs
# (m, k, n, trans_a, trans_b): the products of the bench nets -- CaffeNet's
# per-image conv1/conv2 (forward, weight and data gradients), its batched conv3,
# fc6 (10 rows; a quarter of its 4096 outputs), the LSTM's step and input products, LeNet's batched conv2.
NET_SHAPES = [
    (96, 363, 3025, False, False), (96, 3025, 363, False, True), (363, 96, 3025, True, False),
    (128, 1200, 729, False, False), (128, 729, 1200, False, True),
    (384, 2304, 1690, False, False), (384, 1690, 2304, False, True),
    (10, 9216, 1024, False, True), (1024, 10, 9216, True, False), (10, 1024, 9216, False, False),
    (10, 1000, 4000, False, True), (100, 1000, 4000, False, True), (4000, 200, 1000, True, False),
    (50, 500, 4096, False, False), (1, 4096, 4096, False, True),
]


def _operands(m, k, n, ta, tb):
    a = _rand(*((k, m) if ta else (m, k)), seed=m + k)
    b = _rand(*((n, k) if tb else (k, n)), seed=n + k)
    return a, b


@pytest.mark.parametrize('m,k,n,ta,tb', NET_SHAPES)
def test_gemm_is_bit_identical_on_1_2_and_3_threads(m, k, n, ta, tb, set_threads, blas_backend):
    a, b = _operands(m, k, n, ta, tb)
    c0 = _rand(m, n, seed=9)
    outs = []
    for t in (1, 2, 3):
        set_threads(t)
        y = blas.gemm(a, b, trans_a=ta, trans_b=tb)
        c = blas.gemm(a, b, c0.copy(), trans_a=ta, trans_b=tb, accumulate=True)
        outs.append((y, c))
    for y, c in outs[1:]:
        assert np.array_equal(y, outs[0][0]) and np.array_equal(c, outs[0][1])
    want = np.dot(a.T if ta else a, b.T if tb else b)        # one BLAS call
    tol = 1e-5 * np.abs(want).max()
    assert np.abs(outs[0][0] - want).max() <= tol
    assert np.abs(outs[0][1] - (c0 + want)).max() <= tol


def test_gemm_blocks_cover_the_output_in_aligned_blocks():
    for m, k, n, _, _ in NET_SHAPES + [(7, 5, 3, 0, 0), (20000, 64, 20000, 0, 0)]:
        axis, bounds = blas.gemm_blocks(m, n, k)
        side = m if axis == 0 else n
        assert side == max(m, n)
        assert bounds[0] == 0 and bounds[-1] == side
        assert all(lo < hi for lo, hi in zip(bounds, bounds[1:]))
        assert len(bounds) - 1 <= blas.GEMM_MAX_CHUNKS
        assert all(lo % blas.GEMM_CHUNK_ALIGN == 0 for lo in bounds[:-1])
        if m * n * k < blas.GEMM_SPLIT_MIN_MACS:
            assert bounds == [0, side]
    assert len(blas.gemm_blocks(96, 3025, 363)[1]) > 2        # conv1 forward is split
    # never 3 blocks (one of 2 cores idle for a third): LeNet's 500-row products take 2
    assert blas.gemm_blocks(500, 50, 4096)[1] == [0, 256, 500]
    for m in range(128, 1200, 8):
        assert len(blas.gemm_blocks(m, 64, 4096)[1]) != 4


def test_unsplit_gemm_is_one_call_for_a_caller_with_its_own_blocks(set_threads):
    """gemm(split=False) makes one BLAS call however large the product (the
    caller's own block on a worker thread), into a strided block of a larger
    output, with the product's numbers."""
    set_threads(2)
    a, b = _rand(50, 500, seed=1), _rand(500, 4096, seed=2)
    assert len(blas.gemm_blocks(50, 4096, 500)[1]) > 2
    assert len(blas.gemm_tasks(a, b, np.empty((50, 4096), np.float32), split=False)) == 1
    out = np.full((50, 5000), np.nan, np.float32)
    blas.gemm(a, b, out[:, 100:4196], split=False)
    assert np.isnan(out[:, :100]).all() and np.isnan(out[:, 4196:]).all()
    want = a.astype(np.float64) @ b
    assert np.abs(out[:, 100:4196] - want).max() <= 1e-5 * np.abs(want).max()


def test_gemm_k_blocks_cut_only_products_whose_output_cannot_be_cut():
    # LeNet's conv1 weight gradient (transposed: 25 x 20 over k = 36864) is cut over k
    bounds = blas.gemm_k_blocks(25, 20, 36864)
    assert 2 < len(bounds) <= blas.GEMM_MAX_CHUNKS + 1
    assert bounds[0] == 0 and bounds[-1] == 36864
    assert all(lo < hi for lo, hi in zip(bounds, bounds[1:]))
    assert all(lo % blas.GEMM_CHUNK_ALIGN == 0 for lo in bounds[:-1])
    for m, k, n, _, _ in NET_SHAPES + [(7, 5, 3, 0, 0), (20, 100, 25, 0, 0)]:
        if len(blas.gemm_blocks(m, n, k)[1]) > 2 or m * n * k < blas.GEMM_SPLIT_MIN_MACS:
            assert blas.gemm_k_blocks(m, n, k) == [0, k]


@pytest.mark.parametrize('ta,tb', [(False, True), (True, False)])
@pytest.mark.parametrize('fallback', [False, True])
def test_gemm_summed_over_k_is_the_product_on_any_thread_count(ta, tb, fallback, set_threads,
                                                              monkeypatch):
    if fallback:
        monkeypatch.setitem(blas._state, 'looked', True)
        monkeypatch.setitem(blas._state, 'sgemm', None)
    m, k, n = 25, 36864, 20
    assert len(blas.gemm_k_blocks(m, n, k)) > 2
    a, b = _operands(m, k, n, ta, tb)
    outs = []
    for t in (1, 2, 3):
        set_threads(t)
        outs.append(blas.gemm_summed_over_k(a, b, np.full((m, n), np.nan, np.float32), ta, tb))
    for o in outs[1:]:
        assert np.array_equal(o.view(np.uint32), outs[0].view(np.uint32))
    want = (a.T if ta else a).astype(np.float64) @ (b.T if tb else b)
    assert np.abs(outs[0] - want).max() <= 1e-5 * np.abs(want).max()


@pytest.mark.parametrize('fallback', [False, True])
def test_split_gemm_into_strided_and_transposed_outputs(fallback, set_threads, monkeypatch):
    if fallback:
        monkeypatch.setitem(blas._state, 'looked', True)
        monkeypatch.setitem(blas._state, 'sgemm', None)
    set_threads(2)
    a, b = _rand(300, 200, seed=1), _rand(200, 700, seed=2)
    big = _rand(300, 800, seed=3)
    out = big[:, 50:750]                 # rows strided by 800
    keep = big.copy()
    blas.gemm(a, b, out)
    want = a.astype(np.float64) @ b
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-4)
    assert np.array_equal(big[:, :50], keep[:, :50]) and np.array_equal(big[:, 750:], keep[:, 750:])
    outt = np.empty((700, 300), np.float32).T       # a transposed (column-major) output
    blas.gemm(a, b, outt, accumulate=False)
    np.testing.assert_allclose(outt, want, rtol=1e-5, atol=1e-4)


def test_copy_split_splits_below_leading_unit_axes(set_threads, monkeypatch):
    """An array whose first axes have length 1 (conv1's columns for one input
    channel) is copied in parts over its first longer axis, into contiguous and
    strided outputs."""
    from minicaffe import im2col
    set_threads(3, split_small=True)
    parts = []
    monkeypatch.setattr(im2col, 'parallel_for',
                        lambda n, fn, elems: parts.append(n) or threads.parallel_for(n, fn, elems))
    src = np.arange(1 * 1 * 5 * 7 * 3, dtype=np.float32).reshape(1, 1, 5, 7, 3).transpose(0, 1, 4, 3, 2)
    out = im2col.copy_split(src)
    assert parts == [3] and out.flags.c_contiguous and np.array_equal(out, src)
    big = np.zeros((1, 1, 3, 7, 9), np.float32)
    im2col.copy_split(src, out=big[..., 2:7])          # a strided output
    assert np.array_equal(big[..., 2:7], src) and not big[..., :2].any() and not big[..., 7:].any()
