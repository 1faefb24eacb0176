"""The `minicaffe` command: time, gradcheck, error reporting, data registry, tools/*.py."""
import argparse
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from minicaffe.commands import cli, timing

ROOT = Path(__file__).resolve().parents[1]

SMALL_NET = textwrap.dedent('''\
    name: "small"
    layer { name: "input" type: "Input" top: "data" top: "label"
      input_param { shape { dim: 2 dim: 3 dim: 5 dim: 5 } shape { dim: 2 } } }
    layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
      convolution_param { num_output: 2 kernel_size: 3
        weight_filler { type: "gaussian" std: 0.1 } bias_filler { type: "constant" value: 0.1 } } }
    layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
    layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool"
      pooling_param { pool: MAX kernel_size: 2 stride: 1 } }
    layer { name: "ip" type: "InnerProduct" bottom: "pool" top: "ip"
      inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.1 } } }
    layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
    layer { name: "acc" type: "Accuracy" bottom: "ip" bottom: "label" top: "acc"
      include { phase: TEST } }
''')

# A Python layer y = 2x whose backward is wrong (it passes dy through unscaled).
BAD_LAYER_MODULE = textwrap.dedent('''\
    import minicaffe as caffe

    class Double(caffe.Layer):
        def setup(self, bottom, top):
            pass
        def reshape(self, bottom, top):
            top[0].reshape(*bottom[0].shape)
        def forward(self, bottom, top):
            top[0].data[...] = 2 * bottom[0].data
        def backward(self, top, propagate_down, bottom):
            if propagate_down[0]:
                bottom[0].diff[...] = top[0].diff * self.factor

    class GoodDouble(Double):
        factor = 2.0

    class BadDouble(Double):
        factor = 1.0
''')


def python_layer_net(cls):
    return textwrap.dedent('''\
        name: "py"
        layer { name: "input" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 } } }
        layer { name: "double" type: "Python" bottom: "data" top: "out"
          python_param { module: "cli_test_layers" layer: "%s" } }
        layer { name: "loss" type: "EuclideanLoss" bottom: "out" bottom: "data" top: "loss" }
    ''' % cls)


