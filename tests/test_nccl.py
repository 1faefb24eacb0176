"""The NCCL engine and pycaffe's multi-GPU API, through the CuPy stand-in.

CI has no GPU: tests/fake_cupy.py stands in for CuPy and tests/fake_nccl.py for
``cupy.cuda.nccl``, whose communicators really reduce across processes.  So
``minicaffe train --gpu 0,1`` (two spawned rank processes), ``tools/train.py
--gpus 0 1`` and ``mpiexec -n 2 minicaffe train --gpu 0,1`` run their whole
path here, NCCL calls included, and must reproduce Caffe's one-process run of
twice the batch (the conformance reference).  (One NCCL rank against the plain
GPU path, on the stand-in and on a real device: tests/test_gpu_nccl.py.)
"""
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

import minicaffe as caffe
from minicaffe import mode
from minicaffe.errors import MinicaffeError
from minicaffe.parallel import nccl_comm, state

import fake_cupy
from conformance import CONFORMANCE, copy_case, mismatch

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
SOLVERS = CONFORMANCE / 'solvers'


@pytest.fixture(autouse=True)
def _one_process():
    state.reset()
    yield
    state.reset()
    mode.set_mode_cpu()


@pytest.fixture
def fake_gpu():
    with fake_cupy.installed() as cp:
        mode.set_mode_gpu()
        yield cp


# ---------------------------------------------------------------- pycaffe names
def test_upstream_test_nccl(fake_gpu):
    """Caffe's python/caffe/test/test_nccl.py: new_uid() is bytes on Python 3."""
    assert caffe.has_nccl()
    uid = caffe.NCCL.new_uid()
    assert isinstance(uid, bytes) and len(uid) == nccl_comm.UID_BYTES
    assert caffe.NCCL.new_uid() != uid


def test_without_cupy_has_nccl_is_false_and_new_uid_says_why(monkeypatch):
    monkeypatch.setitem(sys.modules, 'cupy', None)      # `import cupy` raises ImportError
    assert caffe.has_nccl() is False
    with pytest.raises(MinicaffeError, match='CuPy'):
        caffe.NCCL.new_uid()


def test_importing_minicaffe_and_its_parallel_names_imports_neither_cupy_nor_mpi4py():
    code = ('import sys, minicaffe as caffe\n'
            'names = [caffe.NCCL, caffe.has_nccl, caffe.set_solver_count, caffe.set_solver_rank,'
            ' caffe.solver_count, caffe.solver_rank, caffe.set_multiprocess, caffe.Timer,'
            ' caffe.init_log, caffe.log]\n'
            'assert caffe.solver_count() == 1 and caffe.solver_rank() == 0\n'
            'caffe.set_solver_count(4); caffe.set_solver_rank(3)\n'
            'assert (caffe.solver_count(), caffe.solver_rank()) == (4, 3)\n'
            'bad = [m for m in ("cupy", "mpi4py") if m in sys.modules]\n'
            'assert not bad, bad\n')
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    with pytest.raises(AttributeError):
        caffe.no_such_name


def test_timer():
    t = caffe.Timer()
    assert t.ms == 0.0                      # never run
    t.start()
    time.sleep(0.02)
    t.stop()
    first = t.ms
    assert 15 <= first < 2000
    t.start()
    time.sleep(0.01)
    assert t.ms > 0 and not t.running       # reading a running timer stops it
    assert t.ms != first                    # the last interval, not a sum


def test_init_log_and_log(capsys):
    caffe.init_log()
    caffe.log('hello from pycaffe')
    err = capsys.readouterr().err
    assert re.search(r'^I\d{4} [\d:.]+ +\d+ \S+:\d+\] hello from pycaffe$', err, re.M), err
    caffe.init_log(1)                       # glog's minloglevel 1: warnings and up
    caffe.log('not shown')
    assert 'not shown' not in capsys.readouterr().err


