#!/usr/bin/env python
"""Per-layer speed of Winograd F(2x2,3x3) against im2col + GEMM (engine CAFFE).

    python benchmarks/bench_winograd.py [--net ../shared/bench/caffenet_b10.prototxt]
                                        [--layers conv3,conv4,conv5] [--rounds 7]

Builds the net (TRAIN phase, as `caffe time`) once per algorithm and times each
chosen layer's forward and backward passes, alternating the two algorithms
round by round so that both see the same machine load.  Prints, per layer and
pass, the best and median milliseconds of each, the speed-up (im2col / Winograd,
on the medians) and the GFLOP/s of the direct convolution's multiply-adds
(2 * N * K * C/G * 9 * Ho * Wo per product; backward does two products).
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
    nets = {e: build(args.net, e) for e in ('caffe', 'winograd')}
    for name in names:
        layer = nets['winograd'].layers[list(nets['winograd']._layer_names).index(name)]
        if not layer.winograd:
            raise SystemExit('bench_winograd: layer %s has no Winograd form (3x3, stride 1, '
                             'dilation 1, pad <= 2)' % name)
    times = {(e, n): ([], []) for e in nets for n in names}
    for _ in range(args.rounds):
        for e, net in nets.items():
            for n in names:
                f, b = time_layer(net, n)
                times[e, n][0].append(f)
                times[e, n][1].append(b)
    print('threads: minicaffe %d (BLAS 1 each); rounds %d (alternating); machine load affects'
          ' absolute numbers' % (caffe.get_num_threads(), args.rounds))
    print('%-8s %-8s %22s %22s %8s %14s' % ('layer', 'pass', 'im2col best/med ms',
                                           'winograd best/med ms', 'speedup', 'GFLOP/s i2c/wg'))
    for n in names:
        layer = nets['caffe'].layers[list(nets['caffe']._layer_names).index(n)]
        for k, label, mult in ((0, 'forward', 1), (1, 'backward', 2)):
            c, w = times['caffe', n][k], times['winograd', n][k]
            cm, wm = statistics.median(c), statistics.median(w)
            fl = conv_flops(layer) * mult
            print('%-8s %-8s %10.2f / %9.2f %10.2f / %9.2f %7.2fx %6.1f / %5.1f'
                  % (n, label, min(c), cm, min(w), wm, cm / wm, fl / cm / 1e6, fl / wm / 1e6))
    return 0


if __name__ == '__main__':
    sys.exit(main())
