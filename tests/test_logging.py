"""Log lines as Caffe writes them: the set-up lines of net.cpp and solver.cpp (text
and order), each tagged with the file:line that logged it, and pycaffe's behaviour
in Python (glog lines on stderr, GLOG_minloglevel, no line twice under the CLI)."""
import linecache
import logging
import os
import re
import subprocess
import sys
import textwrap

import pytest

import minicaffe as caffe

from test_solve import make_case

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LENET = os.path.join(ROOT, 'prototxt', 'mnist', 'lenet.prototxt')


def _messages(caplog):
    return [r.getMessage() for r in caplog.records]


def test_net_setup_lines_in_caffes_order(caplog):
    with caplog.at_level(logging.INFO, logger='minicaffe'):
        caffe.Net(LENET, caffe.TEST)
    msgs = _messages(caplog)
    assert msgs[0].startswith('Initializing net from parameters: \nname: "LeNet"')
    assert msgs[1:7] == ['Creating Layer data', 'data -> data', 'Setting up data',
                         'Top shape: 64 1 28 28 (50176)', 'Memory required for data: 200704',
                         'Creating Layer conv1']
    assert msgs[7:11] == ['conv1 <- data', 'conv1 -> conv1', 'Setting up conv1',
                          'Top shape: 64 20 24 24 (737280)']
    assert 'relu1 -> ip1 (in-place)' in msgs
    # memory: every top counted, in-place ones again, 4 bytes each (Caffe's memory_used_)
    counts = [50176, 737280, 184320, 204800, 51200, 32000, 32000, 640, 640]
    assert msgs.index('Memory required for data: %d' % (4 * sum(counts))) > 0
    backward = [m for m in msgs if 'backward computation' in m]
    assert backward[0] == 'prob does not need backward computation.'
    assert backward[-1] == 'data does not need backward computation.'
    assert msgs[-2:] == ['This network produces output prob', 'Network initialization done.']
    assert 'lr_mult: 1\n' in msgs[0] and 'lr_mult: 1.0' not in msgs[0]   # Caffe's text format


def test_loss_weight_and_shared_params_lines(caplog, tmp_path):
    net = tmp_path / 'n.prototxt'
    net.write_text(textwrap.dedent('''\
        layer { name: "in" type: "Input" top: "x" top: "y"
                input_param { shape { dim: 2 dim: 3 } shape { dim: 2 dim: 4 } } }
        layer { name: "a" type: "InnerProduct" bottom: "x" top: "a" param { name: "w" }
                inner_product_param { num_output: 4 bias_term: false } }
        layer { name: "b" type: "InnerProduct" bottom: "x" top: "b" param { name: "w" }
                inner_product_param { num_output: 4 bias_term: false } }
        layer { name: "loss" type: "EuclideanLoss" bottom: "a" bottom: "y" top: "loss"
                loss_weight: 2 }
        '''))
    with caplog.at_level(logging.INFO, logger='minicaffe'):
        caffe.Net(str(net), caffe.TRAIN)
    msgs = _messages(caplog)
    assert "Sharing parameters 'w' owned by layer 'a', param index 0" in msgs
    i = msgs.index('Setting up loss')
    assert msgs[i + 1:i + 3] == ['Top shape: (1)', '    with loss weight 2']
    assert 'a needs backward computation.' in msgs
    assert 'b does not need backward computation.' in msgs


def test_solver_setup_lines_and_their_file_and_line(caplog, tmp_path):
    path = make_case(tmp_path, solver_extra='test_iter: 1\ntest_interval: 4')
    with caplog.at_level(logging.INFO, logger='minicaffe'):
        solver = caffe.get_solver(path)
        solver.step(2)
    msgs = _messages(caplog)
    assert msgs[0].startswith('Initializing solver from parameters: \n')
    assert 'base_lr: 0.1\n' in msgs[0]
    net_file = os.path.join(str(tmp_path), 'net.prototxt')
    order = ['Creating training net from net file: %s' % net_file,
             'Creating test net (#0) specified by net file: %s' % net_file,
             'Solver scaffolding done.']
    where = [msgs.index(m) for m in order]
    assert where == sorted(where)
    after = [m for m in msgs[where[0] + 1:] if not m.startswith('The NetState')]
    assert after[0].startswith('Initializing net from parameters:')
    assert msgs[where[2] - 1] == 'Network initialization done.'
    # every record names the line that made it (not a wrapper's): Solver.log passes stacklevel
    for r in caplog.records:
        source = linecache.getline(r.pathname, r.lineno)
        assert 'log' in source, (r.getMessage(), r.filename, r.lineno, source)
        assert 'def log' not in source and 'log.info(msg' not in source
    iteration = [r for r in caplog.records if r.getMessage().startswith('Iteration 1 (')][0]
    assert "self.log('Iteration %d (%g iter/s" in linecache.getline(iteration.pathname,
                                                                     iteration.lineno)


def _python(code, env=None):
    e = dict(os.environ)
    e.pop('GLOG_minloglevel', None)
    e.update(env or {})
    e['PYTHONPATH'] = os.pathsep.join([ROOT] + [p for p in [e.get('PYTHONPATH')] if p])
    e.setdefault('OMP_NUM_THREADS', '1')
    return subprocess.run([sys.executable, '-c', code], env=e, capture_output=True, text=True,
                          timeout=120)