def test_net_hooks_take_callables_and_run_objects(tmp_path):
    net = _small_net(tmp_path)
    seen = []

    class Hook(object):
        def run(self, layer):
            seen.append(('obj', layer))

    net.before_forward(lambda layer: seen.append(('bf', layer)))
    net.after_backward(Hook())
    net.forward()
    net.backward()
    n = len(net.layers)
    assert [x for x in seen if x[0] == 'bf'] == [('bf', i) for i in range(n)]
    assert [x for x in seen if x[0] == 'obj'] == [('obj', i) for i in reversed(range(n))]
    with pytest.raises(TypeError, match='run'):
        net.after_forward(42)


def _small_net(tmp_path):
    path = tmp_path / 'small.prototxt'
    path.write_text('''
        layer { name: "in" type: "Input" top: "x" top: "y"
                input_param { shape { dim: 2 dim: 3 } shape { dim: 2 } } }
        layer { name: "ip" type: "InnerProduct" bottom: "x" top: "ip"
                inner_product_param { num_output: 2 weight_filler { type: "xavier" } } }
        layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "y" top: "loss" }
    ''')
    return caffe.Net(str(path), caffe.TRAIN)


# ---------------------------------------------------------------- --gpu values
def test_gpu_ids(fake_gpu, monkeypatch):
    from minicaffe.commands.training import parse_gpu_ids
    monkeypatch.setenv('FAKE_CUPY_DEVICES', '3')
    assert parse_gpu_ids('all') == [0, 1, 2]
    assert parse_gpu_ids('2,0') == [2, 0]
    with pytest.raises(MinicaffeError, match='named twice'):
        parse_gpu_ids('1,1')
    with pytest.raises(MinicaffeError, match='expected a device id'):
        parse_gpu_ids('gpu1')


def test_local_rank_from_the_launchers_environment():
    assert nccl_comm.local_rank_from_env({'MPI_LOCALRANKID': '3'}) == 3
    assert nccl_comm.local_rank_from_env({'OMPI_COMM_WORLD_LOCAL_RANK': '1'}) == 1
    assert nccl_comm.local_rank_from_env({'SLURM_LOCALID': '2'}) == 2
    assert nccl_comm.local_rank_from_env({}) is None


# ---------------------------------------------------------------- the communicator
def test_communicator_checks_its_buffers_and_id(fake_gpu):
    cp = fake_gpu
    comm = nccl_comm.NCCLCommunicator(1, nccl_comm.new_uid(), 0, timeout=None)
    assert comm.device_buffers and comm.engine == 'nccl'
    with pytest.raises(TypeError, match='CuPy device array'):
        comm.allreduce(np.zeros(4, np.float32))
    with pytest.raises(TypeError, match='float32'):
        comm.allreduce(cp.zeros(4, np.float64))
    with pytest.raises(TypeError, match='contiguous'):
        comm.broadcast(cp.zeros((4, 4), np.float32)[:, 1])
    buf = cp.asarray(np.arange(6, dtype=np.float32))
    handle = comm.allreduce_async(buf)
    handle.wait()
    assert handle.test()
    np.testing.assert_array_equal(buf.get(), np.arange(6))      # one rank: the identity
    comm.barrier()
    comm.close()
    with pytest.raises(MinicaffeError, match='128 bytes'):
        nccl_comm.NCCLCommunicator(1, b'short', 0)
    with pytest.raises(MinicaffeError, match='rank 2 is not in 0..1'):
        nccl_comm.NCCLCommunicator(2, nccl_comm.new_uid(), 2)


def test_a_dropped_communicator_is_freed_with_its_watchdog(fake_gpu):
    import gc
    comm = nccl_comm.NCCLCommunicator(1, nccl_comm.new_uid(), 0, timeout=None)
    watchdog = comm._watchdog
    assert watchdog.is_alive()
    del comm
    gc.collect()
    watchdog.join(5)
    assert not watchdog.is_alive()


