#!/usr/bin/env python
"""GPU speed: minicaffe (CuPy) against PyTorch (cuDNN) on the benchmark nets.

    python benchmarks/bench_gpu.py [--gpu 0] [--iterations 20] [--warmup 3]
                                   [--net caffenet ...] [--layers 5] [--no-torch]
                                   [--json out.json] [--bench-dir ../shared/bench]

For each net in ../shared/bench (data layers replaced by Input; TRAIN phase,
as `caffe time`), minicaffe runs in GPU mode: warm-up passes, then timed
iterations of one forward and one backward pass, with the device synchronized
before and after each pass (kernel launches are asynchronous).  In the same run
PyTorch equivalents of LeNet, CaffeNet and the LSTM language model are timed the same
way (forward, loss, backward; cudnn.benchmark on), when PyTorch with CUDA is
installed -- otherwise a message says so and only minicaffe's numbers appear.

The table gives ms per iteration, throughput (items per second: images,
sentences or frames, see NETS), the throughput ratio minicaffe / PyTorch and,
for reference, real Caffe's CPU time (../shared/conformance/README.md) and
minicaffe GPU's speed-up over it.  ``--layers N`` adds minicaffe's N slowest
layers per net (minicaffe/commands/timing.py's per-layer `caffe time` procedure).

The PyTorch models follow the prototxts: LeNet (20 and 50 5x5 convolutions, each
followed by 2x2 max pooling, 500 ReLU units, 10 outputs), CaffeNet with grouped conv2/4/5,
ceil-mode max pooling and cross-channel LRN (k=1, alpha=1e-4, beta=0.75, size 5)
as Caffe computes them, dropout 0.5; the LSTM language model with a 8801 x 1000
embedding (no bias), one 1000-unit LSTM over T=20, N=100 (cuDNN's LSTM has a
second bias vector, 4000 more parameters, and no sequence-continuation input:
each batch starts from a zero state), an 8801-way classifier and softmax loss
with loss weight 20.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from minicaffe import mode  # noqa: E402
from minicaffe.commands import timing
from minicaffe.errors import MinicaffeError  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_nets import NETS, caffe_figures  # noqa: E402

SHARED = Path(os.environ.get('MINICAFFE_SHARED', ROOT.parent / 'shared'))

VOCAB, EMBED, HIDDEN, T_LM, N_LM = 8801, 1000, 1000, 20, 100


# ------------------------------------------------------------------ minicaffe
def time_minicaffe(model, stages=(), iterations=20, warmup=3):
    """Forward+backward timing of a net in the current mode (GPU mode for this
    benchmark).  Returns a dict of mean ``ms``, ``forward_ms``, ``backward_ms``
    and the ``best_ms`` iteration."""
    if iterations < 1:
        raise MinicaffeError('--iterations must be at least 1, got %d' % iterations)
    net = timing.build_net(str(model), 'TRAIN', 0, list(stages))
    for _ in range(max(0, warmup)):
        net.forward_backward()
    return time_passes(lambda: net.forward_all_loss(), lambda _: net.backward_all(),
                       mode.synchronize, iterations)


def time_passes(forward, backward, sync, iterations, prepare=None):
    """Mean and best ms of ``iterations`` timed passes: ``prepare()`` (untimed),
    then ``forward()`` and ``backward(forward's result)``, each between two
    ``sync()`` calls (device work is asynchronous).  Returns mean ``ms``,
    ``forward_ms``, ``backward_ms`` and the ``best_ms`` iteration."""
    fwd, bwd = [], []
    clock = time.perf_counter
    for _ in range(iterations):
        if prepare is not None:
            prepare()
        sync()
        t0 = clock()
        out = forward()
        sync()
        t1 = clock()
        backward(out)
        sync()
        t2 = clock()
        fwd.append((t1 - t0) * 1000.0)
        bwd.append((t2 - t1) * 1000.0)
    total = [f + b for f, b in zip(fwd, bwd)]
    return {'ms': sum(total) / iterations, 'forward_ms': sum(fwd) / iterations,
            'backward_ms': sum(bwd) / iterations, 'best_ms': min(total)}


def slowest_layers(model, stages=(), iterations=5, count=5):
    """minicaffe's ``count`` slowest layers (per-layer `caffe time`, synchronized per layer)."""
    net = timing.build_net(str(model), 'TRAIN', 0, list(stages))
    res = timing.time_net(net, iterations)
    rows = [{'name': n, 'type': t, 'forward_ms': f, 'backward_ms': b}
            for n, t, f, b in zip(res.layer_names, res.layer_types, res.forward_ms, res.backward_ms)]
    return sorted(rows, key=lambda r: -(r['forward_ms'] + r['backward_ms']))[:count]


# ------------------------------------------------------------------ PyTorch
def load_torch():
    """(torch, None) when PyTorch with a CUDA device is usable, else (None, why not)."""
    try:
        import torch
    except ImportError:
        return None, ('PyTorch is not installed (pip install torch for the CUDA build matching'
                      ' the driver); the PyTorch columns are left empty')
    if not torch.cuda.is_available():
        return None, ('PyTorch %s is installed but sees no CUDA device (a CPU-only build?); the'
                      ' PyTorch columns are left empty' % torch.__version__)
    return torch, None


def torch_lenet(torch):
    """LeNet (lenet_b64.prototxt) as a torch module: forward(data, label) -> loss."""
    nn = torch.nn

    class LeNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(1, 20, 5), nn.MaxPool2d(2, 2),
                                          nn.Conv2d(20, 50, 5), nn.MaxPool2d(2, 2))
            self.classifier = nn.Sequential(nn.Linear(50 * 4 * 4, 500), nn.ReLU(inplace=True),
                                            nn.Linear(500, 10))

        def forward(self, data, label):
            scores = self.classifier(torch.flatten(self.features(data), 1))
            return nn.functional.cross_entropy(scores, label)

    return LeNet()


