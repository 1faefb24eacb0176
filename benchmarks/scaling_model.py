#!/usr/bin/env python
"""A cost model of data-parallel training: what one iteration all-reduces and
what that costs at NVLink and InfiniBand speeds (docs/scaling.md prints it).

    python benchmarks/scaling_model.py [--tflops 30] [--gpus 8 64]

For each net of ../shared/bench (full width) it reads, through minicaffe, the
bytes of gradient every rank contributes per iteration (4 bytes x every
learnable parameter: Caffe reduces all of them, lr_mult 0 included) and the
forward FLOPs per sample, then models one iteration on N GPUs:

* compute: 3 x forward FLOPs (forward, data gradient, weight gradient) x the
  per-GPU batch / a sustained rate (``--tflops``; an assumption, stated in the
  output, since nothing here has run on a GPU yet);
* ring all-reduce of S bytes over N ranks: 2 (N-1)/N x S / B + 2 (N-1) x a,
  with B the bus bandwidth of the slowest hop and a its latency; 64 GPUs are 8
  nodes of 8 sharing one 100 Gb/s NIC per node, so the inter-node ring (over 8
  nodes) is the slow hop, after an NVLink reduce-scatter inside each node;
* overlap: with layer_wise_reduce each layer's reduce starts when its
  backward is done (top layer first) and the reduces run one after another on
  their own stream; what is left of them after backward ends is exposed.
  Without it the whole reduce follows backward.

The FLOP count is the parameter rule: a layer with weights W applies them at
top.count / num_output positions (conv: N x H_out x W_out; inner product:
rows; LSTM: T x N), 2 FLOPs per multiply-add; Embed is a lookup (0).  Layers
without weights are ignored: a model, not a profile.
"""
import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_nets import NETS  # noqa: E402

# Bus bandwidths (bytes/s) and per-step latencies (s) of the hops modelled.
NVLINK = ('NVLink (H100 SXM, ~400 GB/s NCCL bus bandwidth)', 400e9, 5e-6)
INFINIBAND = ('100 Gb/s InfiniBand (12.5 GB/s, one NIC per node)', 12.5e9, 10e-6)
GPUS_PER_NODE = 8

# Per-GPU batches modelled: Caffe's own training batches for these nets
# (bvlc_reference_caffenet: 256 images; LRCN captioning: 100 streams of T=20).
PER_GPU_BATCH = {'lenet': 64, 'caffenet': 256, 'lrcn_caption': 100, 'lstm_lm': 100,
                 'lrcn_activity': 32}


def net_facts(path, stages):
    """([(layer, gradient bytes, forward FLOPs)] in backward order, forward FLOPs, batch)."""
    import minicaffe
    logging.getLogger('minicaffe').setLevel(logging.ERROR)
    net = minicaffe.Net(path, minicaffe.TRAIN, stages=stages)
    layers = []
    for name, layer in zip(net._layer_names, net.layers):
        blobs = getattr(layer, 'blobs', [])
        if not blobs:
            continue
        flops = 0
        if layer.type != 'Embed':
            top = net.blobs[net.top_names[name][0]]
            # Outputs per position: the weights' first dimension (num_output), of
            # which an LSTM's gates are 4 per hidden unit.
            outputs = blobs[0].shape[0] // (4 if layer.type == 'LSTM' else 1)
            positions = top.count // max(1, outputs)
            flops = 2 * positions * sum(b.count for b in blobs if len(b.shape) > 1)
        layers.append((name, 4 * sum(b.count for b in blobs), flops))
    batch = net.blobs[net.inputs[0]].shape[0]
    return layers[::-1], sum(f for _, _, f in layers), batch


def ring_seconds(nbytes, ranks, hop):
    _, bandwidth, latency = hop
    if ranks < 2:
        return 0.0
    return 2.0 * (ranks - 1) / ranks * nbytes / bandwidth + 2 * (ranks - 1) * latency


def allreduce_seconds(nbytes, gpus):
    """One node: an NVLink ring.  Several: reduce-scatter inside each node over
    NVLink (half a ring), an InfiniBand ring over the nodes on each GPU's
    1/8 shard, all-gather inside the node (the other half); the NIC is shared,
    so the inter-node part carries the whole buffer through it."""
    if gpus <= GPUS_PER_NODE:
        return ring_seconds(nbytes, gpus, NVLINK)
    nodes = gpus // GPUS_PER_NODE
    return ring_seconds(nbytes, GPUS_PER_NODE, NVLINK) + ring_seconds(nbytes, nodes, INFINIBAND)


def iteration(layers, compute_s, gpus, layer_wise):
    """(iteration seconds, exposed communication seconds)."""
    forward_s, backward_s = compute_s / 3.0, compute_s * 2.0 / 3.0
    total = sum(b for _, b, _ in layers)
    flops = sum(f for _, _, f in layers)
    if gpus < 2:
        return compute_s, 0.0
    if not layer_wise:
        comm = allreduce_seconds(total, gpus)
        return compute_s + comm, comm
    # Backward time shared out by the layers' FLOPs; a layer's reduce starts
    # when its backward ends and the previous reduce is done.
    t_ready, t_comm = 0.0, 0.0
    for _, nbytes, layer_flops in layers:
        t_ready += backward_s * layer_flops / flops
        t_comm = max(t_comm, t_ready) + allreduce_seconds(nbytes, gpus)
    exposed = max(0.0, t_comm - backward_s)
    return forward_s + backward_s + exposed, exposed


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--bench', default=os.path.join(os.path.dirname(__file__), '..', '..', 'shared',
                                                    'bench'),
                    help='folder of the benchmark nets (default ../shared/bench)')
    ap.add_argument('--tflops', type=float, default=30.0,
                    help='sustained FP32 TFLOP/s per GPU assumed for compute (default 30, about'
                         ' half an H100 SXM\'s FP32 peak)')
    ap.add_argument('--gpus', type=int, nargs='+', default=[8, 64], help='GPU counts (default 8 64)')
    ap.add_argument('--nets', nargs='+', default=None, help='short names (default all)')
    args = ap.parse_args(argv)
    print('Assumed: %.0f TFLOP/s sustained per GPU; %s; %s; %d GPUs per node.'
          % (args.tflops, NVLINK[0], INFINIBAND[0], GPUS_PER_NODE))
    print()
    print('| net | params | MB all-reduced / iter | per-GPU batch | compute ms / iter |'
          + ''.join(' all-reduce ms, %d GPUs | efficiency %d GPUs (end / layer-wise) |' % (g, g)
                    for g in args.gpus))
    print('| --- | ---: | ---: | ---: | ---: |' + ' ---: | ---: |' * len(args.gpus))
    for short, fname, stages, _, _, _ in NETS:
        if args.nets and short not in args.nets:
            continue
        layers, flops, batch = net_facts(os.path.join(args.bench, fname), stages)
        per_gpu = PER_GPU_BATCH.get(short, batch)
        compute_s = 3.0 * flops / batch * per_gpu / (args.tflops * 1e12)
        total = sum(b for _, b, _ in layers)
        row = '| %s | %.1fM | %.0f | %d | %.2f |' % (short, total / 4e6, total / 1e6, per_gpu,
                                                      compute_s * 1e3)
        for g in args.gpus:
            end_s, _ = iteration(layers, compute_s, g, False)
            lw_s, _ = iteration(layers, compute_s, g, True)
            row += ' %.1f | %.0f%% / %.0f%% |' % (allreduce_seconds(total, g) * 1e3,
                                                   100 * compute_s / end_s, 100 * compute_s / lw_s)
        print(row)


if __name__ == '__main__':
    main()
