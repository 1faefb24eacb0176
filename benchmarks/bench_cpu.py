#!/usr/bin/env python
"""CPU speed against Caffe: `minicaffe time` on the full-width benchmark nets.

    python benchmarks/bench_cpu.py [--iterations 10] [--min-seconds 2] [--net lenet ...]
                                   [--layers 5] [--json out.json] [--bench-dir ../shared/bench]
                                   [--caffe PATH [--mkl LIBDIR] [--rounds 3]]

For each net in ../shared/bench (data layers replaced by Input), run Caffe's
`caffe time` procedure (minicaffe/commands/timing.py: TRAIN phase, one warm-up pass,
then per-layer timed forward and backward passes) and print a table: our
forward+backward ms per iteration, real Caffe's (CPU, OpenBLAS, one run on a
2-core machine, from ../shared/conformance/README.md) and the ratio.

With --caffe PATH (a real Caffe's tools/caffe binary) Caffe runs side by side
instead: per net, rounds of `minicaffe time` (in this process) and `caffe time`
(a subprocess, same iteration count) alternate, so both see the same machine
load, and the table gives the best and the median iteration of each and their
ratios (minicaffe / Caffe).  --mkl LIBDIR runs that Caffe with Intel MKL's
libmkl_rt from LIBDIR preloaded (pip's `mkl` package: <venv>/lib), Caffe's
strongest CPU build.  PyTorch CPU columns are not part of this script (no
PyTorch on the machines it was written on).

minicaffe computes on its own threads (minicaffe/threads.py: one per core the
process may use; MINICAFFE_NUM_THREADS overrides) and sets the BLAS to one
thread at run time, so OMP_NUM_THREADS / OPENBLAS_NUM_THREADS / MKL_NUM_THREADS
(set to 2 here, the machine Caffe's figures come from) no longer change its
speed.  benchmarks/bench_load.py measures the speed beside a competing process.
"""
import os

for _var in ('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS'):
    os.environ.setdefault(_var, '2')

import argparse  # noqa: E402
import glob  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from minicaffe.commands import timing  # noqa: E402
from minicaffe.errors import MinicaffeError  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_nets import NETS, caffe_figures  # noqa: E402

