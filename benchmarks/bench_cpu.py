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
strongest CPU build.

PyTorch: when torch is importable (and not --no-torch), its CPU equivalents of
LeNet, CaffeNet and the LSTM language model (bench_gpu.py's models) run in the
same alternating rounds, same batch, on as many threads as minicaffe
(torch.set_num_threads), and the table adds their best / median iteration and
the ratios minicaffe / PyTorch.  --blas openblas,mkl times minicaffe on each
BLAS in the same rounds (minicaffe.blas.select; default: the run-time choice).
Whenever one of these (Caffe, PyTorch, several BLASes) is in play the rounds
alternate as above, each engine's run after a pause (--settle, SETTLE_SECONDS:
a run right after Caffe's process exited measured slower); otherwise the net is
timed once and compared with Caffe's figures.

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
from bench_gpu import TORCH_MODELS  # noqa: E402

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
                   help='alternating rounds per net (with --caffe, PyTorch or several --blas;'
                        ' default 3)')
    p.add_argument('--blas', default=None,
                   help='comma-separated BLASes to time minicaffe on, alternating (openblas,'
                        ' mkl; default: the run-time choice)')
    p.add_argument('--no-torch', action='store_true',
                   help='leave out the PyTorch CPU columns even where torch is installed')
    p.add_argument('--settle', type=float, default=SETTLE_SECONDS,
                   help='in alternating rounds, seconds to pause before each engine\'s run'
                        ' (default %g; see SETTLE_SECONDS)' % SETTLE_SECONDS)
    args = p.parse_args(argv)
    if args.mkl and not args.caffe:
        p.error('--mkl needs --caffe')
    args.blas = [b.strip() for b in args.blas.split(',') if b.strip()] if args.blas else [None]

    figures = caffe_figures(args.readme)
    nets = [(n, f, s, figures[i] if figures else c) for i, (n, f, s, _, _, c) in enumerate(NETS)]
    if args.net:
        unknown = set(args.net) - set(n[0] for n in nets)
        if unknown:
            p.error('unknown net(s) %s; choose from %s' % (sorted(unknown), [n[0] for n in nets]))
        nets = [n for n in nets if n[0] in args.net]

    torch, why = (None, 'PyTorch columns left out (--no-torch)') if args.no_torch else load_torch()
    if args.caffe or torch is not None or len(args.blas) > 1:
        return side_by_side(args, nets, torch, why)
    print(why)
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


# In alternating rounds every engine's run starts after a pause of this many
# seconds.  Without it the run that follows a `caffe time` process was slowed by
# that process's exit (the kernel freeing its memory, presumably): on 2026-12-06,
# CaffeNet, quiet machine, minicaffe's best iteration was 350 ms right after Caffe
# and 307-314 ms after a pause or with no Caffe in the rounds, while Caffe's own
# best stayed at 455-463 ms either way.  The pause is the same for every engine.
SETTLE_SECONDS = 3.0

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


def load_torch():
    """(torch, None) when PyTorch is importable (it then computes on minicaffe's
    thread count), else (None, why not)."""
    try:
        import torch
    except ImportError:
        return None, 'PyTorch is not installed: no PyTorch columns (pip install torch)'
    from minicaffe import get_num_threads
    torch.set_num_threads(get_num_threads())
    return torch, None


def torch_iterations(torch, model, inputs, iterations):
    """ms of each of ``iterations`` forward (with loss) + backward passes."""
    times = []
    for _ in range(iterations):
        model.zero_grad(set_to_none=False)
        t0 = time.perf_counter()
        model(*inputs).backward()
        times.append((time.perf_counter() - t0) * 1000.0)
    return times


def _blas_label(name):
    return 'minicaffe' if name is None else 'minicaffe (%s)' % name


