"""benchmarks/bench_cpu.py --caffe: real Caffe side by side, alternating rounds,
best and median of each (a stand-in `caffe` script plays Caffe here)."""
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'benchmarks'))
import bench_cpu  # noqa: E402
from minicaffe.commands import timing  # noqa: E402

TINY_NET = '''name: "tiny"
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 2 dim: 1 dim: 6 dim: 6 } shape { dim: 2 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 2 kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "ip" type: "InnerProduct" bottom: "conv" top: "ip"
        inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
'''

# Prints glog lines as `caffe time` does (iteration times 10, 20, ... ms, the
# round number added), logs its arguments and environment, fails on request.
FAKE_CAFFE = '''#!%s
import json, os, sys
log = os.environ['FAKE_CAFFE_LOG']
with open(log, 'a') as f:
    f.write(json.dumps({'who': 'caffe', 'argv': sys.argv[1:],
                        'glog': os.environ.get('GLOG_logtostderr')}) + '\\n')
if os.environ.get('FAKE_CAFFE_FAIL'):
    sys.stderr.write('F1206 caffe.cpp:1] Check failed: bad net\\n')
    sys.exit(134)
n = int(sys.argv[sys.argv.index('-iterations') + 1])
calls = sum(1 for _ in open(log) if '"caffe"' in _)
for j in range(n):
    sys.stderr.write('I1206 05:22:14.28 1 caffe.cpp:394] Iteration: %%d forward-backward time:'
                     ' %%d ms.\\n' %% (j + 1, 10 * (j + 1) + calls))
''' % sys.executable


