#!/usr/bin/env python
"""Train a solver on one or more GPUs with pycaffe's multi-GPU API: the
equivalent of Caffe's python/train.py, on minicaffe.

    python tools/train.py --solver S.prototxt [--gpus 0 1 2 3] [--snapshot F.solverstate]
                          [--weights W.caffemodel[,W2...]] [--timing]

One process per GPU (multiprocessing's 'spawn' start method: a forked child
cannot use CUDA that its parent initialised), NCCL between them: each process
sets its device and the solver count/rank, builds the solver, joins
``caffe.NCCL(solver, uid)``, broadcasts rank 0's weights and trains with the
NCCL object as solver callback and, with ``layer_wise_reduce``, as the net's
after_backward hook.  ``--timing`` prints per-layer forward/backward times,
the solver's total and the all-reduce time every ``display`` iterations
(rank 0).  ``minicaffe train --solver S --gpu 0,1,2,3`` does the same with
Caffe's command-line behaviour (signals, metrics, --snapshot auto).

Differences from upstream's script, on purpose: the solver type is the one the
file names (upstream always built an SGDSolver), a restored solver trains up
to ``max_iter`` (upstream ran ``max_iter`` more iterations), ``--weights``
starts from trained weights as ``caffe train --weights`` does, and a rank that
fails ends the others and the script exits non-zero.
"""
import argparse
import multiprocessing
import multiprocessing.connection
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

import minicaffe as caffe  # noqa: E402


def train(solver, snapshot, gpus, timing=False, weights=None):
    """Start one rank per GPU and wait for them; returns the exit status."""
    uid = caffe.NCCL.new_uid()      # NCCL names its session by this id
    caffe.init_log()
    caffe.log('Using devices %s' % str(gpus))
    ctx = multiprocessing.get_context('spawn')
    procs = []
    for rank in range(len(gpus)):
        p = ctx.Process(target=solve, args=(solver, snapshot, gpus, timing, uid, rank, weights),
                        daemon=True)
        p.start()
        procs.append(p)
    running = {p.sentinel: (rank, p) for rank, p in enumerate(procs)}
    while running:
        for sentinel in multiprocessing.connection.wait(list(running)):
            rank, p = running.pop(sentinel)
            p.join()
            if p.exitcode != 0:
                sys.stderr.write('train.py: rank %d (GPU %d) failed (exit status %s); stopping the'
                                 ' others\n' % (rank, gpus[rank], p.exitcode))
                for _, other in running.values():
                    other.terminate()
                return 1
    return 0


def time(solver, nccl):
    """Per-layer and all-reduce timers, shown every ``display`` iterations."""
    fprop = []
    bprop = []
    total = caffe.Timer()
    allrd = caffe.Timer()
    for _ in range(len(solver.net.layers)):
        fprop.append(caffe.Timer())
        bprop.append(caffe.Timer())
    display = solver.param.display

    def show_time():
        if display and solver.iter % display == 0:
            s = '\n'
            for i in range(len(solver.net.layers)):
                s += 'forw %3d %8s ' % (i, solver.net._layer_names[i])
                s += ': %.2f\n' % fprop[i].ms
            for i in range(len(solver.net.layers) - 1, -1, -1):
                s += 'back %3d %8s ' % (i, solver.net._layer_names[i])
                s += ': %.2f\n' % bprop[i].ms
            s += 'solver total: %.2f\n' % total.ms
            s += 'allreduce: %.2f\n' % allrd.ms
            caffe.log(s)

    solver.net.before_forward(lambda layer: fprop[layer].start())
    solver.net.after_forward(lambda layer: fprop[layer].stop())
    solver.net.before_backward(lambda layer: bprop[layer].start())
    solver.net.after_backward(lambda layer: bprop[layer].stop())
    solver.add_callback(lambda: total.start(), lambda: (total.stop(), allrd.start()))
    solver.add_callback(nccl)
    solver.add_callback(lambda: '', lambda: (allrd.stop(), show_time()))


def solve(proto, snapshot, gpus, timing, uid, rank, weights=None):
    """One rank: GPU ``gpus[rank]``, rank ``rank`` of ``len(gpus)``."""
    caffe.init_log(0 if rank == 0 else 1)      # rank 0 speaks for all
    try:
        _solve(proto, snapshot, gpus, timing, uid, rank, weights)
    except caffe.MinicaffeError as e:
        sys.stderr.write('train.py: error: rank %d (GPU %d): %s\n' % (rank, gpus[rank], e))
        sys.exit(2)


def _solve(proto, snapshot, gpus, timing, uid, rank, weights):
    caffe.set_device(gpus[rank])
    caffe.set_mode_gpu()
    caffe.set_solver_count(len(gpus))
    caffe.set_solver_rank(rank)
    caffe.set_multiprocess(True)

    solver = caffe.get_solver(proto)
    if snapshot:
        solver.restore(snapshot)
    elif weights:
        for w in weights.split(','):
            if w.strip():
                solver.net.copy_from(w.strip())

    nccl = caffe.NCCL(solver, uid)
    nccl.bcast()

    if timing and rank == 0:
        time(solver, nccl)
    else:
        solver.add_callback(nccl)

    if solver.param.layer_wise_reduce:
        solver.net.after_backward(nccl)
    solver.step(solver.param.max_iter - solver.iter)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--solver', required=True, help='Solver proto definition.')
    parser.add_argument('--snapshot', help='Solver snapshot to restore.')
    parser.add_argument('--weights', help='Comma-separated .caffemodel files to start from'
                                          ' (not with --snapshot).')
    parser.add_argument('--gpus', type=int, nargs='+', default=[0], help='List of device ids.')
    parser.add_argument('--timing', action='store_true', help='Show timing info.')
    args = parser.parse_args(argv)
    if args.snapshot and args.weights:
        parser.error('give either --snapshot or --weights, not both')
    if not os.path.isfile(args.solver):
        parser.error('solver file %s does not exist' % args.solver)
    if len(set(args.gpus)) != len(args.gpus):
        parser.error('a device is named twice in --gpus %s' % ' '.join(map(str, args.gpus)))
    try:
        return train(args.solver, args.snapshot, args.gpus, args.timing, args.weights)
    except caffe.MinicaffeError as e:
        sys.stderr.write('train.py: error: %s\n' % e)
        return 2


if __name__ == '__main__':
    sys.exit(main())