def side_by_side(args, nets, torch=None, torch_why=None):
    """Alternating rounds per net of minicaffe (on each BLAS of --blas), real
    Caffe (--caffe) and PyTorch (when given); best and median of each."""
    env = None
    if args.caffe:
        try:
            env = caffe_environment(args.mkl)
        except ValueError as e:
            print('bench_cpu: %s' % e, file=sys.stderr)
            return 2
    from minicaffe import blas as mc_blas, get_num_threads
    blases = args.blas
    for b in blases:
        if b is not None and mc_blas.select(b)['name'] != b:
            print('bench_cpu: --blas %s: not available here (see the log line above)' % b,
                  file=sys.stderr)
            return 2
    if args.caffe:
        cblas = 'MKL from %s' % args.mkl if args.mkl else "its own link (OpenBLAS unless built otherwise)"
        print('side by side with %s (BLAS: %s; its threads: OMP %s, OpenBLAS %s, MKL %s)'
              % (args.caffe, cblas, os.environ['OMP_NUM_THREADS'],
                 os.environ['OPENBLAS_NUM_THREADS'], os.environ['MKL_NUM_THREADS']))
    for b in blases:
        if b is not None:
            mc_blas.select(b)
        print('%s: BLAS %s' % (_blas_label(b), mc_blas.describe()))
    print('PyTorch %s on %d threads' % (torch.__version__, torch.get_num_threads())
          if torch is not None else torch_why)
    print('minicaffe %d threads; %d alternating rounds per net, each at least %d iteration(s)'
          ' / %g s' % (get_num_threads(), args.rounds, args.iterations, args.min_seconds))
    rows = []
    for name, fname, stages, _ in nets:
        path = os.path.join(args.bench_dir, fname)
        ours = {b: [] for b in blases}
        theirs, torch_ms = [], []
        model = inputs = None
        try:
            net = timing.build_net(path, 'TRAIN', 0, stages)
            iterations = _iterations(net, args)
            if torch is not None and name in TORCH_MODELS:
                build, make_inputs = TORCH_MODELS[name]
                model, inputs = build(torch), make_inputs(torch, 'cpu')
                model.train()
                torch_iterations(torch, model, inputs, 1)          # warm-up
            for _ in range(args.rounds):
                for b in blases:
                    if b is not None:
                        mc_blas.select(b)
                    time.sleep(args.settle)
                    timing.time_net(net, iterations, lambda j, ms: ours[b].append(ms))
                if args.caffe:
                    time.sleep(args.settle)
                    theirs.extend(caffe_time(args.caffe, path, stages, iterations, env))
                if model is not None:
                    time.sleep(args.settle)
                    torch_ms.extend(torch_iterations(torch, model, inputs, iterations))
        except (MinicaffeError, OSError, RuntimeError) as e:
            print('%s: FAILED: %s' % (name, e))
            rows.append({'net': name, 'error': str(e)})
            continue
        finally:
            if blases != [None]:
                mc_blas.select()
        first = ours[blases[0]]
        row = {'net': name, 'iterations': len(first), 'best_ms': min(first),
               'median_ms': statistics.median(first)}
        if blases != [None]:
            row['blas'] = {b: {'best_ms': min(v), 'median_ms': statistics.median(v)}
                           for b, v in ours.items()}
        for key, values in (('caffe', theirs), ('torch', torch_ms)):
            if values:
                row[key + '_best_ms'], row[key + '_median_ms'] = min(values), statistics.median(values)
        if theirs:
            row['best_ratio'] = row['best_ms'] / row['caffe_best_ms']
            row['median_ratio'] = row['median_ms'] / row['caffe_median_ms']
        if torch_ms:
            row['torch_best_ratio'] = row['best_ms'] / row['torch_best_ms']
            row['torch_median_ratio'] = row['median_ms'] / row['torch_median_ms']
        rows.append(row)
        parts = ['%s best %.1f / median %.1f ms' % (_blas_label(b), min(v), statistics.median(v))
                 for b, v in ours.items()]
        if theirs:
            parts.append('Caffe best %.1f / median %.1f ms' % (row['caffe_best_ms'],
                                                              row['caffe_median_ms']))
        if torch_ms:
            parts.append('PyTorch best %.1f / median %.1f ms' % (row['torch_best_ms'],
                                                                row['torch_median_ms']))
        print('%s: %s' % (name, '; '.join(parts)))
        sys.stdout.flush()
        del net, model, inputs
    print()
    for line in side_by_side_table(rows, blases, bool(args.caffe), torch is not None):
        print(line)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump({'caffe': args.caffe, 'mkl': args.mkl, 'rounds': args.rounds,
                       'blas': blases, 'torch': torch.__version__ if torch is not None else None,
                       'threads': {v: os.environ[v] for v in
                                   ('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS')},
                       'nets': rows}, f, indent=1)
    return 1 if any('error' in r for r in rows) else 0


def side_by_side_table(rows, blases, with_caffe, with_torch):
    """Markdown table: best / median ms of each contender, ratios of minicaffe
    (the first BLAS) to Caffe and to PyTorch."""
    heads = ['%s best / median ms' % _blas_label(b) for b in blases]
    if with_caffe:
        heads += ['Caffe best / median ms', 'ratio best', 'ratio median']
    if with_torch:
        heads += ['PyTorch best / median ms', 'vs PyTorch best', 'vs PyTorch median']
    lines = ['| net | %s |' % ' | '.join(heads), '| --- |' + ' ---: |' * len(heads)]

    def pair(best, median):
        return '%.1f / %.1f' % (best, median)
    for r in rows:
        if 'error' in r:
            lines.append('| %s | failed |%s' % (r['net'], ' - |' * (len(heads) - 1)))
            continue
        per_blas = r.get('blas', {None: r})
        cells = [pair(per_blas[b]['best_ms'], per_blas[b]['median_ms']) for b in blases]
        if with_caffe:
            cells += [pair(r['caffe_best_ms'], r['caffe_median_ms']),
                      '%.2fx' % r['best_ratio'], '%.2fx' % r['median_ratio']]
        if with_torch:
            if 'torch_best_ms' in r:
                cells += [pair(r['torch_best_ms'], r['torch_median_ms']),
                          '%.2fx' % r['torch_best_ratio'], '%.2fx' % r['torch_median_ratio']]
            else:
                cells += ['-', '-', '-']
        lines.append('| %s | %s |' % (r['net'], ' | '.join(cells)))
    return lines


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