def test_unique_id_as_older_cupy_takes_it(fake_gpu, monkeypatch):
    """CuPy < 14 returns and takes the id as a tuple of 128 signed chars."""
    nccl = sys.modules['cupy.cuda.nccl']
    uid = nccl.get_unique_id()
    as_tuple = tuple(b - 256 if b > 127 else b for b in uid)
    assert nccl_comm.uid_bytes(as_tuple) == uid
    real_class = nccl.NcclCommunicator

    def tuple_only(ndev, comm_id, rank):
        if not isinstance(comm_id, tuple):
            raise TypeError("Argument 'commId' has incorrect type (expected tuple, got bytes)")
        return real_class(ndev, bytes(x & 0xFF for x in comm_id), rank)

    monkeypatch.setattr(nccl, 'get_unique_id', lambda: as_tuple)
    monkeypatch.setattr(nccl, 'NcclCommunicator', tuple_only)
    uid2 = nccl_comm.new_uid()
    assert isinstance(uid2, bytes) and uid2 == uid
    comm = nccl_comm.NCCLCommunicator(1, uid2, 0, timeout=None)
    comm.close()


def test_fake_nccl_checks_arguments_as_cupy_and_nccl(fake_gpu):
    """The stand-in refuses what the real API would: host pointers, non-int
    counts, unknown types, a stream object instead of its pointer."""
    cp = fake_gpu
    nccl = sys.modules['cupy.cuda.nccl']
    comm = nccl.NcclCommunicator(1, nccl.get_unique_id(), 0)
    dev = cp.zeros(8, np.float32)
    host = np.zeros(8, np.float32)
    with pytest.raises(ValueError, match='not inside a device array'):
        comm.allReduce(host.ctypes.data, host.ctypes.data, 8, nccl.NCCL_FLOAT32, nccl.NCCL_SUM, 0)
    with pytest.raises(ValueError, match='not inside a device array'):
        comm.allReduce(dev.data.ptr, dev.data.ptr, 9, nccl.NCCL_FLOAT32, nccl.NCCL_SUM, 0)
    with pytest.raises(TypeError, match='count'):
        comm.allReduce(dev.data.ptr, dev.data.ptr, 8.0, nccl.NCCL_FLOAT32, nccl.NCCL_SUM, 0)
    with pytest.raises(TypeError, match='stream'):
        comm.allReduce(dev.data.ptr, dev.data.ptr, 8, nccl.NCCL_FLOAT32, nccl.NCCL_SUM,
                       cp.cuda.Stream())
    with pytest.raises(nccl.NcclError, match='datatype'):
        comm.bcast(dev.data.ptr, 8, 99, 0, 0)
    with pytest.raises(TypeError, match='commId'):
        nccl.NcclCommunicator(1, 'not bytes', 0)
    comm.allReduce(dev.data.ptr, dev.data.ptr, 8, nccl.NCCL_FLOAT32, nccl.NCCL_SUM, 0)


# ---------------------------------------------------------------- several rank processes
@pytest.fixture(scope='module')
def shim(tmp_path_factory):
    """PYTHONPATH entries that give child processes the CuPy stand-in, and a
    kernel build folder they share."""
    base = tmp_path_factory.mktemp('fake_cupy_shim')
    paths = fake_cupy.write_shim(str(base / 'shim'))
    return {'PYTHONPATH': os.pathsep.join(paths + [str(ROOT)]),
            'FAKE_CUPY_BUILD_DIR': str(base / 'build')}


