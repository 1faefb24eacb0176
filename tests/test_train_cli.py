"""`minicaffe train` / `solve` / `test` / `plot`: flags, signals, Caffe's log
lines (read with the patterns of Caffe's tools/extra/parse_log.py), progress
bar, metrics file, early errors."""
import datetime
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import h5py
import numpy as np
import pytest

from minicaffe.commands import cli
from minicaffe.protoio import pb

from test_solve import make_case

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _detach_cli_handlers():
    import logging
    logger = logging.getLogger('minicaffe')
    for h in list(logger.handlers):
        if getattr(h, '_minicaffe_cli', False):
            logger.removeHandler(h)


@pytest.fixture(autouse=True)
def _fresh_cli_logging():
    """cli.main() binds its log handler to the sys.stderr of the moment (pytest's
    capture of one test) and stops propagation: detach such handlers before and
    after each test and restore the logger, so that no later test writes to, or
    closes, a stream pytest has finished with, and caplog still sees records."""
    import logging
    logger = logging.getLogger('minicaffe')
    level = logger.level                # what `import minicaffe` set
    _detach_cli_handlers()
    yield
    _detach_cli_handlers()
    logger.propagate = True             # the imported package's settings
    logger.setLevel(level)


def _env():
    env = dict(os.environ)
    env['PYTHONPATH'] = ROOT + os.pathsep + env.get('PYTHONPATH', '')
    env.setdefault('OMP_NUM_THREADS', '1')
    return env


