#!/usr/bin/env python
"""Speed under load: each benchmark net alone and beside one competing CPU-bound process.

    python benchmarks/bench_load.py [--rounds 3] [--iterations 5] [--net lenet ...]
                                    [--load spin|matmul] [--threads N] [--json out.json]

For each net of ../shared/bench (data layers replaced by Input; Caffe's `caffe
time` procedure, minicaffe/commands/timing.py: TRAIN phase, forward+backward), alternate
runs alone and runs while one other process keeps a core busy (``spin``: a
Python busy loop; ``matmul``: a single-threaded numpy float32 matrix product
loop, which also competes for cache and memory bandwidth).  minicaffe runs with
its default settings (one thread per core the process may use; the BLAS at one
thread) unless --threads is given; the competing process is started afresh for
every loaded run and killed after it.

Prints, per net, the best and the median iteration alone and loaded, and the
ratio loaded/alone of the medians (and of the bests).  The target of issue 12:
no net more than 2.5x slower loaded than alone.  Timings from a machine that
other work also loads are noisy: alternate rounds and compare medians.
``--checkout PATH`` measures another checkout of minicaffe with the same script
(e.g. one from before minicaffe/threads.py, for the "before" numbers).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _checkout(argv):
    """--checkout PATH: the minicaffe to measure (default: this script's checkout)."""
    for i, a in enumerate(argv):
        if a == '--checkout' and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith('--checkout='):
            return a.split('=', 1)[1]
    return str(ROOT)


sys.path.insert(0, os.path.abspath(_checkout(sys.argv[1:])))

import minicaffe  # noqa: E402
from minicaffe.commands import timing  # noqa: E402
from minicaffe.errors import MinicaffeError  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_nets import NETS  # noqa: E402

SHARED = Path(os.environ.get('MINICAFFE_SHARED', ROOT.parent / 'shared'))

LOADS = {
    'spin': 'while True:\n    pass\n',
    'matmul': ('import os\nos.environ["OPENBLAS_NUM_THREADS"] = "1"\n'
               'os.environ["OMP_NUM_THREADS"] = "1"\nimport numpy as np\n'
               'a = np.ones((512, 512), np.float32)\nwhile True:\n    a @ a\n'),
}
TARGET = 2.5


class Competitor(object):
    """One CPU-bound process, running while the ``with`` block runs."""

    def __init__(self, kind):
        self.code = LOADS[kind]
        self.proc = None

    def __enter__(self):
        self.proc = subprocess.Popen([sys.executable, '-c', self.code],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)        # let it start (and import numpy) before timing
        return self

    def __exit__(self, *exc):
        self.proc.kill()
        self.proc.wait()


def time_iterations(net, iterations):
    ms = []
    timing.time_net(net, iterations, lambda j, t: ms.append(t))
    return ms


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--bench-dir', default=str(SHARED / 'bench'),
                   help='folder of the benchmark nets (default ../shared/bench)')
    p.add_argument('--rounds', type=int, default=3,
                   help='alternating alone/loaded rounds per net (default 3)')
    p.add_argument('--iterations', type=int, default=5,
                   help='timed iterations per run, after caffe time\'s warm-up pass (default 5)')
    p.add_argument('--net', action='append', default=[],
                   help='only these nets (%s); repeatable' % ', '.join(n[0] for n in NETS))
    p.add_argument('--load', choices=sorted(LOADS), default='spin',
                   help='the competing process (default spin: a Python busy loop)')
    p.add_argument('--threads', type=int, default=None,
                   help='minicaffe.set_num_threads(N) first (default: minicaffe\'s default)')
    p.add_argument('--json', default=None, help='write the results here as JSON')
    p.add_argument('--checkout', default=str(ROOT),
                   help='the minicaffe checkout to measure, e.g. one from before'
                        ' minicaffe/threads.py (default: this script\'s, %(default)s)')
    args = p.parse_args(argv)

    nets = [n for n in NETS if not args.net or n[0] in args.net]
    unknown = set(args.net) - set(n[0] for n in NETS)
    if unknown:
        p.error('unknown net(s) %s; choose from %s' % (sorted(unknown), [n[0] for n in NETS]))
    # (an older --checkout, without minicaffe.threads, gives the "before" numbers)
    has_threads = hasattr(minicaffe, 'get_num_threads')
    if args.threads is not None:
        if not has_threads:
            p.error('--threads: this minicaffe (%s) has no set_num_threads' % minicaffe.__file__)
        minicaffe.set_num_threads(args.threads)
    threads = minicaffe.get_num_threads() if has_threads else None
    print('minicaffe %s, threads: %s (cores this process may use: %d); competing process: %s;'
          ' %d round(s) of %d iteration(s) alone, then loaded'
          % (os.path.dirname(minicaffe.__file__), threads if has_threads else 'its default',
             len(os.sched_getaffinity(0)), args.load, args.rounds, args.iterations))
    rows = []
    for name, fname, stages, _, _, _ in nets:
        try:
            net = timing.build_net(os.path.join(args.bench_dir, fname), 'TRAIN', 0, stages)
        except (MinicaffeError, OSError) as e:
            print('%s: FAILED: %s' % (name, e))
            rows.append({'net': name, 'error': str(e)})
            continue
        alone, loaded = [], []
        for _ in range(args.rounds):
            alone += time_iterations(net, args.iterations)
            with Competitor(args.load):
                loaded += time_iterations(net, args.iterations)
        row = {'net': name, 'alone_ms': alone, 'loaded_ms': loaded,
               'alone_best': min(alone), 'alone_median': statistics.median(alone),
               'loaded_best': min(loaded), 'loaded_median': statistics.median(loaded)}
        row['ratio_median'] = row['loaded_median'] / row['alone_median']
        row['ratio_best'] = row['loaded_best'] / row['alone_best']
        rows.append(row)
        print('%s: alone best %.1f median %.1f ms; loaded best %.1f median %.1f ms;'
              ' ratio %.2fx (best %.2fx)' % (name, row['alone_best'], row['alone_median'],
                                              row['loaded_best'], row['loaded_median'],
                                              row['ratio_median'], row['ratio_best']))
        sys.stdout.flush()
        del net

    print()
    print('| net | alone best | alone median | loaded best | loaded median | ratio (medians) |'
          ' within %gx |' % TARGET)
    print('| --- | ---: | ---: | ---: | ---: | ---: | --- |')
    for r in rows:
        if 'error' in r:
            print('| %s | failed | | | | | |' % r['net'])
        else:
            print('| %s | %.1f | %.1f | %.1f | %.1f | %.2fx | %s |'
                  % (r['net'], r['alone_best'], r['alone_median'], r['loaded_best'],
                     r['loaded_median'], r['ratio_median'],
                     'yes' if r['ratio_median'] <= TARGET else 'NO'))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump({'threads': threads, 'load': args.load,
                       'rounds': args.rounds, 'iterations': args.iterations, 'nets': rows},
                      f, indent=1)
    return 1 if any('error' in r for r in rows) else 0


if __name__ == '__main__':
    sys.exit(main())
