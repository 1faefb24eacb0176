#!/usr/bin/env python
"""CaffeNet's fully connected layers at batch 10: forward, backward and the solver update.

    python benchmarks/bench_fc.py [--iterations 10] [--rounds 3] [--batch 10]
                                  [--blas openblas,mkl] [--baseline /path/to/other/checkout]
                                  [--solver SGD] [--json out.json] [--inputs 9216 --width 4096]
                                  [--clock wall|cpu]

fc6 (9216 -> 4096: 151 MB of weights) and fc7 (4096 -> 4096: 67 MB) are
memory-bound at small batch: each pass streams the weights (forward: W;
backward: dW read and written, W read; the update: w, diff and history).  Each
measurement runs in a child process (this script with --child) that builds
Input -> fc6 -> relu -> fc7 -> EuclideanLoss, then times, per iteration, each
layer's forward and backward (Caffe's Layer::Forward/Backward, as `minicaffe
time` does) and the solver's update of all params (Solver._apply_update).

--blas runs a child per BLAS (MINICAFFE_BLAS); --baseline DIR also runs the
same children on another minicaffe checkout (e.g. the integration branch before
a change: its own code, PYTHONPATH=DIR).  The children of one round run one
after another and the rounds alternate, so every variant sees the same machine
load; the table gives the best and the median iteration of each (ms).
--clock cpu times the process's CPU time instead of the wall clock (all its
threads together: on a machine shared with other jobs it leaves out the time
the process waited for a core, not the cache and memory it shares with them).
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

NET = '''name: "caffenet_fc"
force_backward: true
layer { name: "data" type: "Input" top: "data" top: "target"
  input_param { shape { dim: %(batch)d dim: %(inputs)d } shape { dim: %(batch)d dim: %(width)d } } }
layer { name: "fc6" type: "InnerProduct" bottom: "data" top: "fc6"
  inner_product_param { num_output: %(width)d weight_filler { type: "gaussian" std: 0.005 }
                        bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu6" type: "ReLU" bottom: "fc6" top: "fc6" }
layer { name: "fc7" type: "InnerProduct" bottom: "fc6" top: "fc7"
  inner_product_param { num_output: %(width)d weight_filler { type: "gaussian" std: 0.005 }
                        bias_filler { type: "constant" value: 0.1 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "fc7" bottom: "target" top: "loss" }
'''

SOLVER = '''net_param { %(net)s }
base_lr: 0.01 lr_policy: "fixed" momentum: 0.9 weight_decay: 0.0005 type: "%(type)s"
max_iter: 1000 display: 0 snapshot: 0 solver_mode: CPU random_seed: 1
'''

COLUMNS = ('fc6 fwd', 'fc7 fwd', 'fc7 bwd', 'fc6 bwd', 'update')


def child(batch, iterations, solver_type, inputs, width, clock='wall'):
    """Time the layers and the update in this process; print one JSON line."""
    import numpy as np
    import minicaffe
    from minicaffe.protoio import pb
    from google.protobuf import text_format
    net_text = NET % {'batch': batch, 'inputs': inputs, 'width': width}
    param = text_format.Parse(SOLVER % {'net': net_text, 'type': solver_type},
                              pb.SolverParameter())
    solver = minicaffe.get_solver(param)
    net = solver.net
    rng = np.random.default_rng(0)
    for name in ('data', 'target'):
        net.blobs[name].data[...] = rng.standard_normal(net.blobs[name].shape)
    index = {name: i for i, name in enumerate(net._layer_names)}
    times = {c: [] for c in COLUMNS}
    net.forward()
    net.backward()          # (sets the loss top's diff to its weight)

    now = time.process_time if clock == 'cpu' else time.perf_counter

    def timed(column, fn):
        t = now()
        fn()
        times[column].append((now() - t) * 1e3)

    def layer_fwd(name):
        i = index[name]
        net.layers[i].reshape(net._bottom(i), net._top(i))
        net.layers[i].forward(net._bottom(i), net._top(i))

    def layer_bwd(name):
        i = index[name]
        net.layers[i].backward(net._top(i), [True] * len(net._bottom(i)), net._bottom(i))

    for it in range(iterations + 1):          # the first one warms up, untimed
        net.clear_param_diffs()
        for name in ('fc6', 'relu6', 'fc7', 'loss'):
            if name in ('fc6', 'fc7'):
                timed(name + ' fwd', lambda: layer_fwd(name))
            else:
                layer_fwd(name)
        for name in ('loss', 'fc7', 'relu6', 'fc6'):
            if name in ('fc6', 'fc7'):
                timed(name + ' bwd', lambda: layer_bwd(name))
            else:
                layer_bwd(name)
        timed('update', solver._apply_update)
        if it == 0:
            for c in COLUMNS:
                times[c].clear()
    from minicaffe import blas
    print(json.dumps({'times': times, 'blas': blas.describe()}))


def run_child(checkout, blas_name, args):
    env = dict(os.environ, PYTHONPATH=str(checkout), MINICAFFE_BLAS=blas_name,
               GLOG_minloglevel='2')
    cmd = [sys.executable, str(Path(__file__).resolve()), '--child', '--batch', str(args.batch),
           '--iterations', str(args.iterations), '--solver', args.solver,
           '--inputs', str(args.inputs), '--width', str(args.width), '--clock', args.clock]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=str(checkout))
    if r.returncode != 0:
        raise SystemExit('bench_fc: the child on %s (%s) failed:\n%s'
                         % (checkout, blas_name, r.stderr[-3000:]))
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--iterations', type=int, default=10, help='timed iterations per child (10)')
    p.add_argument('--rounds', type=int, default=3, help='alternating rounds (3)')
    p.add_argument('--batch', type=int, default=10, help='rows per batch (CaffeNet: 10)')
    p.add_argument('--blas', default='openblas',
                   help='comma-separated BLASes to run (openblas, mkl; default openblas)')
    p.add_argument('--baseline', default=None,
                   help='another minicaffe checkout to time the same way, alternating')
    p.add_argument('--solver', default='SGD', help='update rule (default SGD)')
    p.add_argument('--json', default=None, help='write all iterations here as JSON')
    p.add_argument('--inputs', type=int, default=9216, help="fc6's inputs (CaffeNet: 9216)")
    p.add_argument('--width', type=int, default=4096, help="fc6's and fc7's outputs (4096)")
    p.add_argument('--clock', choices=('wall', 'cpu'), default='wall',
                   help='wall-clock time (default) or the process\'s CPU time')
    p.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args.batch, args.iterations, args.solver, args.inputs, args.width, args.clock)
        return 0
    variants = [('this', ROOT, b) for b in args.blas.split(',')]
    if args.baseline:
        variants += [('baseline', Path(args.baseline).resolve(), b) for b in args.blas.split(',')]
    samples = {(label, b): {c: [] for c in COLUMNS} for label, _, b in variants}
    described = {}
    for r in range(args.rounds):
        for label, checkout, b in variants:
            out = run_child(checkout, b, args)
            described[(label, b)] = out['blas']
            for c in COLUMNS:
                samples[(label, b)][c].extend(out['times'][c])
        print('round %d of %d done' % (r + 1, args.rounds), file=sys.stderr)
    print('fc6 (%d -> %d) and fc7 at batch %d, %s update; best / median %s ms per iteration'
          ' over %d x %d' % (args.inputs, args.width, args.batch, args.solver,
                             'CPU' if args.clock == 'cpu' else 'wall-clock', args.rounds,
                             args.iterations))
    print('%-22s' % 'variant' + ''.join('%18s' % c for c in COLUMNS) + '%18s' % 'fwd+bwd')
    for key, cols in samples.items():
        fb = [sum(x) for x in zip(*(cols[c] for c in COLUMNS[:4]))]
        cells = [cols[c] for c in COLUMNS] + [fb]
        print('%-22s' % ('%s %s' % key) + ''.join(
            '%18s' % ('%.1f / %.1f' % (min(v), statistics.median(v))) for v in cells))
    for key, text in described.items():
        print('  %s %s: BLAS %s' % (key + (text,)))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump({'%s %s' % k: v for k, v in samples.items()}, f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
