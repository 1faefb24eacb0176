"""`minicaffe time`: Caffe's ``caffe time`` benchmark (tools/caffe.cpp, time()).

As Caffe does: build the net (TRAIN phase unless told otherwise), run one
forward and one backward pass as a warm-up, then (unlike Caffe, whose first
timed iterations pay for allocations and threads starting up: with 50
iterations they pulled the mean up) ``warmup`` untimed iterations of the timed
loop, 1 by default, then for each iteration run every
layer's forward in net order and every layer's backward in reverse order,
timing each layer and each pass.  Layer forward is Caffe's Layer::Forward
(reshape, forward, loss of loss-weighted tops); layer backward is called with
the net's bottom_need_backward for every layer, as Caffe calls Backward on all
of them (layers that need no backward do no work there).

Report (stdout), Caffe's lines without the glog prefix, after a header line
that says how many iterations were timed and how many warm-up ones were not::

    Timed 50 iterations after 1 untimed warm-up iteration.
    Average time per layer:
         conv1	forward: 1.234 ms.
         conv1	backward: 2.345 ms.
    ...
    Average Forward pass: X ms.
    Average Backward pass: X ms.
    Average Forward-Backward: X ms.
    Total Time: X ms.

With ``--layers`` a table follows: per layer its type, the convolution
algorithm (im2col, winoF2, winoF4, winoF2r5 or winoF3r4: Winograd F(2x2,3x3),
F(4x4,3x3), F(2x2,5x5) or F(3x3,4x4); s4: a stride-4 kernel by its phases, k5:
a 5x5 kernel in 3x3 blocks; -fwd: forward only), forward/backward ms and GFLOP/s, the FLOPs
counted from the layer's shapes (layer_flops) for the GEMM layers
(Convolution, Deconvolution, InnerProduct); the distance to the BLAS's peak
shows there.  The BLAS, its thread count and minicaffe's worker threads are
logged (stderr) before the run.

Input blobs keep whatever the net holds (zeros, as in Caffe, where Input
layers leave their tops untouched); data layers read their sources as usual.

In GPU mode (``--gpu``) layers run their device code (mode.run_forward /
run_backward) and every timed section starts and ends with
:func:`minicaffe.mode.synchronize`, so the times are of finished device work,
as Caffe's CUDA-event timer measures them (kernel launches are asynchronous).
"""
import collections
import logging
import time

from .. import mode as _mode
from .. import winograd
from . import summary
from .nets import build_net, split_stages  # noqa: F401  (also timing.build_net for scripts)
from ..errors import MinicaffeError

log = logging.getLogger('minicaffe')

# One timing run: per-layer average ms and the pass averages, all in ms.
TimingResult = collections.namedtuple(
    'TimingResult', 'layer_names layer_types forward_ms backward_ms '
                    'forward_pass_ms backward_pass_ms forward_backward_ms total_ms iterations warmup')


GEMM_LAYER_TYPES = ('Convolution', 'Deconvolution', 'InnerProduct')


def layer_flops(layer, bottom, top):
    """(forward, backward) floating-point operations of a GEMM layer from its
    shapes, or None for other layer types: forward is ``minicaffe summary``'s
    count (summary.FLOP_RULES: the direct convolution's multiply-adds x 2,
    whatever algorithm runs, plus the bias adds); backward does two such
    products (data and weight gradients)."""
    if layer.type not in GEMM_LAYER_TYPES:
        return None
    f = float(summary.layer_flops(layer, bottom, top))
    return f, 2 * f


def conv_algorithm(layer):
    """'im2col', 'stacked' (im2col with one product per image, in one matmul per
    block of images: the DEFAULT engine's small convolutions in Caffe's
    layout), 'winoF2' / 'winoF4' / 'winoF2r5' / 'winoF3r4' (Winograd F(2x2,3x3)
    / F(4x4,3x3) / F(2x2,5x5) / F(3x3,4x4) in both passes), with 'sN' for a
    kernel of stride N run by its phases (winograd.Phases), 'kN' for an N x N
    kernel run in 3x3 blocks (winograd.Blocks), and '-fwd' where only forward
    is Winograd (im2col backward: winograd.DEFAULT_BACKWARD)."""
    if layer.type == 'Convolution':
        if not getattr(layer, 'winograd', False):
            return 'stacked' if getattr(layer, 'stacked', False) else 'im2col'
        name = 'winoF%d' % layer.tiling.m
        if layer.tiling.r != 3:
            name += 'r%d' % layer.tiling.r
        stacking = getattr(layer, 'stacking', None)
        if isinstance(stacking, winograd.Phases):      # a strided kernel by its phases
            name += 's%d' % layer.stride[0]
        elif isinstance(stacking, winograd.Blocks):    # a larger kernel in 3x3 blocks
            name += 'k%d' % layer.kernel[0]
        return name if layer.winograd_backward else name + '-fwd'
    return ''