GLOG = re.compile(r'^([IWEF])\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ (\w+\.py):(\d+)\] (.*)$')


def test_python_api_logs_glog_lines_to_stderr_as_pycaffe(tmp_path):
    path = make_case(tmp_path)
    r = _python('import minicaffe as caffe\ns = caffe.get_solver(%r)\ns.step(3)\n' % path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == ''
    lines = [GLOG.match(l) for l in r.stderr.splitlines() if GLOG.match(l)]
    msgs = [m.group(4) for m in lines]
    assert 'Solver scaffolding done.' in msgs and 'Creating Layer ip' in msgs
    assert [m for m in msgs if re.match(r'Iteration 2 \(.*\), loss = ', m)]
    tags = {(m.group(2), m.group(4)) for m in lines}
    assert ('net.py', 'Network initialization done.') in tags
    assert ('solver.py', 'Solver scaffolding done.') in tags
    assert len(msgs) == len(set((m.group(3), m.group(4)) for m in lines))  # nothing twice


@pytest.mark.parametrize('level, shown', [('0', True), ('1', False), ('2', False)])
def test_python_api_honours_glog_minloglevel(level, shown):
    code = ('import logging, minicaffe as caffe\n'
            'caffe.Net(%r, caffe.TEST)\n'
            'logging.getLogger("minicaffe").warning("a warning")\n'
            'logging.getLogger("minicaffe").error("an error")\n' % LENET)
    r = _python(code, env={'GLOG_minloglevel': level})
    assert r.returncode == 0, r.stderr
    assert ('] Network initialization done.' in r.stderr) == shown
    assert ('] a warning' in r.stderr) == (level in ('0', '1'))
    assert '] an error' in r.stderr
    assert r.stderr.count('] an error') == 1


def test_python_api_stands_aside_for_the_applications_logging():
    code = ('import logging, minicaffe as caffe\n'
            'logging.basicConfig(level=logging.INFO, format="APP %%(message)s")\n'
            'caffe.Net(%r, caffe.TEST)\n' % LENET)
    r = _python(code)
    assert r.returncode == 0, r.stderr
    assert 'APP Network initialization done.' in r.stderr
    assert r.stderr.count('Network initialization done.') == 1       # not also in glog format


def test_cli_writes_each_line_once(tmp_path):
    net = tmp_path / 'lenet.prototxt'
    net.write_text(open(LENET).read())
    r = _python('import sys\nfrom minicaffe.commands import cli\n'
                'sys.exit(cli.main(["time", %r, "--iterations", "1", "--warmup", "0"]))\n'
                % str(net))
    assert r.returncode == 0, r.stderr
    assert r.stderr.count('] Network initialization done.') == 1
    assert r.stderr.count('] Performing Forward') == 1
    r = _python('import sys\nfrom minicaffe.commands import cli\n'
                'sys.exit(cli.main(["-q", "time", %r, "--iterations", "1"]))\n' % str(net))
    assert r.returncode == 0 and r.stderr == ''



def test_filtered_layers_are_logged_in_caffes_words(caplog, tmp_path):
    net = tmp_path / 'n.prototxt'
    net.write_text(textwrap.dedent('''\
        layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 } } }
        layer { name: "tr" type: "ReLU" bottom: "x" top: "a" include { phase: TRAIN } }
        layer { name: "deep" type: "ReLU" bottom: "x" top: "b" include { min_level: 2 } }
        layer { name: "shallow" type: "ReLU" bottom: "x" top: "c" include { max_level: -1 } }
        layer { name: "st" type: "ReLU" bottom: "x" top: "d" include { stage: "s1" } }
        layer { name: "nst" type: "ReLU" bottom: "x" top: "e" include { not_stage: "s0" } }
        layer { name: "ex" type: "ReLU" bottom: "x" top: "g" exclude { stage: "s0" } }
        layer { name: "kept" type: "ReLU" bottom: "x" top: "f" include { stage: "s0" } }
        '''))
    with caplog.at_level(logging.INFO, logger='minicaffe'):
        n = caffe.Net(str(net), caffe.TEST, stages=['s0'])
    msgs = _messages(caplog)
    assert msgs[:6] == [
        'The NetState phase (1) differed from the phase (0) specified by a rule in layer tr',
        'The NetState level (0) is above the min_level (2) specified by a rule in layer deep',
        'The NetState level (0) is above the max_level (-1) specified by a rule in layer shallow',
        "The NetState did not contain stage 's1' specified by a rule in layer st",
        "The NetState contained a not_stage 's0' specified by a rule in layer nst",
        'Initializing net from parameters: \n' + msgs[5].split('\n', 1)[-1]]
    assert n.layer_names() == ['in', 'kept']
    assert all(r.filename == 'netbuild.py' for r in caplog.records[:5])


def test_pycaffe_log_is_tagged_with_the_callers_line():
    code = 'import minicaffe as caffe\ncaffe.init_log()\ncaffe.log("hello")\n'
    r = _python(code)
    assert r.returncode == 0, r.stderr
    lines = [l for l in r.stderr.splitlines() if l.endswith('] hello')]
    assert len(lines) == 1 and lines[0].endswith(' <string>:3] hello')    # not cli.py's line
