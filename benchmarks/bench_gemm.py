#!/usr/bin/env python
"""The cost of splitting GEMMs ourselves: minicaffe's blocks vs the BLAS's own threads.

    python benchmarks/bench_gemm.py [--threads 2] [--repeat 5]

minicaffe sets the BLAS to one thread and cuts large products into blocks fixed
by the shape (blas.gemm_blocks), run on its own workers, so that the numbers do
not depend on the thread count.  For the products of the benchmark nets this
prints the best time of: one BLAS call on one thread, one BLAS call on N BLAS
threads (OpenBLAS's own split, as numpy does by default), and minicaffe's
blocks on N workers -- and whether the BLAS's own N-thread result differs in
its last bits from its 1-thread result (the reason for the blocks).
"""
import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import threadpoolctl  # noqa: E402

import minicaffe  # noqa: E402
from minicaffe import blas  # noqa: E402

# (name, m, k, n, trans_a, trans_b)
SHAPES = [
    ('CaffeNet conv1 forward (per image)', 96, 363, 3025, False, False),
    ('CaffeNet conv1 weight gradient', 96, 3025, 363, False, True),
    ('CaffeNet conv1 data gradient', 363, 96, 3025, True, False),
    ('CaffeNet conv2 forward (per image, group)', 128, 1200, 729, False, False),
    ('CaffeNet conv3 forward (batch)', 384, 2304, 1690, False, False),
    ('CaffeNet conv3 weight gradient', 384, 1690, 2304, False, True),
    ('CaffeNet fc6 forward (10 rows)', 10, 9216, 4096, False, True),
    ('CaffeNet fc6 weight gradient', 4096, 10, 9216, True, False),
    ('LSTM step, N=10', 10, 1000, 4000, False, True),
    ('LSTM step, N=100', 100, 1000, 4000, False, True),
    ('LSTM input product, T*N=2000', 2000, 1000, 4000, False, True),
    ('LeNet conv2 forward (batch)', 50, 500, 4096, False, False),
]


def best_ms(fn, repeat):
    fn()
    best = float('inf')
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--threads', type=int, default=2, help='N (default 2)')
    p.add_argument('--repeat', type=int, default=5, help='timed calls per variant (default 5)')
    args = p.parse_args(argv)
    if not blas.uses_blas():
        print('no CBLAS sgemm found beside numpy: nothing to compare')
        return 1
    fn = blas._sgemm()
    rng = np.random.default_rng(0)
    print('BLAS: %s' % blas.describe())
    if blas.name() == 'mkl':
        print("(MKL runs its sequential layer, it has no threads of its own: the 'BLAS threads'"
              " columns are one thread; MINICAFFE_BLAS=openblas compares OpenBLAS's)")
    print('| product | m x k x n | 1 BLAS thread ms | %d BLAS threads ms | minicaffe blocks'
          ' on %d workers ms | blocks | BLAS %d vs 1 thread bits |'
          % (args.threads, args.threads, args.threads))
    print('| --- | --- | ---: | ---: | ---: | ---: | --- |')
    for name, m, k, n, ta, tb in SHAPES:
        a = rng.standard_normal((k, m) if ta else (m, k)).astype(np.float32)
        b = rng.standard_normal((n, k) if tb else (k, n)).astype(np.float32)
        c = np.empty((m, n), np.float32)
        one_call = lambda: blas._call(fn, a, b, c, ta, tb, beta=0.0)    # noqa: E731
        with threadpoolctl.threadpool_limits(1, 'blas'):
            t1 = best_ms(one_call, args.repeat)
            ref = c.copy()
        with threadpoolctl.threadpool_limits(args.threads, 'blas'):
            tn = best_ms(one_call, args.repeat)
            same = np.array_equal(c, ref)
        minicaffe.set_num_threads(args.threads)
        tb_ms = best_ms(lambda: blas.gemm(a, b, c, ta, tb), args.repeat)
        blocks = len(blas.gemm_blocks(m, n, k)[1]) - 1
        print('| %s | %dx%dx%d | %.2f | %.2f | %.2f | %d | %s |'
              % (name, m, k, n, t1, tn, tb_ms, blocks, 'same' if same else 'differ'))
        sys.stdout.flush()
    return 0


if __name__ == '__main__':
    sys.exit(main())