def _num(x):
    """A float as C++ iostreams print it by default (6 significant digits)."""
    return '%g' % x


def time_net(net, iterations=50, log_iteration=None, warmup=1):
    """Time ``net`` as ``caffe time`` does, after ``warmup`` untimed iterations of the
    same loop; returns a :class:`TimingResult`.

    ``log_iteration(j, ms)`` is called after each timed iteration (1-based j).
    """
    iterations = int(iterations)
    if iterations < 1:
        raise MinicaffeError('--iterations must be at least 1, got %d' % iterations)
    warmup = int(warmup)
    if warmup < 0:
        raise MinicaffeError('--warmup must be 0 or more, got %d' % warmup)
    layers = net.layers
    n = len(layers)
    bottoms = [net._bottom(i) for i in range(n)]
    tops = [net._top(i) for i in range(n)]
    need = [list(net.bottom_need_backward[i]) for i in range(n)]

    log.info('Performing Forward')
    initial_loss = net.forward_all_loss()
    log.info('Initial loss: %g', initial_loss)
    log.info('Performing Backward')
    net.backward_all()

    # Caffe calls Backward on every layer.  A layer that needs no backward gets
    # all-false propagate_down; one of ours that still refuses (a base
    # "cannot backpropagate" check) is simply not called: it would do no work.
    callable_backward = []
    for i, layer in enumerate(layers):
        if net.layer_need_backward[i]:
            callable_backward.append(True)
            continue
        try:
            saved = [b.diff.copy() for b in layer.blobs]
            _mode.run_backward(layer, tops[i], need[i], bottoms[i])
            for b, d in zip(layer.blobs, saved):
                b.diff[...] = d
            callable_backward.append(True)
        except (MinicaffeError, NotImplementedError):
            callable_backward.append(False)

    fwd_layer = [0.0] * n
    bwd_layer = [0.0] * n
    forward_time = backward_time = 0.0
    sync = _mode.synchronize        # waits for the device in GPU mode; nothing on the CPU

    def clock():
        sync()
        return time.perf_counter()

    def one_iteration():
        for i in range(n):
            net._forward_layer(i)
        for i in range(n - 1, -1, -1):
            if callable_backward[i]:
                _mode.run_backward(layers[i], tops[i], need[i], bottoms[i])

    if warmup:
        log.info('Warming up for %d untimed iteration%s.', warmup, '' if warmup == 1 else 's')
        for _ in range(warmup):
            one_iteration()
    log.info('*** Benchmark begins ***')
    log.info('Testing for %d iterations.', iterations)
    total_start = clock()
    for j in range(iterations):
        iter_start = clock()
        forward_start = clock()
        for i in range(n):
            t0 = clock()
            net._forward_layer(i)
            fwd_layer[i] += clock() - t0
        forward_time += clock() - forward_start
        backward_start = clock()
        for i in range(n - 1, -1, -1):
            t0 = clock()
            if callable_backward[i]:
                _mode.run_backward(layers[i], tops[i], need[i], bottoms[i])
            bwd_layer[i] += clock() - t0
        backward_time += clock() - backward_start
        iter_ms = (clock() - iter_start) * 1000.0
        if log_iteration is not None:
            log_iteration(j + 1, iter_ms)
        log.info('Iteration: %d forward-backward time: %s ms.', j + 1, _num(iter_ms))
    total_ms = (clock() - total_start) * 1000.0
    log.info('*** Benchmark ends ***')
    scale = 1000.0 / iterations
    return TimingResult(
        layer_names=list(net._layer_names),
        layer_types=[layer.type for layer in layers],
        forward_ms=[t * scale for t in fwd_layer],
        backward_ms=[t * scale for t in bwd_layer],
        forward_pass_ms=forward_time * scale,
        backward_pass_ms=backward_time * scale,
        forward_backward_ms=total_ms / iterations,
        total_ms=total_ms,
        iterations=iterations,
        warmup=warmup)


