"""The tools in GPU mode: gradient checker, `minicaffe time --gpu`, `--gpu` values,
benchmarks/bench_gpu.py and tools/gpu_check.sh.

CI runs them through tests/fake_cupy.py; tests marked ``gpu`` need a real
device and PyTorch and run only under tools/gpu_check.sh (MINICAFFE_TEST_MODE=gpu).
"""
import importlib.util
import logging
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from minicaffe.commands import cli
from minicaffe import mode
from minicaffe.errors import MinicaffeError
from minicaffe.gradcheck import GradientCheckError, GradientChecker, make_layer
from minicaffe.layers.vision import ConvolutionLayer
from minicaffe.commands.training import use_gpu

from gpu_support import REAL_GPU, gpu_mode
from test_cli import SMALL_NET

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT.parent / 'shared' / 'bench'

CONV = ('type: "Convolution" convolution_param { num_output: 3 kernel_size: 2 stride: 1 '
        'weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "gaussian" std: 0.3 } }')


@pytest.fixture(autouse=True)
def _cpu_outside_gpu_mode():
    """CPU mode outside gpu_mode() blocks, also when the whole run is in GPU mode
    (MINICAFFE_TEST_MODE=gpu); that mode comes back afterwards."""
    was_gpu = mode.is_gpu()
    mode.set_mode_cpu()
    yield
    if was_gpu:
        mode.set_mode_gpu()


@pytest.fixture
def counted(monkeypatch):
    """Counts ConvolutionLayer.forward_gpu / backward_gpu calls (the device code)."""
    calls = {'forward_gpu': 0, 'backward_gpu': 0}
    for name in calls:
        original = getattr(ConvolutionLayer, name)

        def wrapper(self, *args, _name=name, _original=original):
            calls[_name] += 1
            return _original(self, *args)
        monkeypatch.setattr(ConvolutionLayer, name, wrapper)
    return calls


@pytest.fixture
def small_net(tmp_path):
    path = tmp_path / 'small.prototxt'
    path.write_text(SMALL_NET)
    return path


# ------------------------------------------------------------------ gradient checker
def test_gradient_check_in_gpu_mode_checks_the_device_code(counted):
    with gpu_mode():
        layer, bottom, top = make_layer(CONV, [(2, 2, 4, 4)])
        stats = GradientChecker(1e-2, 1e-3).check_gradient_exhaustive(layer, bottom, top)
    assert set(stats) == {'param[0]', 'param[1]', 'bottom[0]'}
    assert all(s.checked > 0 and s.failed == 0 for s in stats.values())
    assert counted['forward_gpu'] > 100 and counted['backward_gpu'] > 10


def test_gradient_check_in_gpu_mode_catches_a_wrong_backward_gpu():
    with gpu_mode():
        layer, bottom, top = make_layer(CONV, [(2, 2, 4, 4)])
        right = layer.backward_gpu

        def wrong(top_, propagate_down, bottom_):     # bottom diff off by a factor 1.5
            right(top_, propagate_down, bottom_)
            d = bottom_[0].gpu_diff
            d *= np.float32(1.5)
        layer.backward_gpu = wrong
        with pytest.raises(GradientCheckError, match=r'bottom\[0\]'):
            GradientChecker(1e-2, 1e-3).check_gradient(layer, bottom, top)


def test_gradcheck_command_with_gpu_flag(small_net, capsys, counted):
    with gpu_mode():
        rc = cli.main(['-q', 'gradcheck', str(small_net), '--gpu', '0', '--layer', 'conv'])
        assert mode.is_gpu()
    out = capsys.readouterr().out
    assert rc == 0, out
    rows = [tuple(l.split()[:2]) for l in out.splitlines()[1:-1]]
    assert rows == [('conv', 'param[0]'), ('conv', 'param[1]'), ('conv', 'bottom[0]')]
    assert out.strip().splitlines()[-1].startswith('PASSED: ')
    assert counted['forward_gpu'] > 0 and counted['backward_gpu'] > 0