SHARED = Path(os.environ.get('MINICAFFE_SHARED', ROOT.parent / 'shared'))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--bench-dir', default=str(SHARED / 'bench'))
    p.add_argument('--readme', default=str(SHARED / 'conformance' / 'README.md'))
    p.add_argument('--iterations', type=int, default=10,
                   help='timed iterations per net, at least (caffe time uses 50; default 10)')
    p.add_argument('--min-seconds', type=float, default=2.0,
                   help='time each net for at least this long: small nets get more iterations,'
                        ' so one hiccup of a shared machine does not decide their mean'
                        ' (default 2)')
    p.add_argument('--net', action='append', default=[],
                   help='only these nets (%s); repeatable' % ', '.join(n[0] for n in NETS))
    p.add_argument('--layers', type=int, default=0, help='also list the N slowest layers of each net')
    p.add_argument('--json', default=None, help='write the results here as JSON')
    p.add_argument('--caffe', default=None,
                   help="real Caffe's tools/caffe binary: time it side by side, alternating")
    p.add_argument('--mkl', default=None,
                   help='with --caffe: directory holding libmkl_rt.so* to run Caffe with MKL')
    p.add_argument('--rounds', type=int, default=3,
                   help='with --caffe: alternating rounds per net (default 3)')
    args = p.parse_args(argv)
    if args.mkl and not args.caffe:
        p.error('--mkl needs --caffe')

    figures = caffe_figures(args.readme)
    nets = [(n, f, s, figures[i] if figures else c) for i, (n, f, s, _, _, c) in enumerate(NETS)]
    if args.net:
        unknown = set(args.net) - set(n[0] for n in nets)
        if unknown:
            p.error('unknown net(s) %s; choose from %s' % (sorted(unknown), [n[0] for n in nets]))
        nets = [n for n in nets if n[0] in args.net]

    if args.caffe:
        return side_by_side(args, nets)
    from minicaffe import get_num_threads
    print('threads: minicaffe %d (BLAS 1 each); at least %d iteration(s) and %g s per net;'
          ' Caffe figures from %s'
          % (get_num_threads(), args.iterations, args.min_seconds,
             args.readme if figures else 'built-in values'))
    rows = []
    for name, fname, stages, caffe_ms in nets:
        path = os.path.join(args.bench_dir, fname)
        t0 = time.perf_counter()
        try:
            net = timing.build_net(path, 'TRAIN', 0, stages)
            iter_ms = []
            res = timing.time_net(net, _iterations(net, args), lambda j, ms: iter_ms.append(ms))
        except (MinicaffeError, OSError) as e:
            print('%s: FAILED: %s' % (name, e))
            rows.append({'net': name, 'error': str(e), 'caffe_ms': caffe_ms})
            continue
        row = {'net': name, 'ms': res.forward_backward_ms, 'forward_ms': res.forward_pass_ms,
               'backward_ms': res.backward_pass_ms, 'caffe_ms': caffe_ms,
               'ratio': res.forward_backward_ms / caffe_ms, 'best_ms': min(iter_ms),
               'wall_s': time.perf_counter() - t0,
               'layers': [{'name': n, 'type': t, 'forward_ms': f, 'backward_ms': b}
                          for n, t, f, b in zip(res.layer_names, res.layer_types,
                                                res.forward_ms, res.backward_ms)]}
        rows.append(row)
        print('%s: %.1f ms (forward %.1f, backward %.1f; best of %d iterations %.1f) vs Caffe'
              ' %.1f ms' % (name, row['ms'], row['forward_ms'], row['backward_ms'], len(iter_ms),
                            row['best_ms'], caffe_ms))
        if args.layers:
            slow = sorted(row['layers'], key=lambda l: -(l['forward_ms'] + l['backward_ms']))
            for l in slow[:args.layers]:
                print('    %-14s %-16s forward %8.2f ms  backward %8.2f ms'
                      % (l['name'], l['type'], l['forward_ms'], l['backward_ms']))
        sys.stdout.flush()
        del net

    print()
    print('| net | minicaffe fwd+bwd ms (mean) | best iteration ms | Caffe CPU ms | ratio (mean) |')
    print('| --- | ---: | ---: | ---: | ---: |')
    for r in rows:
        if 'error' in r:
            print('| %s | failed | - | %.1f | - |' % (r['net'], r['caffe_ms']))
        else:
            print('| %s | %.1f | %.1f | %.1f | %.2fx |' % (r['net'], r['ms'], r['best_ms'],
                                                         r['caffe_ms'], r['ratio']))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump({'iterations': args.iterations,
                       'threads': {v: os.environ[v] for v in
                                   ('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS')},
                       'nets': rows}, f, indent=1)
    return 1 if any('error' in r for r in rows) else 0


_CAFFE_ITERATION = re.compile(r'Iteration: (\d+) forward-backward time: ([\d.]+) ms')


def caffe_environment(mkl_dir):
    """Environment for the caffe subprocess: glog to stderr, and MKL preloaded
    from mkl_dir if given (raises ValueError when it holds no libmkl_rt)."""
    env = dict(os.environ, GLOG_logtostderr='1')
    if mkl_dir:
        libs = sorted(glob.glob(os.path.join(mkl_dir, 'libmkl_rt.so*')))
        if not libs:
            raise ValueError('no libmkl_rt.so* in %s' % mkl_dir)
        env['LD_LIBRARY_PATH'] = os.pathsep.join(
            [mkl_dir] + [p for p in env.get('LD_LIBRARY_PATH', '').split(os.pathsep) if p])
        env['LD_PRELOAD'] = libs[-1]
    return env