def run_cli(args, cwd=None, env=None):
    e = dict(os.environ)
    e.update(env or {})
    e['PYTHONPATH'] = os.pathsep.join([str(ROOT)] + [p for p in [e.get('PYTHONPATH')] if p])
    return subprocess.run([sys.executable, '-m', 'minicaffe'] + args, cwd=cwd, env=e,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def small_net(tmp_path):
    path = tmp_path / 'small.prototxt'
    path.write_text(SMALL_NET)
    return path


# ------------------------------------------------------------------ time
def test_time_prints_per_layer_and_caffe_summary_lines(small_net, capsys):
    assert cli.main(['-q', 'time', str(small_net), '--iterations', '3']) == 0
    out = capsys.readouterr().out.splitlines()
    assert out.pop(0) == 'Timed 3 iterations after 1 untimed warm-up iteration.'
    assert out[0].strip() == 'Average time per layer:'
    # TRAIN phase (caffe time's default): Accuracy (TEST only) is not in the net.
    names = ['input', 'conv', 'relu', 'pool', 'ip', 'loss']
    body = out[1:1 + 2 * len(names)]
    for i, name in enumerate(names):
        assert body[2 * i].split('\t') == ['%10s' % name, body[2 * i].split('\t')[1]]
        assert body[2 * i].split('\t')[1].startswith('forward: ')
        assert body[2 * i + 1].split('\t')[1].startswith('backward: ')
        assert body[2 * i + 1].endswith(' ms.')
    summary = out[1 + 2 * len(names):]
    prefixes = ['Average Forward pass: ', 'Average Backward pass: ', 'Average Forward-Backward: ',
                'Total Time: ']
    assert len(summary) == 4
    values = []
    for line, prefix in zip(summary, prefixes):
        assert line.startswith(prefix) and line.endswith(' ms.'), line
        values.append(float(line[len(prefix):-4]))
    fwd, bwd, fb, total = values
    assert fwd > 0 and bwd > 0
    assert fb >= 0.9 * (fwd + bwd)                      # the sum of the two passes, plus overhead
    assert total == pytest.approx(3 * fb, rel=1e-3)


def test_time_test_phase_and_result_fields(small_net):
    net = timing.build_net(str(small_net), 'TEST')
    res = timing.time_net(net, iterations=2)
    # every layer of the net, the automatic splits included (as Caffe times them)
    assert [n for n in res.layer_names if '_split' not in n] == [
        'input', 'conv', 'relu', 'pool', 'ip', 'loss', 'acc']
    assert 'Split' in res.layer_types
    assert res.iterations == 2
    assert len(res.forward_ms) == len(res.backward_ms) == len(net.layers)
    assert res.forward_pass_ms >= sum(res.forward_ms) * 0.99
    lines = timing.format_report(res)
    assert lines[-4].startswith('Average Forward pass: ')


def test_time_logs_caffe_progress_lines_on_stderr(small_net):
    r = run_cli(['time', str(small_net), '--iterations', '2'])
    assert r.returncode == 0, r.stderr
    assert 'Average Forward-Backward: ' in r.stdout
    assert 'Iteration: 2 forward-backward time: ' in r.stderr
    assert '*** Benchmark begins ***' in r.stderr
    # glog's prefix: I<mmdd> <hh:mm:ss.micro> <pid> <file>:<line>]
    first = [l for l in r.stderr.splitlines() if 'Performing Forward' in l][0]
    assert first[0] == 'I' and '] Performing Forward' in first and 'timing.py:' in first


def test_time_warms_up_with_untimed_iterations_of_the_timed_loop(small_net, monkeypatch, capsys):
    net = timing.build_net(str(small_net))
    calls = []
    real = net._forward_layer
    monkeypatch.setattr(net, '_forward_layer', lambda i: calls.append(i) or real(i))
    res = timing.time_net(net, iterations=2, warmup=3)
    n = len(net.layers)
    assert len(calls) == n * (1 + 3 + 2)       # Caffe's warm-up forward, 3 untimed, 2 timed
    assert res.warmup == 3 and res.iterations == 2
    assert timing.format_report(res)[0] == 'Timed 2 iterations after 3 untimed warm-up iterations.'
    calls.clear()
    res = timing.time_net(net, iterations=1, warmup=0)
    assert len(calls) == 2 * n
    assert timing.format_report(res)[0] == 'Timed 1 iteration after 0 untimed warm-up iterations.'
    assert cli.main(['time', str(small_net), '--warmup', '-1']) == 2
    assert '--warmup' in capsys.readouterr().err


def test_time_rejects_zero_iterations(small_net, capsys):
    assert cli.main(['time', str(small_net), '--iterations', '0']) == 2
    assert 'iterations' in capsys.readouterr().err


# ------------------------------------------------------------------ gradcheck
def test_gradcheck_passes_on_a_correct_net(small_net, capsys):
    # in-place ReLU and MAX pooling: each layer sees the bottoms it saw in forward
    assert cli.main(['-q', 'gradcheck', str(small_net)]) == 0
    out = capsys.readouterr().out
    rows = [tuple(l.split()[:2]) for l in out.splitlines()[1:-1]]
    for label in (('conv', 'param[0]'), ('conv', 'param[1]'), ('conv', 'bottom[0]'),
                  ('relu', 'bottom[0]'), ('pool', 'bottom[0]'), ('ip', 'param[1]'),
                  ('loss', 'bottom[0]')):
        assert label in rows
    assert 'FAIL' not in out.replace('FAIL at', '')
    assert out.strip().splitlines()[-1].startswith('PASSED: ')


def test_gradcheck_one_layer(small_net, capsys):
    assert cli.main(['-q', 'gradcheck', str(small_net), '--layer', 'ip']) == 0
    out = capsys.readouterr().out
    rows = [l.split()[0] for l in out.splitlines()[1:-1]]
    assert rows == ['ip', 'ip', 'ip']
    assert out.splitlines()[-1].startswith('PASSED: 3 blobs in 1 layer (')


def test_counted_nouns_are_plural_except_one():
    assert [cli.counted(n, 'layer') for n in (0, 1, 2)] == ['0 layers', '1 layer', '2 layers']
    assert cli.counted(1, 'checked blob') == '1 checked blob'


def test_gradcheck_unknown_layer_is_an_error(small_net, capsys):
    assert cli.main(['-q', 'gradcheck', str(small_net), '--layer', 'nope']) == 2
    err = capsys.readouterr().err
    assert 'no layer named "nope"' in err and 'conv' in err


def test_gradcheck_wrong_backward_exits_1(tmp_path):
    (tmp_path / 'cli_test_layers.py').write_text(BAD_LAYER_MODULE)
    env = {'MINICAFFE_ALLOW_PYTHON_LAYERS': '1', 'PYTHONPATH': str(tmp_path)}
    good, bad = tmp_path / 'good.prototxt', tmp_path / 'bad.prototxt'
    good.write_text(python_layer_net('GoodDouble'))
    bad.write_text(python_layer_net('BadDouble'))
    r = run_cli(['-q', 'gradcheck', str(good)], env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    r = run_cli(['-q', 'gradcheck', str(bad)], env=env)
    assert r.returncode == 1, r.stdout + r.stderr
    line = [l for l in r.stdout.splitlines() if l.startswith('double')][0]
    assert 'bottom[0]' in line and 'FAIL' in line
    assert float(line.split()[2]) > 0.1            # worst relative error: 1 vs 2 -> 0.5
    assert 'FAILED: 1 of' in r.stdout and '"double"' in r.stdout


# ------------------------------------------------------------------ errors
def test_missing_file_exit_2_names_the_path(tmp_path):
    missing = tmp_path / 'nope.prototxt'
    for sub in (['time', str(missing)], ['gradcheck', str(missing)],
                ['test', '--model', str(missing), '--weights', 'w.caffemodel']):
        r = run_cli(sub)
        assert r.returncode == 2, (sub, r.stderr)
        assert r.stderr.startswith('minicaffe: error: ')
        assert str(missing) in r.stderr
        assert 'Traceback' not in r.stderr


def test_malformed_prototxt_reports_file_and_line(tmp_path, capsys):
    bad = tmp_path / 'bad.prototxt'
    bad.write_text('name: "x"\nlayer {\n  name: "a"\n  type: "Input"\n  bogus_field: 3\n}\n')
    assert cli.main(['time', str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith('minicaffe: error: %s:5:' % bad)
    assert 'bogus_field' in err


def test_net_definition_error_exit_2(tmp_path, capsys):
    net = tmp_path / 'net.prototxt'
    net.write_text('layer { name: "r" type: "ReLU" bottom: "nothing" top: "r" }\n')
    assert cli.main(['time', str(net)]) == 2
    err = capsys.readouterr().err
    assert err.startswith('minicaffe: error: %s:1: ' % net) and '"nothing"' in err


def test_gpu_without_cupy_is_a_clear_error(small_net, capsys):
    try:
        import cupy  # noqa: F401
        pytest.skip('CuPy is installed')
    except ImportError:
        pass
    assert cli.main(['time', str(small_net), '--gpu', '0']) == 2
    err = capsys.readouterr().err
    assert err.startswith('minicaffe: error: ') and 'GPU' in err


def test_keyboard_interrupt_exits_130(monkeypatch, small_net, capsys):
    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(timing, 'time_net', interrupted)
    assert cli.main(['time', str(small_net)]) == 130
    assert 'interrupted' in capsys.readouterr().err


def test_usage_errors_exit_2(capsys):
    assert cli.main([]) == 2
    assert cli.main(['no-such-command']) == 2
    assert cli.main(['time']) == 2
    assert 'required' in capsys.readouterr().err


# ------------------------------------------------------------------ parser wiring
def test_all_subcommands_are_registered(capsys):
    assert cli.main(['--help']) == 0
    out = capsys.readouterr().out
    for sub in ('train', 'solve', 'test', 'time', 'gradcheck', 'data', 'convert-imageset',
                'compute-mean', 'draw', 'upgrade'):
        assert sub in out
    for sub in ('train', 'solve', 'test', 'time', 'gradcheck', 'convert-imageset',
                'compute-mean', 'draw', 'upgrade'):
        assert cli.main([sub, '--help']) == 0
    assert cli.main(['data', 'mnist', '--help']) == 0
    assert '--source' in capsys.readouterr().out


def test_solve_is_train():
    p = cli.build_parser()
    a = p.parse_args(['solve', '--solver', 's.prototxt'])
    b = p.parse_args(['train', '--solver', 's.prototxt'])
    assert a._run is b._run


def test_data_registry_is_extensible(monkeypatch, tmp_path, capsys):
    calls = []

    class Fake(object):
        @staticmethod
        def add_arguments(p):
            p.add_argument('--out', default='data/fake')

        @staticmethod
        def run(args):
            calls.append(args.out)
            return 0
    monkeypatch.setattr(cli, 'Fake', Fake, raising=False)
    monkeypatch.setitem(cli.DATASETS, 'fake', ('minicaffe.commands.cli:Fake', 'a fake data set'))
    monkeypatch.setitem(cli.DATASETS, 'broken', ('minicaffe.lrcn.datasets.no_such_module', 'broken'))
    assert cli.main(['data', 'fake', '--out', str(tmp_path)]) == 0
    assert calls == [str(tmp_path)]
    # a module that does not import breaks only its own subcommand
    assert cli.main(['data', 'broken']) == 2
    assert 'no_such_module' in capsys.readouterr().err


def test_data_mnist_from_a_given_pickle(tmp_path, capsys):
    import gzip
    import pickle

    import h5py
    import numpy as np
    rs = np.random.default_rng(0)

    def split(n):
        return rs.random((n, 784), dtype=np.float32), rs.integers(0, 10, n)
    src = tmp_path / 'mnist.pkl.gz'
    with gzip.open(src, 'wb') as f:
        pickle.dump((split(6), split(2), split(3)), f)
    out = tmp_path / 'mnist'
    assert cli.main(['-q', 'data', 'mnist', '--source', str(src), '--out', str(out)]) == 0
    with h5py.File(out / 'train.h5', 'r') as f:
        assert f['data'].shape == (8, 1, 28, 28)
    with h5py.File(out / 'test.h5', 'r') as f:
        assert f['label'].shape == (3,)


# ------------------------------------------------------------------ tools/*.py
@pytest.mark.parametrize('script,sub', [('time', 'time'), ('gradcheck', 'gradcheck'),
                                        ('solve', 'train'), ('test_net', 'test')])
def test_tool_scripts_run_without_installation(tmp_path, script, sub):
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    r = subprocess.run([sys.executable, str(ROOT / 'tools' / (script + '.py')), '--help'],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith('usage: minicaffe %s' % sub)


def test_python_dash_m_entry_point(small_net):
    r = run_cli(['-q', 'time', str(small_net), '--iterations', '1', '--phase', 'test'])
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1].startswith('Total Time: ')
    assert '     acc\tforward: ' in r.stdout


# ------------------------------------------------------------------ train / log file
TINY_SOLVER_NET = textwrap.dedent('''\
    name: "tiny"
    layer { name: "data" type: "DummyData" top: "data" top: "label"
      dummy_data_param { shape { dim: 4 dim: 3 } shape { dim: 4 }
        data_filler { type: "gaussian" } data_filler { type: "constant" value: 1 } } }
    layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
      inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.1 } } }
    layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
''')


def test_train_writes_a_glog_log_file_parse_log_can_read(tmp_path):
    import datetime
    (tmp_path / 'net.prototxt').write_text(TINY_SOLVER_NET)
    (tmp_path / 'solver.prototxt').write_text(
        'net: "net.prototxt"\nbase_lr: 0.1\nlr_policy: "fixed"\nmax_iter: 3\ndisplay: 1\n'
        'snapshot_prefix: "snap/tiny"\n')
    r = run_cli(['--log-file', 'train.log', 'solve', '--solver', 'solver.prototxt'], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = (tmp_path / 'train.log').read_text().splitlines()
    # tools/extra/parse_log.py: the year from the header, times from each line's prefix
    year = int(lines[0].split()[4][:4])
    assert year == datetime.date.today().year
    solving = [l for l in lines if 'Solving' in l]
    iters = [l for l in lines if 'Iteration 3' in l and 'loss = ' in l]
    assert solving and iters
    for line in solving + iters:
        head = line.split()
        month, day = int(head[0][1:3]), int(head[0][3:5])
        hms = [int(x) for x in head[1][:head[1].rfind('.')].split(':')]
        datetime.datetime(year, month, day, *hms)
        assert head[0][0] == 'I' and head[3].endswith(']')


def test_gradcheck_inputs_labels_zero_cont_starts_sequences(tmp_path):
    import numpy as np
    net_path = tmp_path / 'lstm.prototxt'
    net_path.write_text(textwrap.dedent('''\
        layer { name: "input" type: "Input" top: "x" top: "cont" top: "label"
          input_param { shape { dim: 3 dim: 2 dim: 4 } shape { dim: 3 dim: 2 } shape { dim: 3 dim: 2 } } }
        layer { name: "lstm" type: "LSTM" bottom: "x" bottom: "cont" top: "h"
          recurrent_param { num_output: 3 weight_filler { type: "uniform" min: -0.5 max: 0.5 } } }
        layer { name: "loss" type: "SoftmaxWithLoss" bottom: "h" bottom: "label" top: "loss"
          softmax_param { axis: 2 } }
    '''))
    net = timing.build_net(str(net_path), 'TRAIN')
    cli.fill_inputs(net, seed=3)
    cont = net.blobs['cont'].data
    assert (cont[0] == 0).all() and (cont[1:] == 1).all()
    assert (net.blobs['label'].data == 0).all()
    x = net.blobs['x'].data
    assert x.std() > 0.3 and len(np.unique(x)) == x.size
    assert cli.main(['-q', 'gradcheck', str(net_path)]) == 0


# ------------------------------------------------------------------ time --layers
FLOP_NET = '''name: "flops"
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } shape { dim: 2 dim: 5 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 group: 1
                            weight_filler { type: "xavier" } } }
layer { name: "ip" type: "InnerProduct" bottom: "conv" top: "ip"
        inner_product_param { num_output: 5 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "label" top: "loss" }
'''


def test_layer_flops_from_shapes(tmp_path):
    path = tmp_path / 'flops.prototxt'
    path.write_text(FLOP_NET)
    net = timing.build_net(str(path))
    names = list(net._layer_names)
    conv, ip = names.index('conv'), names.index('ip')
    # conv: 2 images x 4 outputs x (3 channels x 9) x 64 positions, a multiply-add = 2,
    # plus one bias add per output value
    conv_f = 2.0 * 2 * 4 * 27 * 64 + 2 * 4 * 64
    assert timing.layer_flops(net.layers[conv], net._bottom(conv), net._top(conv)) == (conv_f,
                                                                                       2 * conv_f)
    ip_f = 2.0 * 2 * 256 * 5 + 2 * 5
    assert timing.layer_flops(net.layers[ip], net._bottom(ip), net._top(ip)) == (ip_f, 2 * ip_f)
    loss = names.index('loss')
    assert timing.layer_flops(net.layers[loss], net._bottom(loss), net._top(loss)) is None


def test_gflops_figures_keep_a_tiny_layers_rate():
    """One decimal for rates of 10 GFLOP/s and more, 3 significant digits below:
    a small layer timed on a busy machine must not print 0.0."""
    assert timing._gflops(123.456).strip() == '123.5'
    assert timing._gflops(5.55).strip() == '5.55'
    assert float(timing._gflops(0.0412)) == 0.0412
    assert float(timing._gflops(3e-5)) > 0


def test_time_layers_table_and_blas_header(tmp_path):
    path = tmp_path / 'flops.prototxt'
    path.write_text(FLOP_NET)
    r = run_cli(['time', str(path), '--iterations', '2', '--layers'])
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    head = [i for i, l in enumerate(lines) if l.split()[:2] == ['layer', 'type']]
    assert head and 'fwd GF/s' in lines[head[0]]
    rows = {l.split()[0]: l.split() for l in lines[head[0] + 1:]}
    assert rows['conv'][1:3] == ['Convolution', 'im2col']     # 3 channels: not worth Winograd
    assert float(rows['conv'][5]) > 0 and float(rows['ip'][5]) > 0
    assert rows['loss'][-2:] == ['-', '-']
    header = [l for l in r.stderr.splitlines() if 'BLAS:' in l]
    assert header and 'thread' in header[0] and 'minicaffe worker threads:' in header[0]


# ------------------------------------------------------------------ help
def _every_parser(parser, path=()):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            seen = set()
            for name, sub in action.choices.items():
                if id(sub) not in seen:          # aliases (solve) share the parser
                    seen.add(id(sub))
                    yield from _every_parser(sub, path + (name,))


def _names_default(text, default):
    """The help text names the default after the word "default" (1e-2 names 0.01)."""
    after = text[text.find('default'):] if 'default' in text else ''
    if str(default) in after:
        return True
    if isinstance(default, (int, float)):
        import re
        return any(float(x) == default for x in re.findall(r'-?\d+(?:\.\d*)?(?:e-?\d+)?', after))
    return False


def test_every_option_of_every_command_has_help_and_shows_its_default():
    parsers = list(_every_parser(cli.build_parser()))
    names = {' '.join(path) for path, _ in parsers}
    for command in ('train', 'test', 'time', 'gradcheck', 'data captions', 'data moving_mnist',
                    'data activity_scenes', 'data video_description', 'data mnist', 'caption',
                    'classify-video', 'upgrade'):
        assert command in names
    checked = 0
    for path, parser in parsers:
        formatter = parser._get_formatter()
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._VersionAction,
                                   argparse._SubParsersAction)) or action.help == argparse.SUPPRESS:
                continue
            where = '%s %s' % (' '.join(path), '/'.join(action.option_strings) or action.dest)
            assert action.help and action.help.strip(), 'no help text: ' + where
            if cli.shows_default(action):
                shown = formatter._get_help_string(action) % {'default': action.default}
                assert _names_default(shown, action.default), \
                    'default not shown: %s: %s' % (where, shown)
            checked += 1
        parser.format_help()                    # every help text formats
    assert checked > 100


def test_help_shows_defaults_once(capsys):
    assert cli.main(['test', '--help']) == 0
    out = ' '.join(capsys.readouterr().out.split())
    assert '--iterations ITERATIONS batches to score (default: 50)' in out
    assert '--phase {TRAIN,TEST} net phase (default: TEST)' in out
    assert cli.main(['time', '--help']) == 0
    out = ' '.join(capsys.readouterr().out.split())
    assert out.count('(default 50)') == 1 and '(default: 50)' not in out
