#!/usr/bin/env python
"""Every BLAS call of a net's training iteration: its shape, count and time.

    python benchmarks/gemm_shapes.py NET.prototxt [--threads 1] [--iterations 20]

Runs the net (TRAIN, forward + backward) and times each cblas_sgemm call that
minicaffe makes (blas._call, whichever BLAS runs it), grouped by (m, n, k,
transposes, beta, leading dimensions), slowest first: calls per iteration,
ms per iteration, GFLOP/s, and which library ran it.  Shows which products sit
far from the BLAS's peak and which orientation or blocking the layers chose
(products that numpy's own np.dot runs are not listed).  With --threads > 1
the times are those of each call on its thread, summed over the threads.
"""
import argparse
import collections
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import minicaffe  # noqa: E402
from minicaffe import blas  # noqa: E402


def _library(fn):
    short = blas._state.get('short_k')
    if short is not None and fn is short[0]:
        return 'mkl (short k)'
    return blas.name()


def profile(net, iterations, warmup=3):
    """{key: [calls, seconds]} over `iterations` forward + backward passes."""
    stats = collections.defaultdict(lambda: [0, 0.0])
    lock = threading.Lock()
    real = blas._call

    def timed(fn, a, b, c, ta, tb, beta=1.0):
        start = time.perf_counter()
        real(fn, a, b, c, ta, tb, beta)
        took = time.perf_counter() - start
        m, n = c.shape
        k = a.shape[0] if ta else a.shape[1]
        key = (m, n, k, bool(ta), bool(tb), beta, a.strides[0] // 4, b.strides[0] // 4,
               c.strides[0] // 4, _library(fn))
        with lock:
            stats[key][0] += 1
            stats[key][1] += took
    for _ in range(warmup):
        net.forward()
        net.backward()
    blas._call = timed
    try:
        for _ in range(iterations):
            net.forward()
            net.backward()
    finally:
        blas._call = real
    return stats


def report(stats, iterations, out=None):
    out = out or sys.stdout
    out.write('%6s %6s %6s %3s %3s %4s %6s %6s %6s %-14s %8s %8s %7s\n' % (
        'm', 'n', 'k', 'tA', 'tB', 'beta', 'lda', 'ldb', 'ldc', 'blas', 'calls/it',
        'ms/it', 'GF/s'))
    total = 0.0
    for key, (calls, secs) in sorted(stats.items(), key=lambda kv: -kv[1][1]):
        m, n, k, ta, tb, beta, lda, ldb, ldc, lib = key
        out.write('%6d %6d %6d %3d %3d %4g %6d %6d %6d %-14s %8.1f %8.3f %7.1f\n' % (
            m, n, k, ta, tb, beta, lda, ldb, ldc, lib, calls / iterations,
            secs / iterations * 1e3, 2.0 * m * n * k * calls / max(secs, 1e-12) / 1e9))
        total += secs
    out.write('total BLAS time per iteration: %.3f ms\n' % (total / iterations * 1e3))
    return total / iterations


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('net', help='a .prototxt whose TRAIN phase runs without data files')
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--iterations', type=int, default=20)
    args = p.parse_args(argv)
    minicaffe.set_num_threads(args.threads)
    net = minicaffe.Net(args.net, minicaffe.TRAIN)
    print('BLAS: %s' % blas.describe())
    report(profile(net, args.iterations), args.iterations)


if __name__ == '__main__':
    main()
