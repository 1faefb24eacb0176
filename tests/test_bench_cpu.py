"""benchmarks/bench_cpu.py --caffe: real Caffe side by side, alternating rounds,
best and median of each (a stand-in `caffe` script plays Caffe here)."""
import json
import os
import stat
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
                         '--rounds', '3', '--iterations', '2', '--min-seconds', '0',
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
                         '--rounds', '1', '--iterations', '1', '--min-seconds', '0'])
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