@pytest.fixture
def setup(tmp_path, monkeypatch):
    bench = tmp_path / 'bench'
    bench.mkdir()
    (bench / 'lenet_b64.prototxt').write_text(TINY_NET)
    caffe = tmp_path / 'caffe'
    caffe.write_text(FAKE_CAFFE)
    caffe.chmod(caffe.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / 'log'
    monkeypatch.setenv('FAKE_CAFFE_LOG', str(log))
    real = timing.time_net

    def logged(net, iterations, log_iteration=None):
        with open(log, 'a') as f:
            f.write(json.dumps({'who': 'minicaffe', 'iterations': iterations}) + '\n')
        return real(net, iterations, log_iteration)
    monkeypatch.setattr(timing, 'time_net', logged)
    return bench, caffe, log


def test_side_by_side_alternates_and_reports_best_and_median(setup, tmp_path, capsys):
    bench, caffe, log = setup
    out = tmp_path / 'out.json'
    rc = bench_cpu.main(['--bench-dir', str(bench), '--net', 'lenet', '--caffe', str(caffe),
                         '--rounds', '3', '--iterations', '2', '--min-seconds', '0', '--settle', '0',
                         '--json', str(out)])
    assert rc == 0
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert [c['who'] for c in calls] == ['minicaffe', 'caffe'] * 3
    argv = calls[1]['argv']
    assert argv[:3] == ['time', '-model', str(bench / 'lenet_b64.prototxt')]
    assert argv[argv.index('-iterations') + 1] == '2' and calls[1]['glog'] == '1'
    row = json.loads(out.read_text())['nets'][0]
    # Caffe's iterations: 11, 21 / 12, 22 / 13, 23 ms
    assert row['caffe_best_ms'] == 11 and row['caffe_median_ms'] == 17
    assert row['iterations'] == 6
    assert row['best_ratio'] == pytest.approx(row['best_ms'] / 11)
    assert row['median_ratio'] == pytest.approx(row['median_ms'] / 17)
    assert '| lenet |' in capsys.readouterr().out


def test_each_engine_runs_after_the_settle_pause(setup, monkeypatch):
    """Every run in the alternation starts after the same pause (a run right after
    Caffe's process exited measured slower), logged between the runs."""
    bench, caffe, log = setup
    events = []
    monkeypatch.setattr(bench_cpu.time, 'sleep', lambda s: events.append(('pause', s)))
    real = bench_cpu.caffe_time

    def caffe_run(*args):
        events.append('caffe')
        return real(*args)
    monkeypatch.setattr(bench_cpu, 'caffe_time', caffe_run)
    real_net = bench_cpu.timing.time_net

    def net_run(*args, **kwargs):
        events.append('minicaffe')
        return real_net(*args, **kwargs)
    monkeypatch.setattr(bench_cpu.timing, 'time_net', net_run)
    rc = bench_cpu.main(['--bench-dir', str(bench), '--net', 'lenet', '--caffe', str(caffe),
                         '--rounds', '2', '--iterations', '1', '--min-seconds', '0',
                         '--settle', '1.5', '--no-torch'])
    assert rc == 0
    assert events == [('pause', 1.5), 'minicaffe', ('pause', 1.5), 'caffe'] * 2


def test_stages_are_passed_to_caffe(setup, tmp_path):
    bench, caffe, log = setup
    env = dict(os.environ)
    times = bench_cpu.caffe_time(str(caffe), str(bench / 'lenet_b64.prototxt'),
                                 ['factored', '2-layer'], 2, env)
    assert times == [11, 21]
    argv = json.loads(log.read_text().splitlines()[-1])['argv']
    assert argv[argv.index('-stage') + 1] == 'factored,2-layer'


def test_a_failing_caffe_is_reported(setup, monkeypatch, capsys):
    bench, caffe, _ = setup
    monkeypatch.setenv('FAKE_CAFFE_FAIL', '1')
    rc = bench_cpu.main(['--bench-dir', str(bench), '--net', 'lenet', '--caffe', str(caffe),
                         '--rounds', '1', '--iterations', '1', '--min-seconds', '0', '--settle', '0'])
    out = capsys.readouterr().out
    assert rc == 1 and 'lenet: FAILED' in out and 'Check failed: bad net' in out


def test_mkl_environment(tmp_path, capsys):
    (tmp_path / 'libmkl_rt.so.3').write_text('')
    env = bench_cpu.caffe_environment(str(tmp_path))
    assert env['LD_PRELOAD'] == str(tmp_path / 'libmkl_rt.so.3')
    assert env['LD_LIBRARY_PATH'].split(os.pathsep)[0] == str(tmp_path)
    empty = tmp_path / 'empty'
    empty.mkdir()
    assert bench_cpu.main(['--caffe', 'caffe', '--mkl', str(empty)]) == 2
    assert 'no libmkl_rt' in capsys.readouterr().err


# ------------------------------------------------------------------ PyTorch and BLAS columns
def _lenet_bench(tmp_path):
    bench = tmp_path / 'bench'
    bench.mkdir()
    (bench / 'lenet_b64.prototxt').write_text(TINY_NET)
    return bench


def test_pytorch_columns_in_the_same_rounds(tmp_path, capsys):
    pytest.importorskip('torch')
    out = tmp_path / 'out.json'
    rc = bench_cpu.main(['--bench-dir', str(_lenet_bench(tmp_path)), '--net', 'lenet',
                         '--rounds', '2', '--iterations', '2', '--min-seconds', '0', '--settle', '0',
                         '--json', str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    row = data['nets'][0]
    assert data['torch'] and row['iterations'] == 4
    assert row['torch_best_ms'] > 0 and row['torch_best_ratio'] == pytest.approx(
        row['best_ms'] / row['torch_best_ms'])
    text = capsys.readouterr().out
    threads = bench_cpu.load_torch()[0].get_num_threads()
    assert 'PyTorch best / median ms' in text and 'on %d threads' % threads in text


def test_without_pytorch_the_columns_are_left_out_with_a_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, 'torch', None)
    torch, why = bench_cpu.load_torch()
    assert torch is None and 'PyTorch is not installed' in why
    rc = bench_cpu.main(['--bench-dir', str(_lenet_bench(tmp_path)), '--net', 'lenet',
                         '--iterations', '1', '--min-seconds', '0', '--settle', '0'])
    assert rc == 0
    out = capsys.readouterr().out
    assert 'PyTorch is not installed' in out and 'PyTorch best' not in out


def test_no_torch_flag(tmp_path, capsys):
    rc = bench_cpu.main(['--bench-dir', str(_lenet_bench(tmp_path)), '--net', 'lenet',
                         '--iterations', '1', '--min-seconds', '0', '--settle', '0', '--no-torch'])
    assert rc == 0 and 'PyTorch columns left out (--no-torch)' in capsys.readouterr().out


def test_lenet_torch_model_matches_the_prototxt():
    torch = pytest.importorskip('torch')
    import bench_gpu
    from minicaffe import Net, TRAIN
    model = bench_gpu.torch_lenet(torch)
    net = Net(str(ROOT.parent / 'shared' / 'bench' / 'lenet_b64.prototxt'), TRAIN)
    assert [tuple(p.shape) for p in model.parameters()] == [
        tuple(b.shape) for blobs in net.params.values() for b in blobs]
    loss = model(*bench_gpu.torch_lenet_inputs(torch, 'cpu', batch=4))
    loss.backward()
    assert loss.ndim == 0


def test_each_blas_in_the_same_rounds(tmp_path, capsys):
    from minicaffe import blas
    if blas._load_mkl()[0] is None:
        pytest.skip('MKL is not installed')
    out = tmp_path / 'out.json'
    rc = bench_cpu.main(['--bench-dir', str(_lenet_bench(tmp_path)), '--net', 'lenet',
                         '--rounds', '1', '--iterations', '2', '--min-seconds', '0', '--settle', '0', '--no-torch',
                         '--blas', 'openblas,mkl', '--json', str(out)])
    assert rc == 0
    row = json.loads(out.read_text())['nets'][0]
    assert sorted(row['blas']) == ['mkl', 'openblas']
    assert row['best_ms'] == row['blas']['openblas']['best_ms']
    text = capsys.readouterr().out
    assert 'minicaffe (mkl): BLAS mkl' in text and '| minicaffe (openblas) best / median ms |' in text


def test_a_blas_that_is_missing_is_refused(tmp_path, monkeypatch, capsys):
    from minicaffe import blas
    monkeypatch.setattr(blas, 'mkl_candidates', lambda: ['libmkl_rt_is_not_here.so'])
    try:
        rc = bench_cpu.main(['--bench-dir', str(_lenet_bench(tmp_path)), '--net', 'lenet',
                             '--rounds', '1', '--iterations', '1', '--min-seconds', '0', '--settle', '0',
                             '--blas', 'openblas,mkl'])
    finally:
        blas.select()
    assert rc == 2 and '--blas mkl: not available here' in capsys.readouterr().err


def test_bench_fc_runs_this_checkout_and_a_baseline(tmp_path):
    out = tmp_path / 'fc.json'
    r = subprocess.run([sys.executable, str(ROOT / 'benchmarks' / 'bench_fc.py'),
                        '--iterations', '2', '--rounds', '1', '--inputs', '96', '--width', '64',
                        '--baseline', str(ROOT), '--json', str(out), '--clock', 'cpu'],
                       capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 0, r.stderr[-2000:]
    data = json.loads(out.read_text())
    assert sorted(data) == ['baseline openblas', 'this openblas']
    for cols in data.values():
        assert sorted(cols) == sorted(['fc6 fwd', 'fc7 fwd', 'fc7 bwd', 'fc6 bwd', 'update'])
        assert all(len(v) == 2 and min(v) > 0 for v in cols.values())
    assert 'fc6 (96 -> 64) and fc7 at batch 10, SGD update; best / median CPU ms' in r.stdout
