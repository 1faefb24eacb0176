#!/usr/bin/env python
"""Data-parallel scaling over MPI: iterations/s and samples/s for 1, 2, 4 ranks.

    python benchmarks/bench_scaling.py [--net lenet --net caffenet] [--ranks 1,2,4]
                                       [--iterations 5] [--warmup 2] [--json out.json] [--gpu]

``--gpu``: GPU ranks instead (rank r on GPU r, NCCL between them, started as
plain processes sharing one NCCL unique id; one rank is the plain GPU path).

For each net of ../shared/bench (data layers replaced by Input; the inputs stay
zero, which costs the same arithmetic as real data) and each rank count, runs
``mpiexec -n N`` of this script in worker mode: every rank builds the solver
(SGD, fixed lr) and trains with minicaffe's data-parallel code, rank 0 times
``--iterations`` iterations after ``--warmup``.  Each rank keeps the net's
batch B, so N ranks train an effective batch N x B (Caffe's multi-GPU rule);
samples/s = N x B x iterations/s.  With N > 1 both ``layer_wise_reduce`` true
and false run: "comm" is the time per iteration inside the all-reduce calls,
"waited" the time the solver was held up by the reduction (packing, waiting,
unpacking), and "hidden" the share of the false run's communication time that
the true run saved off the iteration -- the overlap layer-wise reduction bought.

Ranks on one machine share its cores (minicaffe's threads and BLAS threads
per rank = cores / ranks, or ``--threads-per-rank``), so on a 2-core machine 2 ranks do not compute
faster than 1: the numbers there measure the overhead of the engine, not a
speed-up; 4 ranks on 2 cores are oversubscribed.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_nets import NETS  # noqa: E402

SHARED = Path(os.environ.get('MINICAFFE_SHARED', ROOT.parent / 'shared'))
DEFAULT_NETS = ['lenet', 'caffenet']


def _solver_param(net_path, stages, layer_wise):
    from minicaffe.protoio import pb
    p = pb.SolverParameter()
    p.net = str(net_path)
    p.type = 'SGD'
    p.base_lr = 1e-6
    p.momentum = 0.9
    p.lr_policy = 'fixed'
    p.max_iter = 1 << 30
    p.display = 0
    p.snapshot_after_train = False
    p.layer_wise_reduce = layer_wise
    p.train_state.stage.extend(stages)
    return p


def _gpu_communicator(args):
    """GPU ranks (--gpu): this worker's device is its rank; NCCL between the
    ranks (the unique id comes from the driver), none for one rank."""
    from minicaffe import mode
    mode.set_device(args.rank)
    mode.set_mode_gpu()
    if args.size == 1:
        return None
    from minicaffe.parallel.nccl_comm import NCCLCommunicator
    return NCCLCommunicator(args.size, bytes.fromhex(args.uid), args.rank)


def worker(args):
    """One rank: build, warm up, time; rank 0 writes the JSON result."""
    from minicaffe import mode
    from minicaffe.parallel.launch import communicator_from_environment, join, start
    from minicaffe.solvers import Solver
    comm = _gpu_communicator(args) if args.gpu else communicator_from_environment()
    if comm is not None:
        join(comm)
    solver = Solver(_solver_param(args.net_path, args.stage, args.layer_wise == 'true'),
                    source=args.net_path)
    dp = start(solver, comm) if comm is not None else None
    from minicaffe.parallel.launch import batch_size
    solver.step(args.warmup)
    if dp is not None:
        dp.comm_seconds = dp.wait_seconds = 0.0
        dp.iterations = dp.bytes_reduced = 0
        comm.barrier()
    mode.synchronize()          # GPU: time finished device work
    t0 = time.perf_counter()
    solver.step(args.iterations)
    if comm is not None:
        comm.barrier()
    mode.synchronize()
    seconds = time.perf_counter() - t0
    if comm is None or comm.rank == 0:
        ranks = comm.size if comm is not None else 1
        batch = batch_size(solver.net) or 0
        c = dp.summary() if dp is not None else {'comm_seconds': 0.0, 'wait_seconds': 0.0,
                                                 'bytes_per_iteration': 0.0, 'buckets': 0}
        n = args.iterations
        out = {'ranks': ranks, 'batch_per_rank': batch, 'iterations': n, 'seconds': seconds,
               'iter_per_s': n / seconds, 'samples_per_s': ranks * batch * n / seconds,
               'comm_s_per_iter': c['comm_seconds'] / n, 'wait_s_per_iter': c['wait_seconds'] / n,
               'mb_per_iter': c['bytes_per_iteration'] / 1e6, 'buckets': c['buckets'],
               'layer_wise_reduce': args.layer_wise == 'true' and ranks > 1}
        with open(args.out, 'w') as f:
            json.dump(out, f)
    return 0


def _mpiexec():
    return shutil.which('mpiexec') or shutil.which('mpiexec', path=sysconfig.get_path('scripts'))


def _run(n, net_path, stages, layer_wise, args, out):
    cmd = [sys.executable, os.path.abspath(__file__), '--worker', '--net-path', str(net_path),
           '--layer-wise', layer_wise, '--iterations', str(args.iterations),
           '--warmup', str(args.warmup), '--out', out] + ['--stage=%s' % s for s in stages]
    if n > 1 and not args.gpu:
        cmd = [_mpiexec(), '-n', str(n)] + cmd
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT)] + [
        p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p]))
    env.setdefault('GLOG_minloglevel', '1')
    threads = args.threads_per_rank or max(1, (os.cpu_count() or 1) // n)
    for var in ('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS', 'MINICAFFE_NUM_THREADS'):
        env[var] = str(threads)
    if args.gpu:
        done = _run_gpu_ranks(n, cmd, env)
    else:
        done = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if done.returncode != 0 or not os.path.exists(out):
        raise RuntimeError('%s failed (exit %d):\n%s' % (' '.join(cmd), done.returncode, done.stdout[-3000:]))
    with open(out) as f:
        return json.load(f)


def _run_gpu_ranks(n, cmd, env):
    """GPU ranks 0..n-1 on GPUs 0..n-1 as plain processes joined by one NCCL
    unique id (no MPI needed); rank 0's output is returned."""
    uid = ''
    if n > 1:
        from minicaffe.parallel.nccl_comm import new_uid
        uid = new_uid().hex()
    procs = [subprocess.Popen(cmd + ['--gpu', '--rank', str(r), '--size', str(n), '--uid', uid], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in range(n)]
    outs = [p.communicate()[0] for p in procs]
    bad = [r for r, p in enumerate(procs) if p.returncode != 0]
    return subprocess.CompletedProcess(cmd, procs[bad[0]].returncode if bad else 0,
                                       stdout=outs[bad[0]] if bad else outs[0])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--bench-dir', default=str(SHARED / 'bench'))
    p.add_argument('--net', action='append', default=[],
                   help='nets to run (%s; default %s); repeatable'
                        % (', '.join(n[0] for n in NETS), ', '.join(DEFAULT_NETS)))
    p.add_argument('--ranks', default='1,2,4', help='rank counts (default 1,2,4)')
    p.add_argument('--iterations', type=int, default=5, help='timed iterations (default 5)')
    p.add_argument('--warmup', type=int, default=2, help='untimed iterations first (default 2)')
    p.add_argument('--threads-per-rank', type=int, default=0,
                   help='BLAS and minicaffe threads per rank (default: cores / ranks, at least 1)')
    p.add_argument('--json', default=None, help='write every result here')
    p.add_argument('--gpu', action='store_true',
                   help='GPU ranks: rank r on GPU r, NCCL between them (needs CuPy with NCCL and'
                        ' as many GPUs as the largest rank count); 1 rank is the plain GPU path')
    # worker mode (one rank, started by the driver through mpiexec)
    p.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
    p.add_argument('--net-path', help=argparse.SUPPRESS)
    p.add_argument('--stage', action='append', default=[], help=argparse.SUPPRESS)
    p.add_argument('--layer-wise', default='true', help=argparse.SUPPRESS)
    p.add_argument('--out', help=argparse.SUPPRESS)
    p.add_argument('--rank', type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument('--size', type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument('--uid', default='', help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)

    ranks = [int(r) for r in args.ranks.split(',') if r.strip()]
    if args.gpu:
        from minicaffe.gpu.backend import require_cupy
        have = require_cupy().cuda.runtime.getDeviceCount()
        if max(ranks) > have:
            p.error('--gpu: %d rank(s) need as many GPUs; this machine has %d' % (max(ranks), have))
    elif any(r > 1 for r in ranks) and not _mpiexec():
        p.error("mpiexec not found: pip install -e '.[mpi]'")
    names = args.net or DEFAULT_NETS
    known = {n[0]: n for n in NETS}
    unknown = [n for n in names if n not in known]
    if unknown:
        p.error('unknown net(s) %s; choose from %s' % (unknown, sorted(known)))
    print('%d timed iterations after %d warm-up; %d cores here; rank counts %s; threads per rank %s'
          % (args.iterations, args.warmup, os.cpu_count() or 0, ranks,
             args.threads_per_rank or 'cores / ranks'))
    rows = []
    tmp = tempfile.mkdtemp(prefix='bench_scaling_')
    try:
        for name in names:
            _, fname, stages, _, unit, _ = known[name]
            path = Path(args.bench_dir) / fname
            for n in ranks:
                for lw in (['true', 'false'] if n > 1 else ['true']):
                    out = os.path.join(tmp, '%s_%d_%s.json' % (name, n, lw))
                    try:
                        r = _run(n, path, stages, lw, args, out)
                    except RuntimeError as e:
                        print('%s, %d rank(s), layer_wise_reduce %s: FAILED\n%s' % (name, n, lw, e))
                        rows.append({'net': name, 'ranks': n, 'layer_wise_reduce': lw == 'true',
                                     'error': str(e)})
                        continue
                    r.update(net=name, unit=unit)
                    rows.append(r)
                    print('%s, %d rank(s)%s: %.3f it/s, %.1f %s/s, comm %.1f ms/it'
                          % (name, n, '' if n == 1 else ', layer_wise_reduce ' + lw, r['iter_per_s'],
                             r['samples_per_s'], unit, 1e3 * r['comm_s_per_iter']))
                    sys.stdout.flush()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _table(rows)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump({'iterations': args.iterations, 'warmup': args.warmup, 'rows': rows}, f, indent=1)
    return 1 if any('error' in r for r in rows) else 0


def _table(rows):
    print()
    print('| net | ranks | layer_wise_reduce | it/s | samples/s | speed-up | comm ms/it | waited ms/it'
          ' | MB/it | hidden |')
    print('| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |')
    ok = [r for r in rows if 'error' not in r]
    for r in rows:
        if 'error' in r:
            print('| %s | %d | %s | failed | | | | | | |' % (r['net'], r['ranks'], r['layer_wise_reduce']))
            continue
        base = [b for b in ok if b['net'] == r['net'] and b['ranks'] == 1]
        speed = '%.2fx' % (r['samples_per_s'] / base[0]['samples_per_s']) if base else '-'
        hidden = '-'
        if r['ranks'] > 1 and r['layer_wise_reduce']:
            off = [b for b in ok if b['net'] == r['net'] and b['ranks'] == r['ranks']
                   and not b['layer_wise_reduce']]
            if off and off[0]['comm_s_per_iter'] > 0:
                saved = 1.0 / off[0]['iter_per_s'] - 1.0 / r['iter_per_s']
                hidden = '%.0f%%' % (100.0 * saved / off[0]['comm_s_per_iter'])
        print('| %s | %d | %s | %.3f | %.1f | %s | %.1f | %.1f | %.1f | %s |'
              % (r['net'], r['ranks'], ('true' if r['layer_wise_reduce'] else 'false') if r['ranks'] > 1
                 else '-', r['iter_per_s'], r['samples_per_s'], speed, 1e3 * r['comm_s_per_iter'],
                 1e3 * r['wait_s_per_iter'], r['mb_per_iter'], hidden))


if __name__ == '__main__':
    sys.exit(main())