def torch_lenet_inputs(torch, device, batch=64):
    return (torch.rand(batch, 1, 28, 28, device=device),
            torch.randint(0, 10, (batch,), device=device))


def torch_caffenet(torch):
    """CaffeNet (caffenet_b10.prototxt) as a torch module: forward(data, label) -> loss."""
    nn = torch.nn

    def lrn():
        return nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)

    class CaffeNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 96, 11, stride=4), nn.ReLU(inplace=True),
                nn.MaxPool2d(3, 2, ceil_mode=True), lrn(),
                nn.Conv2d(96, 256, 5, padding=2, groups=2), nn.ReLU(inplace=True),
                nn.MaxPool2d(3, 2, ceil_mode=True), lrn(),
                nn.Conv2d(256, 384, 3, padding=1), nn.ReLU(inplace=True),
                nn.Conv2d(384, 384, 3, padding=1, groups=2), nn.ReLU(inplace=True),
                nn.Conv2d(384, 256, 3, padding=1, groups=2), nn.ReLU(inplace=True),
                nn.MaxPool2d(3, 2, ceil_mode=True))
            self.classifier = nn.Sequential(
                nn.Linear(256 * 6 * 6, 4096), nn.ReLU(inplace=True), nn.Dropout(0.5),
                nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(0.5),
                nn.Linear(4096, 1000))

        def forward(self, data, label):
            scores = self.classifier(torch.flatten(self.features(data), 1))
            return nn.functional.cross_entropy(scores, label)

    return CaffeNet()


def torch_caffenet_inputs(torch, device, batch=10):
    return (torch.randn(batch, 3, 227, 227, device=device),
            torch.randint(0, 1000, (batch,), device=device))