# ------------------------------------------------------------------ minicaffe time --gpu
def test_time_command_with_gpu_flag_synchronizes_the_device(small_net, capsys, counted, monkeypatch):
    syncs = []
    real_sync = mode.synchronize

    def sync():
        syncs.append(mode.is_gpu())
        real_sync()
    monkeypatch.setattr(mode, 'synchronize', sync)
    iterations = 3
    with gpu_mode():
        assert cli.main(['-q', 'time', str(small_net), '--gpu', '0',
                         '--iterations', str(iterations)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out.pop(0) == 'Timed 3 iterations after 1 untimed warm-up iteration.'
    assert out[0].strip() == 'Average time per layer:'
    names = ['input', 'conv', 'relu', 'pool', 'ip', 'loss']
    assert [l.split('\t')[0].strip() for l in out[1:1 + 2 * len(names):2]] == names
    assert out[-1].startswith('Total Time: ')
    # device code ran in the timed passes (plus Caffe's warm-up pass and one untimed iteration)
    assert counted['forward_gpu'] == iterations + 2 and counted['backward_gpu'] >= iterations + 2
    # every timed section starts and ends synchronized: per iteration one clock reading per
    # layer boundary (2 per layer and direction) and the pass/iteration marks, all in GPU mode
    per_iteration = 4 * len(names) + 5
    assert len(syncs) >= iterations * per_iteration
    assert all(syncs)


def test_time_net_in_gpu_mode_matches_the_cpu_loss(small_net):
    from minicaffe import rng
    from minicaffe.commands import timing
    rng.set_random_seed(3)
    cpu = timing.build_net(str(small_net))
    cpu.blobs['data'].data[...] = np.random.default_rng(0).standard_normal(cpu.blobs['data'].shape)
    cpu_loss = cpu.forward_all_loss()
    with gpu_mode():
        rng.set_random_seed(3)
        net = timing.build_net(str(small_net))
        net.blobs['data'].data[...] = cpu.blobs['data'].data
        res = timing.time_net(net, 2)
        gpu_loss = float(net.blobs['loss'].data)
    assert res.iterations == 2 and len(res.forward_ms) == len(net.layers)
    np.testing.assert_allclose(gpu_loss, cpu_loss, rtol=1e-5)


# ------------------------------------------------------------------ --gpu values
def test_gpu_flag_values(caplog):
    with gpu_mode():
        caplog.set_level(logging.INFO, logger='minicaffe')
        assert use_gpu('0') == 0 and mode.is_gpu()
        assert use_gpu('all') == 0
        assert use_gpu('0,1') == 0
        assert 'runs on one device; using GPU 0' in caplog.text
        for bad in ('', 'x', '-1', '0,a'):
            with pytest.raises(MinicaffeError, match='--gpu'):
                use_gpu(bad)


def test_gpu_flag_without_cupy_is_a_clear_error(monkeypatch):
    import sys
    from minicaffe.gpu import backend
    monkeypatch.setitem(sys.modules, 'cupy', None)       # import cupy -> ImportError
    backend.reset()
    try:
        with pytest.raises(MinicaffeError, match='CuPy'):
            use_gpu('0')
        assert not mode.is_gpu()
    finally:
        backend.reset()


# ------------------------------------------------------------------ benchmarks/bench_gpu.py
def _load_bench():
    spec = importlib.util.spec_from_file_location('bench_gpu', ROOT / 'benchmarks' / 'bench_gpu.py')
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


bench = _load_bench()


def test_bench_times_minicaffe_in_gpu_mode(small_net, counted):
    with gpu_mode():
        res = bench.time_minicaffe(small_net, iterations=2, warmup=1)
        layers = bench.slowest_layers(small_net, iterations=1, count=3)
    assert set(res) == {'ms', 'forward_ms', 'backward_ms', 'best_ms'}
    assert res['ms'] > 0 and res['best_ms'] <= res['ms'] + 1e-9
    assert abs(res['ms'] - res['forward_ms'] - res['backward_ms']) < 1e-6
    assert len(layers) == 3 and all(l['forward_ms'] >= 0 for l in layers)
    assert counted['forward_gpu'] >= 3 and counted['backward_gpu'] >= 3


def test_bench_table_and_ratios():
    rows = [{'net': 'caffenet', 'items': 10, 'unit': 'images', 'caffe_cpu_ms': 352.0,
             'minicaffe': {'ms': 20.0, 'forward_ms': 8.0, 'backward_ms': 12.0, 'best_ms': 19.0},
             'torch': {'ms': 5.0, 'forward_ms': 2.0, 'backward_ms': 3.0, 'best_ms': 4.5}},
            {'net': 'lenet', 'items': 64, 'unit': 'images', 'caffe_cpu_ms': 16.7,
             'minicaffe': {'ms': 2.0, 'forward_ms': 1.0, 'backward_ms': 1.0, 'best_ms': 2.0}},
            {'net': 'lstm_lm', 'items': 100, 'unit': 'sentences', 'caffe_cpu_ms': 1101.0,
             'error': 'boom'}]
    lines = bench.format_table(rows)
    assert len(lines) == 5
    cells = [c.strip() for c in lines[2].strip('|').split('|')]
    assert cells == ['caffenet', '10 images', '20.00 (8.00 + 12.00)', '500', '5.00', '2000',
                     '0.25x', '352.0', '18x']
    cells = [c.strip() for c in lines[3].strip('|').split('|')]
    assert cells[4:7] == ['-', '-', '-'] and cells[3] == '32000'
    assert 'failed' in lines[4]


def test_bench_main_runs_lenet_in_gpu_mode(capsys, tmp_path):
    if not (BENCH / 'lenet_b64.prototxt').exists():
        pytest.skip('../shared/bench is not here')
    out_json = tmp_path / 'bench.json'
    with gpu_mode():
        rc = bench.main(['--net', 'lenet', '--iterations', '1', '--warmup', '0', '--no-torch',
                         '--json', str(out_json)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert 'PyTorch comparison skipped (--no-torch)' in out
    assert [l for l in out.splitlines() if l.startswith('| lenet | 64 images |')]
    import json
    data = json.loads(out_json.read_text())
    assert data['nets'][0]['net'] == 'lenet' and data['nets'][0]['minicaffe']['ms'] > 0


def test_bench_without_torch_says_so(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, 'torch', None)
    torch, why = bench.load_torch()
    assert torch is None and 'PyTorch is not installed' in why


def _caffe_param_shapes(name, stages=()):
    from minicaffe.protoio import pb, read_text
    from minicaffe.net import Net, TRAIN
    param = read_text(str(BENCH / name), pb.NetParameter)
    net = Net(net_param=param, phase=TRAIN, stages=list(stages))
    return [tuple(b.shape) for blobs in net.params.values() for b in blobs]


def test_torch_models_build_and_match_the_prototxts():
    torch = pytest.importorskip('torch')
    if not BENCH.is_dir():
        pytest.skip('../shared/bench is not here')
    cnet = bench.torch_caffenet(torch)
    shapes = [tuple(p.shape) for p in cnet.parameters()]
    assert shapes == _caffe_param_shapes('caffenet_b10.prototxt')
    res = bench.time_torch(torch, cnet, bench.torch_caffenet_inputs(torch, 'cpu', batch=2), 1, 0)
    assert res['ms'] > 0
    lm = bench.torch_lstm_lm(torch)
    caffe = sum(int(np.prod(s)) for s in _caffe_param_shapes('lstm_lm_T20_N100.prototxt'))
    ours = sum(p.numel() for p in lm.parameters())
    assert ours == caffe + 4 * bench.HIDDEN           # cuDNN's second LSTM bias
    loss = lm(*bench.torch_lstm_lm_inputs(torch, 'cpu', T=3, N=2))
    loss.backward()
    assert loss.ndim == 0 and lm.lstm.weight_hh_l0.grad is not None


@pytest.mark.gpu
@pytest.mark.skipif(not REAL_GPU, reason='needs a CUDA device (MINICAFFE_TEST_MODE=gpu)')
def test_torch_models_run_on_the_device():
    torch = pytest.importorskip('torch')
    if not torch.cuda.is_available():
        pytest.skip('PyTorch sees no CUDA device')
    for name in bench.TORCH_MODELS:
        res = bench.run_torch(torch, name, iterations=1, warmup=1)
        assert res['ms'] > 0


# ------------------------------------------------------------------ tools/gpu_check.sh
def test_gpu_check_script_dry_run():
    script = ROOT / 'tools' / 'gpu_check.sh'
    assert os.access(script, os.X_OK)
    r = subprocess.run(['bash', str(script), '--dry-run'], capture_output=True, text=True,
                       cwd=str(ROOT), timeout=60, env=dict(os.environ, OUT='/nonexistent/out'))
    assert r.returncode == 0, r.stderr
    cmds = [l[2:] for l in r.stdout.splitlines() if l.startswith('+ ')]
    assert len(cmds) == 3
    tests, bench_cmd, scaling_cmd = cmds
    assert 'benchmarks/bench_scaling.py --gpu --ranks 1,2' in scaling_cmd    # on machines of 2+ GPUs
    assert 'MINICAFFE_TEST_MODE=gpu' in tests and "-m not slow" in tests
    named = [w for w in tests.split() if w.startswith('tests/')]
    for f in ('tests/test_gpu_conformance.py', 'tests/test_conformance_solvers.py',
              'tests/test_gpu_solver.py', 'tests/test_gpu_tools.py'):
        assert f in named
    assert all((ROOT / f).is_file() for f in named)
    assert 'benchmarks/bench_gpu.py' in bench_cmd and '/nonexistent/out/bench_gpu.json' in bench_cmd
    r = subprocess.run(['bash', str(script), '--bogus'], capture_output=True, text=True,
                       cwd=str(ROOT), timeout=60)
    assert r.returncode == 2 and 'unknown option' in r.stderr
