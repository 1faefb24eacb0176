#!/usr/bin/env python
"""Per-layer speed of Winograd with forced F(2x2) and F(4x4) tiles against im2col
+ GEMM (engine CAFFE).  A 5x5 kernel's F(2x2) column is F(2x2,5x5), its F(4x4)
column its 3x3 blocks under F(4x4,3x3); a strided kernel runs by its phases
(winograd.plan).

    python benchmarks/bench_winograd.py [--net ../shared/bench/caffenet_b10.prototxt]
                                        [--layers conv3,conv4,conv5] [--rounds 7]

Builds the net (TRAIN phase, as `caffe time`) once per algorithm and times each
chosen layer's forward and backward passes, alternating the algorithms round by
round so that all see the same machine load.  Prints, per layer and pass, the
best and median milliseconds of each, the speed-ups (im2col / Winograd, on the
medians) and the GFLOP/s of the direct convolution's multiply-adds
(2 * N * K * C/G * k^2 * Ho * Wo per product; backward does two products), and
which tile the DEFAULT engine picks (winograd.plan).
"""
import os

for _var in ('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS'):
    os.environ.setdefault(_var, '2')

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import minicaffe as caffe  # noqa: E402
from minicaffe import winograd  # noqa: E402

SHARED = Path(os.environ.get('MINICAFFE_SHARED', ROOT.parent / 'shared'))


def build(model, engine):
    winograd.FORCE = engine
    net = caffe.Net(str(model), caffe.TRAIN)
    net.forward()
    net.backward()
    return net


def conv_flops(layer):
    """Multiply-adds of one direct product (forward), times 2."""
    n, k = layer.num, layer.num_output
    return 2.0 * n * k * layer.kernel_dim * layer.conv_out_dim


def time_layer(net, name):
    i = list(net._layer_names).index(name)
    layer, bottom, top = net.layers[i], net._bottom(i), net._top(i)
    t0 = time.perf_counter()
    layer.forward(bottom, top)
    t1 = time.perf_counter()
    layer.backward(top, [True] * len(bottom), bottom)
    t2 = time.perf_counter()
    return (t1 - t0) * 1e3, (t2 - t1) * 1e3


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--net', default=str(SHARED / 'bench' / 'caffenet_b10.prototxt'))
    p.add_argument('--layers', default='conv3,conv4,conv5')
    p.add_argument('--rounds', type=int, default=7)
    args = p.parse_args(argv)
    names = [n for n in args.layers.split(',') if n]
    engines = ('caffe', 'winograd2', 'winograd4')
    nets = {e: build(args.net, e) for e in engines}
    winograd.FORCE = None
    default = build(args.net, None)
    for name in names:
        layer = nets['winograd2'].layers[list(nets['winograd2']._layer_names).index(name)]
        if not layer.winograd:
            raise SystemExit('bench_winograd: layer %s has no Winograd form (winograd.applicable:'
                             ' 3x3 or 5x5 at stride 1, or strided with 3x3-5x5 phases; no'
                             ' dilation; pad below the kernel)' % name)
    times = {(e, n): ([], []) for e in nets for n in names}
    for _ in range(args.rounds):
        for e, net in nets.items():
            for n in names:
                f, b = time_layer(net, n)
                times[e, n][0].append(f)
                times[e, n][1].append(b)
    print('threads: minicaffe %d (BLAS 1 each); rounds %d (alternating); machine load affects'
          ' absolute numbers' % (caffe.get_num_threads(), args.rounds))
    print('%-8s %-8s %18s %18s %18s %7s %7s %18s %s'
          % ('layer', 'pass', 'im2col best/med', 'F(2x2) best/med', 'F(4x4) best/med',
             'i2c/F2', 'i2c/F4', 'GFLOP/s i2c/F2/F4', 'DEFAULT'))
    for n in names:
        layer = nets['caffe'].layers[list(nets['caffe']._layer_names).index(n)]
        picked = default.layers[list(default._layer_names).index(n)]
        pick = repr(picked.tiling) if picked.winograd else 'im2col'
        if picked.winograd and picked.stacking is not None:
            pick += ' on %s' % type(picked.stacking).__name__
        for k, label, mult in ((0, 'forward', 1), (1, 'backward', 2)):
            runs = [times[e, n][k] for e in engines]
            meds = [statistics.median(r) for r in runs]
            fl = conv_flops(layer) * mult
            print('%-8s %-8s %s %6.2fx %6.2fx %s %s'
                  % (n, label, ' '.join('%8.2f / %7.2f' % (min(r), m) for r, m in zip(runs, meds)),
                     meds[0] / meds[1], meds[0] / meds[2],
                     ' / '.join('%5.1f' % (fl / m / 1e6) for m in meds), pick))
    return 0


if __name__ == '__main__':
    sys.exit(main())