def train(capsys, *argv):
    code = cli.main(['train'] + [os.fspath(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _set(path, **fields):
    lines = [ln for ln in open(path).read().splitlines()
             if not any(ln.startswith(k + ':') for k in fields)]
    lines += ['%s: %s' % (k, v) for k, v in fields.items()]
    with open(path, 'w') as f:
        f.write('\n'.join(lines) + '\n')


def _snaps(folder):
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


# ---------------------------------------------------------------- early errors
def test_weights_with_snapshot_is_an_error(tmp_path, capsys):
    path = make_case(tmp_path)
    code, _, err = train(capsys, '--solver', path, '--snapshot', 'a.solverstate', '--weights', 'w.caffemodel')
    assert code == 2
    assert 'minicaffe: error:' in err and '--snapshot' in err and '--weights' in err and 'not both' in err


@pytest.mark.parametrize('what', ['solver', 'net', 'data', 'snapshot', 'weights'])
def test_missing_files_are_clear_errors(tmp_path, capsys, what):
    path = make_case(tmp_path)
    argv = ['--solver', path]
    if what == 'solver':
        argv = ['--solver', tmp_path / 'nope.prototxt']
        expect = 'nope.prototxt'
    elif what == 'net':
        os.remove(tmp_path / 'net.prototxt')
        expect = 'net.prototxt'
    elif what == 'data':
        os.remove(tmp_path / 'list.txt')
        expect = 'list.txt'
    elif what == 'snapshot':
        argv += ['--snapshot', tmp_path / 'gone.solverstate']
        expect = 'gone.solverstate'
    else:
        argv += ['--weights', tmp_path / 'gone.caffemodel']
        expect = 'gone.caffemodel'
    code, _, err = train(capsys, *argv)
    assert code == 2, err
    last = err.strip().splitlines()[-1]
    assert last.startswith('minicaffe: error:') and expect in last and 'Traceback' not in err


def test_missing_mnist_data_hints_at_the_prepare_step(tmp_path, capsys, monkeypatch):
    # the README's command from a checkout without data/mnist
    os.symlink(os.path.join(ROOT, 'prototxt'), tmp_path / 'prototxt')
    monkeypatch.chdir(tmp_path)
    code, _, err = train(capsys, '--solver', 'prototxt/mnist/lenet_solver.prototxt')
    assert code == 2
    assert 'data/mnist' in err and 'minicaffe data mnist' in err


@pytest.mark.parametrize('extra,match', [
    ('test_iter: 3', 'test_interval'),
    ('type: "SGDW"', 'unknown solver type "SGDW"'),
])
def test_bad_solver_fields_exit_2(tmp_path, capsys, extra, match):
    code, _, err = train(capsys, '--solver', make_case(tmp_path, solver_extra=extra))
    assert code == 2 and match in err and 'Traceback' not in err


def test_bad_signal_effect_is_a_usage_error(tmp_path, capsys):
    code, _, err = train(capsys, '--solver', make_case(tmp_path), '--sigint_effect', 'explode')
    assert code == 2 and 'sigint_effect' in err


# ---------------------------------------------------------------- a normal run
def test_train_writes_snapshots_metrics_and_caffe_lines(tmp_path, capsys):
    path = make_case(tmp_path, solver_extra='snapshot: 4\ntest_iter: 2\ntest_interval: 4')
    code, out, err = train(capsys, '--solver', path)
    assert code == 0, err
    assert _snaps(tmp_path / 'snap') == ['s_iter_4.caffemodel', 's_iter_4.solverstate',
                                         's_iter_8.caffemodel', 's_iter_8.solverstate', 's_metrics.jsonl']
    for line in ('Solving tiny', 'Learning Rate Policy: step', 'Iteration 0, Testing net (#0)',
                 '    Test net output #0: acc = ', 'Iteration 7, lr = 0.025',
                 'Snapshotting to binary proto file %s' % (tmp_path / 'snap' / 's_iter_4.caffemodel'),
                 'Snapshotting solver state to binary proto file ', 'Iteration 8, loss = ',
                 'Optimization Done.'):
        assert line in err, line
    assert re.search(r'\] Iteration 3 \([\d.e+-]+ iter/s, [\d.e+-]+s/1 iters\), loss = [\d.]+\n', err)
    assert re.search(r'\]     Train net output #0: loss = [\d.]+ \(\* 1 = [\d.]+ loss\)\n', err)
    assert '\r' not in err                      # not a terminal: no progress bar


def test_metrics_jsonl(tmp_path, capsys):
    path = make_case(tmp_path, solver_extra='test_iter: 2\ntest_interval: 4\ndisplay: 2')
    assert train(capsys, '--solver', path)[0] == 0
    recs = [json.loads(x) for x in open(tmp_path / 'snap' / 's_metrics.jsonl')]
    trains = [r for r in recs if r['phase'] == 'train']
    tests = [r for r in recs if r['phase'] == 'test']
    assert [r['iter'] for r in trains] == list(range(8))
    assert [r['lr'] for r in trains] == [0.1] * 3 + [0.05] * 3 + [0.025] * 2
    assert all(r['loss'] > 0 and 'smoothed_loss' in r for r in trains)
    assert 'loss' in trains[0] and 'loss' in trains[2]          # outputs on display iterations
    assert [r['iter'] for r in tests] == [0, 4, 8]
    assert all(0 <= r['acc'] <= 1 and r['loss'] > 0 and r['test_net'] == 0 for r in tests)


def test_metrics_path_option_and_none(tmp_path, capsys):
    path = make_case(tmp_path)
    assert train(capsys, '--solver', path, '--metrics', tmp_path / 'm' / 'x.jsonl')[0] == 0
    assert (tmp_path / 'm' / 'x.jsonl').exists()
    assert train(capsys, '--solver', make_case(tmp_path / 'b'), '--metrics', 'none')[0] == 0
    assert not [n for n in _snaps(tmp_path / 'b' / 'snap') if n.endswith('.jsonl')]


def test_snapshot_auto_resumes_from_the_newest(tmp_path, capsys):
    path = make_case(tmp_path, solver_extra='snapshot: 4\ndisplay: 4')
    _set(path, max_iter=4)
    code, _, err = train(capsys, '--solver', path, '--snapshot', 'auto')
    assert code == 0 and 'no snapshot under' in err and 'starting from iteration 0' in err
    _set(path, max_iter=8)
    code, _, err = train(capsys, '--solver', path, '--snapshot', 'auto')
    assert code == 0
    state4 = os.fspath(tmp_path / 'snap' / 's_iter_4.solverstate')
    assert 'Resuming from %s' % state4 in err
    assert 'Iteration 0 (' not in err and 'Iteration 4 (' in err
    recs = [json.loads(x) for x in open(tmp_path / 'snap' / 's_metrics.jsonl')]
    # one run as far as the metrics go: iterations 0..7 once each
    assert [r['iter'] for r in recs if r['phase'] == 'train'] == list(range(8))
    _set(path, max_iter=12, snapshot_format='HDF5')
    code, _, err = train(capsys, '--solver', path, '--snapshot', 'auto')
    assert 'Resuming from %s' % (tmp_path / 'snap' / 's_iter_8.solverstate') in err
    _set(path, max_iter=16)
    code, _, err = train(capsys, '--solver', path, '--snapshot', 'auto')
    assert 'Resuming from %s' % (tmp_path / 'snap' / 's_iter_12.solverstate.h5') in err


def _caffemodel_with(tmp_path, name, layer, shapes, value):
    param = pb.NetParameter(name='w')
    lp = param.layer.add(name=layer, type='InnerProduct')
    for shape in shapes:
        bp = lp.blobs.add()
        bp.shape.dim.extend(shape)
        bp.data.extend(np.full(int(np.prod(shape)), value, np.float32))
    path = tmp_path / name
    path.write_bytes(param.SerializeToString())
    return path


def test_weights_comma_list_fine_tunes_train_and_test_nets(tmp_path, capsys):
    extra = '''layer { name: "side" type: "InnerProduct" bottom: "data" top: "side"
  include { phase: TEST } inner_product_param { num_output: 2 } }'''
    path = make_case(tmp_path, net_extra=extra, solver_extra='test_iter: 1\ntest_interval: 1')
    _set(path, max_iter=0)
    a = _caffemodel_with(tmp_path, 'a.caffemodel', 'ip', [(3, 6), (3,)], 0.25)
    b = _caffemodel_with(tmp_path, 'b.caffemodel', 'side', [(2, 6), (2,)], -0.5)
    from minicaffe.commands import training
    seen = {}
    real = training.Solver

    class Spy(real):
        def solve(self, resume=None):
            seen['train_ip'] = self.net.params['ip'][0].data.copy()
            seen['test_side'] = self.test_nets[0].params['side'][0].data.copy()
            return super(Spy, self).solve(resume)
    training.Solver = Spy
    try:
        code, _, err = train(capsys, '--solver', path, '--weights', '%s,%s' % (a, b))
    finally:
        training.Solver = real
    assert code == 0, err
    assert np.all(seen['train_ip'] == 0.25) and np.all(seen['test_side'] == -0.5)
    assert 'Finetuning from %s' % a in err and 'Finetuning from %s' % b in err


def test_snapshot_ignores_the_solver_weights_field(tmp_path, capsys):
    path = make_case(tmp_path, solver_extra='snapshot: 2')
    _set(path, max_iter=2)
    assert train(capsys, '--solver', path)[0] == 0
    # a weights field naming a file that does not exist: --snapshot clears it, as Caffe does
    _set(path, max_iter=3, weights='"%s"' % (tmp_path / 'missing.caffemodel'))
    code, _, err = train(capsys, '--solver', path, '--snapshot', tmp_path / 'snap' / 's_iter_2.solverstate')
    assert code == 0, err


STAGED = '''layer { name: "wide" type: "InnerProduct" bottom: "data" top: "wide"
  include { stage: "big" } include { min_level: 3 }
  inner_product_param { num_output: 2 } }'''


@pytest.mark.parametrize('flags,present', [([], False), (['--stage', 'big'], True),
                                           (['--level', '3'], True), (['--level', '2'], False)])
def test_stage_and_level(tmp_path, capsys, flags, present):
    path = make_case(tmp_path, net_extra=STAGED, solver_extra='test_iter: 1\ntest_interval: 100')
    _set(path, max_iter=1)
    code, _, err = train(capsys, '--solver', path, *flags)
    assert code == 0, err
    assert ('Train net output #1: wide = ' in err) == present
    assert 'Test net output #2: wide' not in err            # the test net is untouched


# ---------------------------------------------------------------- parse_log.py
# The patterns of BVLC/caffe tools/extra/parse_log.py and extract_seconds.py.
PL_ITERATION = re.compile(r'Iteration (\d+)')
PL_TRAIN = re.compile(r'Train net output #(\d+): (\S+) = ([\.\deE+-]+)')
PL_TEST = re.compile(r'Test net output #(\d+): (\S+) = ([\.\deE+-]+)')
PL_LR = re.compile(r'lr = ([-+]?[0-9]*\.?[0-9]+([eE]?[-+]?[0-9]+)?)')


def _extract_datetime(line, year):
    parts = line.strip().split()
    month, day = int(parts[0][1:3]), int(parts[0][3:])
    ts = parts[1]
    pos = ts.rfind('.')
    h, m, s = [int(x) for x in ts[:pos].split(':')]
    return datetime.datetime(year, month, day, h, m, s, int(ts[pos + 1:]))


def _parse_log(lines, year):
    """parse_log.parse_log, step for step (rows appended when full)."""
    start = None
    for line in lines:
        if 'Solving' in line:
            start = _extract_datetime(line, year)
            break
    assert start is not None, 'no "Solving" line: extract_seconds.get_start_time fails'
    iteration, lr = -1, float('nan')
    tables = {'train': [[], None], 'test': [[], None]}
    for line in lines:
        m = PL_ITERATION.search(line)
        if m:
            iteration = float(m.group(1))
        if iteration == -1:
            continue
        seconds = (_extract_datetime(line, year) - start).total_seconds()
        m = PL_LR.search(line)
        if m:
            lr = float(m.group(1))
        for kind, regex in (('train', PL_TRAIN), ('test', PL_TEST)):
            rows, row = tables[kind]
            m = regex.search(line)
            if m:
                if not row or row['NumIters'] != iteration:
                    if row:
                        rows.append(row)
                    row = {'NumIters': iteration, 'Seconds': seconds, 'LearningRate': lr}
                row[m.group(2)] = float(m.group(3))
            if row and len(rows) >= 1 and len(row) == len(rows[0]):
                rows.append(row)
                row = None
            tables[kind][1] = row
    out = {}
    for kind, (rows, row) in tables.items():
        if len(rows) > 1:
            rows[0]['LearningRate'] = rows[1]['LearningRate']
        out[kind] = rows
    return out


def test_log_parses_with_caffes_parse_log(tmp_path, capsys):
    path = make_case(tmp_path, solver_extra='test_iter: 2\ntest_interval: 2\ndisplay: 2')
    code, _, err = train(capsys, '--solver', path)
    assert code == 0
    lines = [ln for ln in err.splitlines() if ln.strip()]
    glog = re.compile(r'^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ [\w.]+:\d+\] ')
    # as in Caffe's logs, the solver's and nets' parameters follow their "Initializing ... from
    # parameters:" line in text format, without a prefix
    dump = re.compile(r'^ *(\w+: \S.*|\w+ \{|\})$')
    assert all(glog.match(ln) or dump.match(ln) for ln in lines), \
        [ln for ln in lines if not glog.match(ln) and not dump.match(ln)][:3]
    tables = _parse_log(lines, datetime.datetime.now().year)
    train_rows, test_rows = tables['train'], tables['test']
    assert [r['NumIters'] for r in train_rows] == [0, 2, 4, 6]
    # parse_log.py pairs a row with the last lr line before it: the previous display's
    assert [r['LearningRate'] for r in train_rows] == [0.1, 0.1, 0.1, 0.05]
    assert all(r['loss'] > 0 for r in train_rows)
    assert [r['NumIters'] for r in test_rows] == [0, 2, 4, 6, 8]   # 8: the test after the last update
    assert all(set(r) == {'NumIters', 'Seconds', 'LearningRate', 'acc', 'loss'} for r in test_rows)
    assert all(r['Seconds'] >= 0 for r in train_rows + test_rows)
    recs = [json.loads(x) for x in open(tmp_path / 'snap' / 's_metrics.jsonl')]
    metric_acc = [r['acc'] for r in recs if r['phase'] == 'test']
    assert [r['acc'] for r in test_rows] == pytest.approx(metric_acc, abs=1e-5)


# ---------------------------------------------------------------- progress bar
class FakeTTY(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_on_a_terminal(tmp_path, monkeypatch):
    path = make_case(tmp_path, solver_extra='display: 4\ntest_iter: 1\ntest_interval: 4')
    fake = FakeTTY()
    monkeypatch.setattr(sys, 'stderr', fake)
    assert cli.main(['train', '--solver', path]) == 0
    text = fake.getvalue()
    assert re.search(r'\r\x1b\[K\[#+\.*\] 8/8 loss [\d.]+ [\d.]+ it/s ETA 0:00', text)
    assert '1/8 loss' in text
    # every log line starts on a clean line: the bar is erased before it
    logged = [c.rsplit('\r\x1b[K', 1)[-1] for c in text.split('\n') if '] ' in c]
    assert len(logged) > 10
    assert all(re.match(r'^[IWEF]\d{4} \d\d:', c) for c in logged), logged
    fake2 = FakeTTY()
    monkeypatch.setattr(sys, 'stderr', fake2)
    assert cli.main(['train', '--solver', make_case(tmp_path / 'b'), '--no-progress']) == 0
    assert '\r' not in fake2.getvalue()


# ---------------------------------------------------------------- signals (new processes)
def _start(path, *flags):
    return subprocess.Popen([sys.executable, '-m', 'minicaffe', 'train', '--solver', path] + list(flags),
                            env=_env(), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            bufsize=1)


def _wait_for(proc, pattern, lines, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        if re.search(pattern, line):
            return line
    raise AssertionError('no %r in:\n%s' % (pattern, ''.join(lines[-20:])))


def _finish(proc, lines, timeout=60):
    """The rest of stderr, through the same text stream _wait_for read from:
    communicate() reads the pipe's file descriptor and would drop the lines
    readline() had already buffered (the test then missed lines under load)."""
    watchdog = threading.Timer(timeout, proc.kill)
    watchdog.start()
    try:
        lines.append(proc.stderr.read())
        proc.wait()
    finally:
        watchdog.cancel()
    return ''.join(lines)


def _state_iter(path):
    msg = pb.SolverState()
    msg.ParseFromString(open(path, 'rb').read())
    return msg.iter


def test_sigint_finishes_the_iteration_snapshots_and_exits_0(tmp_path):
    path = make_case(tmp_path)
    _set(path, max_iter=1000000, display=1)
    proc = _start(path)
    lines = []
    try:
        _wait_for(proc, r'Iteration 3, lr', lines)
        proc.send_signal(signal.SIGINT)
        log = _finish(proc, lines)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, log[-2000:]
    assert 'Optimization stopped early.' in log and 'Traceback' not in log
    states = [n for n in _snaps(tmp_path / 'snap') if n.endswith('.solverstate')]
    assert len(states) == 1
    n = _state_iter(tmp_path / 'snap' / states[0])
    assert states[0] == 's_iter_%d.solverstate' % n and n >= 4
    assert (tmp_path / 'snap' / ('s_iter_%d.caffemodel' % n)).exists()
    # the last iteration logged before stopping is the one the snapshot holds
    assert re.findall(r'Iteration (\d+), lr', log)[-1] == str(n - 1)


def test_sighup_snapshots_and_goes_on_then_sigint_none_is_ignored(tmp_path):
    path = make_case(tmp_path)
    _set(path, max_iter=1000000, display=1)
    proc = _start(path, '--sigint_effect', 'none')
    lines = []
    try:
        _wait_for(proc, r'Iteration 2, lr', lines)
        proc.send_signal(signal.SIGHUP)
        _wait_for(proc, r'Snapshotting solver state', lines)
        proc.send_signal(signal.SIGINT)                      # ignored
        first = re.findall(r'Iteration (\d+), lr', ''.join(lines))[-1]
        _wait_for(proc, r'Iteration %d, lr' % (int(first) + 3), lines)
        assert proc.poll() is None
    finally:
        proc.terminate()
        try:
            _finish(proc, lines)
        finally:
            if proc.poll() is None:
                proc.kill()
    states = [n for n in _snaps(tmp_path / 'snap') if n.endswith('.solverstate')]
    assert len(states) == 1


def test_sigint_snapshot_effect_keeps_training(tmp_path):
    path = make_case(tmp_path)
    _set(path, max_iter=1000000, display=1)
    proc = _start(path, '--sigint_effect', 'snapshot', '--sighup_effect', 'stop')
    lines = []
    try:
        _wait_for(proc, r'Iteration 2, lr', lines)
        proc.send_signal(signal.SIGINT)
        _wait_for(proc, r'Snapshotting solver state', lines)
        proc.send_signal(signal.SIGHUP)                      # stop
        log = _finish(proc, lines)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and 'Optimization stopped early.' in log
    states = [n for n in _snaps(tmp_path / 'snap') if n.endswith('.solverstate')]
    assert len(states) == 2                                  # the requested one and the final one


# ---------------------------------------------------------------- test command
def test_test_command_scores_a_model(tmp_path, capsys):
    path = make_case(tmp_path)
    assert train(capsys, '--solver', path)[0] == 0
    code = cli.main(['test', '--model', os.fspath(tmp_path / 'net.prototxt'), '--weights',
                     os.fspath(tmp_path / 'snap' / 's_iter_8.caffemodel'), '--iterations', '4'])
    _, err = capsys.readouterr()
    assert code == 0, err
    assert 'Running for 4 iterations.' in err and 'Batch 3, acc = ' in err
    acc = [float(x) for x in re.findall(r'Batch \d, acc = ([\d.]+)', err)]
    mean = float(re.search(r'\] acc = ([\d.]+)\n', err).group(1))
    assert mean == pytest.approx(np.mean(acc), abs=1e-6)
    assert re.search(r'\] loss = [\d.]+ \(\* 1 = [\d.]+ loss\)', err) and 'Loss: ' in err
    # the final scores are the report: on stdout too, also with -q (no log lines then)
    code = cli.main(['-q', 'test', '--model', os.fspath(tmp_path / 'net.prototxt'), '--weights',
                     os.fspath(tmp_path / 'snap' / 's_iter_8.caffemodel'), '--iterations', '4'])
    out, err = capsys.readouterr()
    assert code == 0 and err == ''
    lines = out.splitlines()
    assert lines[0].startswith('Loss: ') and 'acc = %g' % mean in lines
    assert [l for l in lines if re.match(r'loss = [\d.]+ \(\* 1 = [\d.]+ loss\)$', l)]
    assert cli.main(['test', '--model', os.fspath(tmp_path / 'net.prototxt'), '--weights',
                     os.fspath(tmp_path / 'snap' / 's_iter_8.caffemodel'), '--iterations', '0']) == 2
    assert '--iterations must be at least 1' in capsys.readouterr().err


# ---------------------------------------------------------------- plot
def _plot_main(capsys, *argv):
    from minicaffe.commands import plot
    import argparse
    p = argparse.ArgumentParser()
    plot.add_arguments(p)
    try:
        return plot.run(p.parse_args([os.fspath(a) for a in argv]))
    finally:
        capsys.readouterr()


def test_plot_from_metrics_and_from_a_log(tmp_path, capsys):
    pytest.importorskip('matplotlib')
    from minicaffe.commands import plot
    path = make_case(tmp_path, solver_extra='test_iter: 2\ntest_interval: 2\ndisplay: 2')
    code, _, err = train(capsys, '--solver', path)
    assert code == 0
    log = tmp_path / 'train.log'
    log.write_text(err)
    metrics = tmp_path / 'snap' / 's_metrics.jsonl'
    c = plot.read_curves(os.fspath(metrics))
    assert c.train['train loss'][0] == list(range(8)) and c.test['acc'][0] == [0, 2, 4, 6, 8]
    c2 = plot.read_curves(os.fspath(log))
    assert c2.test['acc'][0] == [0, 2, 4, 6, 8]
    assert c2.train['train loss (displayed)'][0] == [0, 2, 4, 6, 8]
    np.testing.assert_allclose(c2.test['acc'][1], c.test['acc'][1], atol=1e-5)
    assert c2.lr[1][:3] == [0.1, 0.1, 0.05]
    for src, out in ((metrics, tmp_path / 'a.png'), (log, tmp_path / 'sub' / 'b.png')):
        assert _plot_main(capsys, src, '-o', out) == 0
        assert out.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert cli.main(['plot', os.fspath(metrics), '-o', os.fspath(tmp_path / 'c.svg')]) == 0
    assert 'Wrote' in capsys.readouterr().out and (tmp_path / 'c.svg').read_text().lstrip().startswith('<?xml')


def test_plot_errors(tmp_path, capsys, monkeypatch):
    from minicaffe.commands import plot
    from minicaffe.errors import MinicaffeError
    junk = tmp_path / 'junk.log'
    junk.write_text('hello\nworld\n')
    with pytest.raises(MinicaffeError, match='no training or test values'):
        plot.read_curves(os.fspath(junk))
    with pytest.raises(MinicaffeError, match='does not exist'):
        plot.read_curves(os.fspath(tmp_path / 'nope.jsonl'))
    monkeypatch.setitem(sys.modules, 'matplotlib', None)     # as if not installed
    monkeypatch.setitem(sys.modules, 'matplotlib.pyplot', None)
    good = tmp_path / 'm.jsonl'
    good.write_text('{"phase": "train", "iter": 0, "lr": 0.1, "loss": 1.0, "smoothed_loss": 1.0}\n')
    with pytest.raises(MinicaffeError, match=r"pip install 'minicaffe\[plot\]'"):
        _plot_main(capsys, good, '-o', tmp_path / 'x.png')
    assert not (tmp_path / 'x.png').exists()
    assert cli.main(['plot', os.fspath(good), '-o', os.fspath(tmp_path / 'x.png')]) == 2
    assert "minicaffe: error: minicaffe plot needs matplotlib" in capsys.readouterr().err