def torch_lstm_lm(torch):
    """The LSTM language model (lstm_lm_T20_N100.prototxt): forward(input, target) -> loss."""
    nn = torch.nn

    class LSTMLanguageModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = nn.Embedding(VOCAB, EMBED)
            self.lstm = nn.LSTM(EMBED, HIDDEN)          # time-major (T, N, D), cuDNN on the GPU
            self.predict = nn.Linear(HIDDEN, VOCAB)

        def forward(self, input_sentence, target_sentence):
            h, _ = self.lstm(self.embedding(input_sentence))
            scores = self.predict(h)
            loss = nn.functional.cross_entropy(scores.reshape(-1, VOCAB),
                                               target_sentence.reshape(-1), ignore_index=-1)
            return 20.0 * loss                           # loss_weight: 20

    return LSTMLanguageModel()


def torch_lstm_lm_inputs(torch, device, T=T_LM, N=N_LM):
    return (torch.randint(0, VOCAB, (T, N), device=device),
            torch.randint(0, VOCAB, (T, N), device=device))


# net name -> (model builder, inputs builder)
TORCH_MODELS = {
    'lenet': (torch_lenet, torch_lenet_inputs),
    'caffenet': (torch_caffenet, torch_caffenet_inputs),
    'lstm_lm': (torch_lstm_lm, torch_lstm_lm_inputs),
}


def time_torch(torch, model, inputs, iterations=20, warmup=3):
    """Forward (with loss) + backward timing of a torch model on its inputs' device;
    same fields as :func:`time_minicaffe`."""
    cuda = inputs[0].is_cuda

    def sync():
        if cuda:
            torch.cuda.synchronize()

    model.train()
    for _ in range(max(0, warmup)):
        model.zero_grad(set_to_none=False)
        model(*inputs).backward()
    return time_passes(lambda: model(*inputs), lambda loss: loss.backward(), sync, iterations,
                       prepare=lambda: model.zero_grad(set_to_none=False))


def run_torch(torch, name, iterations, warmup, device='cuda'):
    build, make_inputs = TORCH_MODELS[name]
    torch.backends.cudnn.benchmark = True
    model = build(torch).to(device)
    inputs = make_inputs(torch, device)
    try:
        return time_torch(torch, model, inputs, iterations, warmup)
    finally:
        del model, inputs
        if device != 'cpu':
            torch.cuda.empty_cache()


# ------------------------------------------------------------------ report
def _fmt(v, spec='%.1f'):
    return '-' if v is None else spec % v


def format_table(rows):
    """Markdown table lines for the result rows (see main)."""
    lines = ['| net | items/iter | minicaffe GPU ms (fwd + bwd) | minicaffe items/s | PyTorch ms'
             ' | PyTorch items/s | throughput minicaffe / PyTorch | Caffe CPU ms'
             ' | minicaffe GPU vs Caffe CPU |',
             '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |']
    for r in rows:
        mc = r.get('minicaffe')
        th = r.get('torch')
        mc_tp = r['items'] / mc['ms'] * 1000.0 if mc else None
        th_tp = r['items'] / th['ms'] * 1000.0 if th else None
        ratio = mc_tp / th_tp if mc and th else None
        speedup = r['caffe_cpu_ms'] / mc['ms'] if mc and r.get('caffe_cpu_ms') else None
        lines.append('| %s | %d %s | %s | %s | %s | %s | %s | %s | %s |' % (
            r['net'], r['items'], r['unit'],
            'failed' if 'error' in r else '%.2f (%.2f + %.2f)' % (mc['ms'], mc['forward_ms'],
                                                                 mc['backward_ms']),
            _fmt(mc_tp, '%.0f'), _fmt(th['ms'] if th else None, '%.2f'), _fmt(th_tp, '%.0f'),
            _fmt(ratio, '%.2fx'), _fmt(r.get('caffe_cpu_ms')), _fmt(speedup, '%.0fx')))
    return lines