def format_report(result):
    """A header (iterations timed, warm-up ones not), then Caffe's report lines (per
    layer, then the four summary lines)."""
    lines = ['Timed %d iteration%s after %d untimed warm-up iteration%s.'
             % (result.iterations, '' if result.iterations == 1 else 's',
                result.warmup, '' if result.warmup == 1 else 's'),
             'Average time per layer: ']
    for name, f, b in zip(result.layer_names, result.forward_ms, result.backward_ms):
        lines.append('%10s\tforward: %s ms.' % (name, _num(f)))
        lines.append('%10s\tbackward: %s ms.' % (name, _num(b)))
    lines.append('Average Forward pass: %s ms.' % _num(result.forward_pass_ms))
    lines.append('Average Backward pass: %s ms.' % _num(result.backward_pass_ms))
    lines.append('Average Forward-Backward: %s ms.' % _num(result.forward_backward_ms))
    lines.append('Total Time: %s ms.' % _num(result.total_ms))
    return lines


def _gflops(rate):
    """A GFLOP/s figure: one decimal, or 3 significant digits below 10 (a tiny
    layer's rate would print 0.0 with one decimal)."""
    return '%9.1f' % rate if rate >= 10 else '%9.3g' % rate


def format_layer_table(net, result):
    """The --layers table: ms and GFLOP/s per layer (GEMM layers only)."""
    lines = ['%-16s %-16s %-9s %11s %11s %9s %9s' % ('layer', 'type', 'algorithm', 'fwd ms',
                                                    'bwd ms', 'fwd GF/s', 'bwd GF/s')]
    for i, (name, f_ms, b_ms) in enumerate(zip(result.layer_names, result.forward_ms,
                                               result.backward_ms)):
        layer = net.layers[i]
        flops = layer_flops(layer, net._bottom(i), net._top(i))
        rate = ['-', '-']
        if flops is not None:
            rate = [_gflops(fl / ms / 1e6) if ms > 0 else '-' for fl, ms in zip(flops, (f_ms, b_ms))]
            if not any(net.bottom_need_backward[i]) and not net.layer_need_backward[i]:
                rate[1] = '-'
        lines.append('%-16s %-16s %-9s %11.3f %11.3f %9s %9s' % (
            name, layer.type, conv_algorithm(layer), f_ms, b_ms, rate[0], rate[1]))
    return lines


# ---------------------------------------------------------------- command line
def add_arguments(p):
    p.add_argument('model', help='net .prototxt to time')
    p.add_argument('--iterations', type=int, default=50, help='timed iterations (default 50)')
    p.add_argument('--warmup', type=int, default=1,
                   help='untimed iterations of the same loop before the timed ones (default 1;'
                        ' 0 times from the first, as Caffe)')
    p.add_argument('--phase', type=str.upper, choices=['TRAIN', 'TEST'], default='TRAIN',
                   help='net phase (default TRAIN, as caffe time)')
    p.add_argument('--level', type=int, default=0, help='net state level')
    p.add_argument('--stage', action='append', default=[],
                   help='net state stage (repeatable, or comma-separated)')
    p.add_argument('--weights', default=None,
                   help='optional comma-separated .caffemodel/.h5 weights to load first')
    p.add_argument('--gpu', default=None,
                   help='time on this GPU (an id; needs the CuPy backend); CPU when omitted')
    p.add_argument('--layers', action='store_true',
                   help='also print a per-layer table with GFLOP/s and the convolution algorithm')


def run(args, out=print):
    if args.gpu is not None:
        from .training import use_gpu
        use_gpu(args.gpu)
    net = build_net(args.model, args.phase, args.level, split_stages(args.stage), args.weights)
    if args.gpu is None:
        from ..blas import describe
        from ..im2col import num_threads
        log.info('BLAS: %s; minicaffe worker threads: %d', describe(), num_threads())
    result = time_net(net, args.iterations, warmup=args.warmup)
    for line in format_report(result):
        out(line)
    if getattr(args, 'layers', False):
        for line in format_layer_table(net, result):
            out(line)
    return 0