def _env(shim, devices=2, **extra):
    env = dict(os.environ, FAKE_CUPY_DEVICES=str(devices), PYTHONUNBUFFERED='1', **shim)
    env.pop('MINICAFFE_TEST_MODE', None)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _half_batch_case(case, tmp_path, **solver_fields):
    """The case with half its batch: 2 ranks of B/2 see what Caffe's run of B saw."""
    work = copy_case(SOLVERS / case, tmp_path)
    net = (work / 'net.prototxt').read_text()
    b = int(re.search(r'batch_size: (\d+)', net).group(1))
    (work / 'net.prototxt').write_text(net.replace('batch_size: %d' % b, 'batch_size: %d' % (b // 2)))
    solver = work / 'solver.prototxt'
    text = solver.read_text()
    for k, v in solver_fields.items():
        text = re.sub(r'(?m)^%s:.*$\n?' % k, '', text) + '%s: %s\n' % (k, v)
    solver.write_text(text)
    return work


def _reference_problems(work):
    ref = h5py.File(work / 'ref.h5', 'r')
    here = os.getcwd()
    os.chdir(str(work))             # the net's data source is relative
    try:
        net = caffe.Net('net.prototxt', caffe.TEST, weights='snap_iter_8.caffemodel')
    finally:
        os.chdir(here)
    return ['%s[%s]: %s' % (layer, i, m) for layer in ref['param_iter_8'] for i in ref['param_iter_8'][layer]
            for m in [mismatch(net.params[layer][int(i)].data, ref['param_iter_8'][layer][i][()])] if m]


def _run(cmd, work, env, timeout=120):
    return subprocess.run(cmd, cwd=str(work), env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize('case,fields', [
    ('sgd_step', {}),
    ('sgd_step', {'layer_wise_reduce': 'false'}),
    ('sgd_itersize_clip_sigmoid', {}),
], ids=['layer_wise', 'at_the_end', 'iter_size_2'])
def test_two_gpu_ranks_equal_caffe_with_twice_the_batch(case, fields, tmp_path, shim):
    work = _half_batch_case(case, tmp_path, **fields)
    r = _run([sys.executable, '-m', 'minicaffe', 'train', '--solver', 'solver.prototxt',
              '--weights', 'init.caffemodel', '--gpu', '0,1'], work, _env(shim))
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'Using 2 ranks (NCCL)' in r.stderr
    assert 'Use GPU with device ID 1 (rank 1 of 2, NCCL)' not in r.stderr    # rank 1 is quiet
    problems = _reference_problems(work)
    assert not problems, problems


def test_two_gpu_ranks_resume_from_caffes_snapshot(tmp_path, shim):
    """Caffe's one-process snapshot after 4 iterations, resumed by 2 GPU ranks of
    half the batch: iterations 5-8 give Caffe's weights."""
    work = _half_batch_case('sgd_step', tmp_path)
    r = _run([sys.executable, '-m', 'minicaffe', 'train', '--solver', 'solver.prototxt',
              '--snapshot', 'snap_iter_4.solverstate', '--gpu', '0,1'], work, _env(shim))
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'Resuming from snap_iter_4.solverstate' in r.stderr
    problems = _reference_problems(work)
    assert not problems, problems


def test_rank_0_tests_while_the_other_gpu_rank_waits_past_the_watchdog(tmp_path, shim):
    """Only rank 0 runs the test net (longer than the 1 s timeout); rank 1 waits
    for it in an untimed barrier, and the weights are still Caffe's."""
    work = _half_batch_case('sgd_step', tmp_path, test_net='"net.prototxt"', test_iter=500,
                            test_interval=4, test_initialization='false')
    r = _run([sys.executable, '-m', 'minicaffe', 'train', '--solver', 'solver.prototxt',
              '--weights', 'init.caffemodel', '--gpu', '0,1'], work,
             _env(shim, MINICAFFE_COMM_TIMEOUT=1))
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stderr.count('Testing net (#0)') == 2
    problems = _reference_problems(work)
    assert not problems, problems


def test_gpu_all_uses_every_visible_device(tmp_path, shim):
    work = _half_batch_case('sgd_step', tmp_path)
    r = _run([sys.executable, '-m', 'minicaffe', 'train', '--solver', 'solver.prototxt',
              '--weights', 'init.caffemodel', '--gpu', 'all'], work, _env(shim, devices=2))
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'Using GPUs 0, 1: 2 ranks' in r.stderr
    assert not _reference_problems(work)


def test_tools_train_py(tmp_path, shim):
    work = _half_batch_case('sgd_step', tmp_path)
    r = _run([sys.executable, str(ROOT / 'tools' / 'train.py'), '--solver', 'solver.prototxt',
              '--gpus', '0', '1', '--weights', 'init.caffemodel', '--timing'], work, _env(shim))
    assert r.returncode == 0, r.stderr[-3000:]
    assert re.search(r'forw +1 +conv : [\d.]+', r.stderr) and 'allreduce: ' in r.stderr
    problems = _reference_problems(work)
    assert not problems, problems


def test_a_failing_rank_is_named_and_ends_the_job(tmp_path, shim):
    """One device only: rank 1 cannot use GPU 1."""
    work = _half_batch_case('sgd_step', tmp_path)
    r = _run([sys.executable, '-m', 'minicaffe', 'train', '--solver', 'solver.prototxt',
              '--gpu', '0,1'], work, _env(shim, devices=1), timeout=60)
    assert r.returncode == 2, r.stderr[-3000:]
    assert 'minicaffe: error: rank 1 (GPU 1): GPU mode: cannot use CUDA device 1' in r.stderr
    assert 'Traceback' not in r.stderr


def _children(pid):
    out = []
    for entry in os.listdir('/proc'):
        if entry.isdigit():
            try:
                with open('/proc/%s/stat' % entry) as f:
                    fields = f.read().rsplit(')', 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry))
    return out


def _start_long_run(work, shim, extra_env=None):
    solver = work / 'solver.prototxt'
    solver.write_text(re.sub(r'max_iter: \d+', 'max_iter: 100000', solver.read_text())
                      .replace('snapshot: 4', 'snapshot: 0'))
    return subprocess.Popen([sys.executable, '-m', 'minicaffe', 'train', '--solver', 'solver.prototxt',
                             '--gpu', '0,1'], cwd=str(work), env=_env(shim, **(extra_env or {})),
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)


def _wait_for_line(proc, pattern, timeout=60):
    deadline = time.monotonic() + timeout
    lines = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        if re.search(pattern, line):
            return lines
    proc.kill()
    raise AssertionError('no line matching %r:\n%s' % (pattern, ''.join(lines[-30:])))


@pytest.mark.skipif(not os.path.isdir('/proc'), reason='finds the rank processes in /proc')
def test_a_killed_rank_ends_the_job_within_seconds_naming_it(tmp_path, shim):
    proc = _start_long_run(_half_batch_case('sgd_step', tmp_path), shim)
    try:
        _wait_for_line(proc, r'Iteration 3\b')
        ranks = _children(proc.pid)
        ranks = [p for p in ranks if 'resource_tracker' not in open('/proc/%d/cmdline' % p).read()]
        assert len(ranks) == 2, ranks
        t0 = time.monotonic()
        os.kill(ranks[1], signal.SIGKILL)
        _, err = proc.communicate(timeout=30)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert took < 30
    assert re.search(r'minicaffe: error: rank [01] \(GPU [01]\) was killed by signal 9', err), err[-2000:]
    for pid in ranks:      # the other rank was stopped too
        assert not os.path.exists('/proc/%d' % pid) or 'Z' in open('/proc/%d/stat' % pid).read().split()[2]


def test_sigint_to_the_parent_stops_every_rank_with_one_snapshot(tmp_path, shim):
    work = _half_batch_case('sgd_step', tmp_path)
    for old in work.glob('snap_iter_*'):                    # Caffe's own, shipped with the case
        old.unlink()
    proc = _start_long_run(work, shim)
    try:
        _wait_for_line(proc, r'Iteration 3\b')
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert 'Optimization stopped early.' in err
    snaps = sorted(p.name for p in work.glob('snap_iter_*.caffemodel'))
    assert len(snaps) == 1, snaps


def test_watchdog_ends_a_rank_whose_peer_never_comes(tmp_path, shim):
    code = ('import minicaffe as caffe\n'
            'from minicaffe.parallel.nccl_comm import NCCLCommunicator\n'
            'caffe.set_mode_gpu()\n'
            'NCCLCommunicator(2, caffe.NCCL.new_uid(), 0, timeout=1.0)\n'
            'print("joined")\n')
    t0 = time.monotonic()
    r = _run([sys.executable, '-c', code], tmp_path, _env(shim), timeout=60)
    assert r.returncode == 1 and 'joined' not in r.stdout
    assert time.monotonic() - t0 < 30
    assert 'minicaffe: error: rank 0: ncclCommInitRank did not complete within 1 s' in r.stderr


def test_watchdog_ends_a_rank_whose_peer_stops_answering(tmp_path, shim):
    """Both ranks join; rank 1 then never reaches the all-reduce (a hung peer):
    rank 0's watchdog aborts the communicator and ends rank 0."""
    code = ('import sys, time, numpy as np, cupy, minicaffe as caffe\n'
            'from minicaffe.parallel.nccl_comm import NCCLCommunicator\n'
            'rank = int(sys.argv[1])\n'
            'caffe.set_device(rank); caffe.set_mode_gpu()\n'
            'comm = NCCLCommunicator(2, bytes.fromhex(sys.argv[2]), rank, timeout=1.0)\n'
            'print("joined", flush=True)\n'
            'if rank == 1:\n'
            '    time.sleep(60)\n'
            'comm.allreduce(cupy.zeros(4, np.float32))\n'
            'print("reduced", flush=True)\n')
    uid = subprocess.run([sys.executable, '-c', 'from cupy.cuda import nccl; print(nccl.get_unique_id().hex())'],
                         env=_env(shim), capture_output=True, text=True, check=True).stdout.strip()
    peer = subprocess.Popen([sys.executable, '-c', code, '1', uid], env=_env(shim),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        t0 = time.monotonic()
        r = _run([sys.executable, '-c', code, '0', uid], tmp_path, _env(shim), timeout=60)
        took = time.monotonic() - t0
    finally:
        peer.kill()
        peer.communicate()
    assert r.returncode == 1 and 'joined' in r.stdout and 'reduced' not in r.stdout, r.stderr
    assert took < 30
    assert 'minicaffe: error: rank 0: ncclAllReduce did not complete within 1 s' in r.stderr


def test_bench_scaling_runs_gpu_ranks(tmp_path, shim):
    """benchmarks/bench_scaling.py --gpu end to end through the stand-in: 2 NCCL
    ranks on LeNet (a smoke test: timings here mean nothing)."""
    bench = CONFORMANCE.parent / 'bench'
    if not (bench / 'lenet_b64.prototxt').exists():
        pytest.skip('../shared/bench not found')
    out = tmp_path / 'scaling.json'
    r = _run([sys.executable, str(ROOT / 'benchmarks' / 'bench_scaling.py'), '--gpu', '--net', 'lenet',
              '--ranks', '2', '--iterations', '1', '--warmup', '0', '--threads-per-rank', '1',
              '--bench-dir', str(bench), '--json', str(out)], tmp_path, _env(shim), timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    import json
    rows = json.loads(out.read_text())['rows']
    assert [(row['ranks'], row['layer_wise_reduce']) for row in rows] == [(2, True), (2, False)]
    assert all(row['iter_per_s'] > 0 and row['mb_per_iter'] == pytest.approx(4 * 431080 / 1e6, rel=1e-3)
               for row in rows)


@pytest.mark.skipif(shutil.which('mpiexec') is None, reason='needs mpiexec (pip install mpich)')
def test_mpiexec_gpu_ranks_broadcast_the_unique_id_over_mpi(tmp_path, shim):
    pytest.importorskip('mpi4py')
    work = _half_batch_case('sgd_step', tmp_path)
    r = _run(['mpiexec', '-n', '2', sys.executable, '-m', 'minicaffe', 'train', '--solver',
              'solver.prototxt', '--weights', 'init.caffemodel', '--gpu', '0,1'], work, _env(shim))
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'Using 2 ranks (NCCL)' in r.stderr
    problems = _reference_problems(work)
    assert not problems, problems