def caffe_time(caffe, model, stages, iterations, env):
    """Per-iteration forward+backward ms of `caffe time` (TRAIN, as minicaffe time)."""
    cmd = [caffe, 'time', '-model', model, '-iterations', str(iterations)]
    if stages:
        cmd += ['-stage', ','.join(stages)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    times = [float(m.group(2)) for m in _CAFFE_ITERATION.finditer(proc.stderr + proc.stdout)]
    if proc.returncode != 0 or not times:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise RuntimeError('%s exited %d: %s' % (' '.join(cmd), proc.returncode, ' | '.join(tail)))
    return times


def side_by_side(args, nets):
    """Alternating rounds of minicaffe and real Caffe per net; best and median."""
    try:
        env = caffe_environment(args.mkl)
    except ValueError as e:
        print('bench_cpu: %s' % e, file=sys.stderr)
        return 2
    blas = 'MKL from %s' % args.mkl if args.mkl else "its own link (OpenBLAS unless built otherwise)"
    from minicaffe import get_num_threads
    print('side by side with %s (BLAS: %s; its threads: OMP %s, OpenBLAS %s, MKL %s);'
          ' minicaffe %d threads; %d alternating rounds per net, each at least %d iteration(s)'
          ' / %g s' % (args.caffe, blas, os.environ['OMP_NUM_THREADS'],
                       os.environ['OPENBLAS_NUM_THREADS'], os.environ['MKL_NUM_THREADS'],
                       get_num_threads(), args.rounds, args.iterations, args.min_seconds))
    rows = []
    for name, fname, stages, _ in nets:
        path = os.path.join(args.bench_dir, fname)
        ours, theirs = [], []
        try:
            net = timing.build_net(path, 'TRAIN', 0, stages)
            iterations = _iterations(net, args)
            for _ in range(args.rounds):
                timing.time_net(net, iterations, lambda j, ms: ours.append(ms))
                theirs.extend(caffe_time(args.caffe, path, stages, iterations, env))
        except (MinicaffeError, OSError, RuntimeError) as e:
            print('%s: FAILED: %s' % (name, e))
            rows.append({'net': name, 'error': str(e)})
            continue
        row = {'net': name, 'iterations': len(ours), 'best_ms': min(ours),
               'median_ms': statistics.median(ours), 'caffe_best_ms': min(theirs),
               'caffe_median_ms': statistics.median(theirs)}
        row['best_ratio'] = row['best_ms'] / row['caffe_best_ms']
        row['median_ratio'] = row['median_ms'] / row['caffe_median_ms']
        rows.append(row)
        print('%s: minicaffe best %.1f / median %.1f ms; Caffe best %.1f / median %.1f ms'
              % (name, row['best_ms'], row['median_ms'], row['caffe_best_ms'],
                 row['caffe_median_ms']))
        sys.stdout.flush()
        del net
    print()
    print('| net | minicaffe best / median ms | Caffe best / median ms | ratio best | ratio median |')
    print('| --- | ---: | ---: | ---: | ---: |')
    for r in rows:
        if 'error' in r:
            print('| %s | failed | - | - | - |' % r['net'])
        else:
            print('| %s | %.1f / %.1f | %.1f / %.1f | %.2fx | %.2fx |'
                  % (r['net'], r['best_ms'], r['median_ms'], r['caffe_best_ms'],
                     r['caffe_median_ms'], r['best_ratio'], r['median_ratio']))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump({'caffe': args.caffe, 'mkl': args.mkl, 'rounds': args.rounds,
                       'threads': {v: os.environ[v] for v in
                                   ('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS')},
                       'nets': rows}, f, indent=1)
    return 1 if any('error' in r for r in rows) else 0


def _iterations(net, args):
    """args.iterations, or more where that many passes take under args.min_seconds
    (estimated from one untimed forward+backward)."""
    t0 = time.perf_counter()
    net.forward()
    net.backward()
    one = max(time.perf_counter() - t0, 1e-6)
    return max(args.iterations, int(args.min_seconds / one + 0.999))


if __name__ == '__main__':
    sys.exit(main())