def device_name(device_id):
    """The CUDA device's name as CuPy reports it ('' when it cannot say)."""
    try:
        from minicaffe.gpu.backend import cupy_module
        name = cupy_module().cuda.runtime.getDeviceProperties(device_id)['name']
        return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:       # only for the header line
        return ''


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--gpu', default='0', help='CUDA device id (default 0)')
    p.add_argument('--bench-dir', default=str(SHARED / 'bench'))
    p.add_argument('--readme', default=str(SHARED / 'conformance' / 'README.md'))
    p.add_argument('--iterations', type=int, default=20, help='timed iterations per net (default 20)')
    p.add_argument('--warmup', type=int, default=3, help='untimed passes first (default 3)')
    p.add_argument('--net', action='append', default=[],
                   help='only these nets (%s); repeatable' % ', '.join(n[0] for n in NETS))
    p.add_argument('--layers', type=int, default=0, help="also list minicaffe's N slowest layers per net")
    p.add_argument('--no-torch', action='store_true', help='skip the PyTorch comparison')
    p.add_argument('--json', default=None, help='write the results here as JSON')
    args = p.parse_args(argv)
    if args.iterations < 1:
        p.error('--iterations must be at least 1')

    figures = caffe_figures(args.readme)
    nets = [(n, f, s, items, unit, figures[i] if figures else c)
            for i, (n, f, s, items, unit, c) in enumerate(NETS)]
    if args.net:
        unknown = set(args.net) - set(n[0] for n in nets)
        if unknown:
            p.error('unknown net(s) %s; choose from %s' % (sorted(unknown), [n[0] for n in nets]))
        nets = [n for n in nets if n[0] in args.net]

    from minicaffe.commands.training import use_gpu
    try:
        dev = use_gpu(args.gpu)
    except MinicaffeError as e:
        print('bench_gpu: %s' % e, file=sys.stderr)
        return 2
    torch, why = (None, 'PyTorch comparison skipped (--no-torch)') if args.no_torch else load_torch()
    print('GPU %d %s; %d timed iteration(s) after %d warm-up pass(es) per net'
          % (dev, device_name(dev), args.iterations, args.warmup))
    if torch is not None:
        print('PyTorch %s, cuDNN %s' % (torch.__version__, torch.backends.cudnn.version()))
    else:
        print(why)
    sys.stdout.flush()

    rows = []
    for name, fname, stages, items, unit, caffe_ms in nets:
        row = {'net': name, 'items': items, 'unit': unit, 'caffe_cpu_ms': caffe_ms}
        rows.append(row)
        path = os.path.join(args.bench_dir, fname)
        try:
            row['minicaffe'] = time_minicaffe(path, stages, args.iterations, args.warmup)
        except (MinicaffeError, OSError) as e:
            row['error'] = str(e)
            print('%s: minicaffe FAILED: %s' % (name, e))
            continue
        print('%s: minicaffe %.2f ms (forward %.2f, backward %.2f; best %.2f)'
              % (name, row['minicaffe']['ms'], row['minicaffe']['forward_ms'],
                 row['minicaffe']['backward_ms'], row['minicaffe']['best_ms']))
        if args.layers:
            row['slowest_layers'] = slowest_layers(path, stages, min(args.iterations, 5), args.layers)
            for l in row['slowest_layers']:
                print('    %-14s %-16s forward %8.3f ms  backward %8.3f ms'
                      % (l['name'], l['type'], l['forward_ms'], l['backward_ms']))
        if torch is not None and name in TORCH_MODELS:
            try:
                row['torch'] = run_torch(torch, name, args.iterations, args.warmup,
                                         device='cuda:%d' % dev)
                print('%s: PyTorch %.2f ms (forward %.2f, backward %.2f; best %.2f)'
                      % (name, row['torch']['ms'], row['torch']['forward_ms'],
                         row['torch']['backward_ms'], row['torch']['best_ms']))
            except Exception as e:      # report and go on: the minicaffe figures still count
                row['torch_error'] = '%s: %s' % (type(e).__name__, e)
                print('%s: PyTorch FAILED: %s' % (name, row['torch_error']))
        sys.stdout.flush()

    print()
    for line in format_table(rows):
        print(line)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump({'gpu': dev, 'device': device_name(dev), 'iterations': args.iterations,
                       'warmup': args.warmup, 'torch': torch.__version__ if torch else None,
                       'nets': rows}, f, indent=1)
    return 1 if any('error' in r for r in rows) else 0


if __name__ == '__main__':
    sys.exit(main())
