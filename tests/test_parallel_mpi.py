"""Data-parallel training under ``mpiexec`` (the MPI engine), end to end:
``mpiexec -n 2 minicaffe train`` on Caffe's conformance solver cases with half
the batch per rank reproduces real Caffe's numbers (one process, the full
batch) and minicaffe's own one-process run, with layer_wise_reduce on and off
and with iter_size 2; snapshots move between rank counts; SIGINT/SIGHUP act on
all ranks; a dead or stopped rank ends the job naming it; ranks that disagree
stop with a clear error.  Needs mpiexec and mpi4py (``pip install -e '.[mpi]'``).
"""
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

import minicaffe as caffe

from conformance import CONFORMANCE, copy_case, mismatch

ROOT = Path(__file__).resolve().parents[1]
# pip's mpich puts mpiexec beside the interpreter's scripts, which may not be on PATH
MPIEXEC = shutil.which('mpiexec') or shutil.which('mpiexec', path=sysconfig.get_path('scripts'))
try:
    import mpi4py  # noqa: F401
    HAVE_MPI4PY = True
except ImportError:
    HAVE_MPI4PY = False

pytestmark = pytest.mark.skipif(not (MPIEXEC and HAVE_MPI4PY),
                                reason="needs mpiexec and mpi4py (pip install -e '.[mpi]')")
SOLVERS = CONFORMANCE / 'solvers'


def _env(**extra):
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join([str(ROOT)] + [p for p in env.get('PYTHONPATH', '').split(os.pathsep) if p])
    env.setdefault('MINICAFFE_NUM_THREADS', '1')
    env.update(extra)
    return env


def _train_cmd(*args):
    return [sys.executable, '-m', 'minicaffe', 'train', '--no-progress'] + list(args)


def mpiexec(n, args, cwd, timeout=120, **env):
    cmd = [MPIEXEC, '-n', str(n)] + _train_cmd(*args)
    return subprocess.run(cmd, cwd=str(cwd), env=_env(**env), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout)


def _case(name, tmp_path, batch=None, solver_extra=''):
    """A copy of a conformance solver case; ``batch`` replaces the net's batch_size."""
    if not (SOLVERS / name).is_dir():
        pytest.skip('conformance case %s not found' % name)
    work = copy_case(SOLVERS / name, tmp_path / name)
    for f in work.iterdir():
        f.chmod(0o644)
    if batch is not None:
        net = work / 'net.prototxt'
        text, n = re.subn(r'batch_size: \d+', 'batch_size: %d' % batch, net.read_text())
        assert n == 1
        net.write_text(text)
    if solver_extra:
        with open(work / 'solver.prototxt', 'a') as f:
            f.write('\n' + solver_extra + '\n')
    return work


@contextlib.contextmanager
def _inside(work):
    """Work inside a case folder (its paths are relative)."""
    cwd = os.getcwd()
    os.chdir(work)
    try:
        yield
    finally:
        os.chdir(cwd)


def _all_params(net):
    return {(name, i): b.data.copy() for name, blobs in net.params.items() for i, b in enumerate(blobs)}


def _params(work, model):
    with _inside(work):
        return _all_params(caffe.Net('net.prototxt', caffe.TEST, weights=model))


def _problems_against_caffe(params, ref_group, label):
    out = []
    for layer in ref_group:
        for i in ref_group[layer]:
            m = mismatch(params[(layer, int(i))], ref_group[layer][i][()])
            if m:
                out.append('%s %s[%s]: %s' % (label, layer, i, m))
    return out


def _one_process_params(name, tmp_path):
    """minicaffe in this process, the case as it is (batch 2B), 8 iterations."""
    with _inside(_case(name, tmp_path / 'single')):
        solver = caffe.get_solver('solver.prototxt')
        solver.net.copy_from('init.caffemodel')
        solver.step(8)
        return _all_params(solver.net)


@pytest.mark.parametrize('name', ['sgd_step', 'sgd_itersize_clip_sigmoid', 'adam_poly'])
def test_two_ranks_of_half_batch_reproduce_one_process(name, tmp_path):
    """Each case's net reads 16 rows, batch 4: 2 ranks of batch 2 must give
    Caffe's weights after 4 and 8 iterations, minicaffe's one-process weights,
    and the same numbers with layer_wise_reduce on and off."""
    single = _one_process_params(name, tmp_path)
    ref = h5py.File(SOLVERS / name / 'ref.h5', 'r')
    results = {}
    for layer_wise in (True, False):
        work = _case(name, tmp_path / str(layer_wise), batch=2,
                     solver_extra='layer_wise_reduce: %s' % str(layer_wise).lower())
        run = mpiexec(2, ['--solver', 'solver.prototxt', '--weights', 'init.caffemodel'], work)
        assert run.returncode == 0, run.stdout
        assert 'Using 2 ranks (MPI); effective batch 2 x 2' in run.stdout
        after4, after8 = _params(work, 'snap_iter_4.caffemodel'), _params(work, 'snap_iter_8.caffemodel')
        problems = _problems_against_caffe(after4, ref['param_iter_4'], 'layer_wise %s, iter 4' % layer_wise)
        problems += _problems_against_caffe(after8, ref['param_iter_8'], 'layer_wise %s, iter 8' % layer_wise)
        for key, value in single.items():
            m = mismatch(after8[key], value)
            if m:
                problems.append('layer_wise %s vs one process, %s: %s' % (layer_wise, key, m))
        assert not problems, '\n'.join(problems)
        results[layer_wise] = after8
    for key in results[True]:
        np.testing.assert_allclose(results[True][key], results[False][key], rtol=1e-6, atol=1e-7,
                                   err_msg='layer_wise_reduce true vs false, %s' % (key,))


@pytest.mark.parametrize('seeded', [True, False])
def test_shuffled_hdf5_ranks_reproduce_one_process(tmp_path, seeded):
    """With shuffle on (16 rows, reshuffled after each of the 2 passes), the
    ranks share the shuffle order and still train to the one-process numbers;
    without random_seed in the solver the ranks share the seed rank 0 drew."""
    def shuffled(work, seed):
        net = work / 'net.prototxt'
        net.write_text(net.read_text().replace('batch_size:', 'shuffle: true batch_size:'))
        solver = work / 'solver.prototxt'
        text = re.sub(r'random_seed: \d+', 'random_seed: %d' % seed, solver.read_text())
        solver.write_text(text)
        return work
    work = shuffled(_case('sgd_step', tmp_path, batch=2), 1701 if seeded else -1)
    run = mpiexec(2, ['--solver', 'solver.prototxt', '--weights', 'init.caffemodel'], work)
    assert run.returncode == 0, run.stdout
    seed = 1701 if seeded else int(re.search(r'The ranks share random seed (\d+)', run.stdout).group(1))
    with _inside(shuffled(_case('sgd_step', tmp_path / 'single'), seed)):
        solver = caffe.get_solver('solver.prototxt')
        solver.net.copy_from('init.caffemodel')
        solver.step(8)
        single = _all_params(solver.net)
    ranks = _params(work, 'snap_iter_8.caffemodel')
    problems = ['%s: %s' % (k, mismatch(ranks[k], v)) for k, v in single.items() if mismatch(ranks[k], v)]
    assert not problems, '\n'.join(problems)
    ref = h5py.File(SOLVERS / 'sgd_step' / 'ref.h5', 'r')        # (a different order than Caffe's)
    assert _problems_against_caffe(ranks, ref['param_iter_8'], 'iter 8')


def test_resume_across_rank_counts(tmp_path):
    """A snapshot written by 2 ranks resumes in 1 process, and Caffe's
    one-process snapshot resumes on 2 ranks; both end at Caffe's iteration 8."""
    name = 'adam_poly'          # two history blobs per parameter
    ref = h5py.File(SOLVERS / name / 'ref.h5', 'r')
    two = _case(name, tmp_path / 'two', batch=2)
    run = mpiexec(2, ['--solver', 'solver.prototxt', '--weights', 'init.caffemodel'], two)
    assert run.returncode == 0, run.stdout
    # 2 -> 1: resume the 2-rank snapshot in one process with the full batch.
    one = _case(name, tmp_path / 'one')
    for f in ('snap_iter_4.caffemodel', 'snap_iter_4.solverstate'):
        shutil.copy(two / f, one / f)
    with _inside(one):
        solver = caffe.get_solver('solver.prototxt')
        solver.restore('snap_iter_4.solverstate')
        assert solver.iter == 4
        solver.step(4)
        resumed = _all_params(solver.net)
    problems = _problems_against_caffe(resumed, ref['param_iter_8'], '2 ranks -> 1 process')
    # 1 -> 2: Caffe's own one-process snapshot, resumed by 2 ranks of half the batch.
    again = _case(name, tmp_path / 'again', batch=2)
    run = mpiexec(2, ['--solver', 'solver.prototxt', '--snapshot', 'snap_iter_4.solverstate'], again)
    assert run.returncode == 0, run.stdout
    problems += _problems_against_caffe(_params(again, 'snap_iter_8.caffemodel'), ref['param_iter_8'],
                                        '1 process -> 2 ranks')
    assert not problems, '\n'.join(problems)


def test_rank_0_tests_while_the_others_wait_past_the_watchdog(tmp_path):
    """Only rank 0 runs the test net; the others wait for it without the
    watchdog's timeout (here 1 s, shorter than the test)."""
    work = _case('sgd_step', tmp_path, batch=2,
                 solver_extra='test_net: "net.prototxt"\ntest_iter: 3000\ntest_interval: 4\n'
                              'test_initialization: false')
    run = mpiexec(2, ['--solver', 'solver.prototxt', '--weights', 'init.caffemodel'], work,
                  MINICAFFE_COMM_TIMEOUT='1')
    assert run.returncode == 0, run.stdout
    assert run.stdout.count('Testing net (#0)') == 2, run.stdout       # iterations 4 and 8
    assert re.search(r'Test net output #0: loss = [\d.]+', run.stdout)
    # testing changes nothing: still Caffe's weights
    ref = h5py.File(SOLVERS / 'sgd_step' / 'ref.h5', 'r')
    problems = _problems_against_caffe(_params(work, 'snap_iter_8.caffemodel'), ref['param_iter_8'], 'iter 8')
    assert not problems, '\n'.join(problems)


# ---------------------------------------------------------------- long runs, signals, failures
class _Job(object):
    """mpiexec running a long training, its merged output collected line by line."""

    def __init__(self, work, n=2, extra_args=(), **env):
        self.work = work
        self.proc = subprocess.Popen([MPIEXEC, '-n', str(n)] + _train_cmd('--solver', 'solver.prototxt',
                                                                         *extra_args),
                                     cwd=str(work), env=_env(**env), stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.lines = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.pids = {}

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self):
        return ''.join(self.lines)

    def wait_for(self, pattern, timeout=60, count=1):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if len(re.findall(pattern, self.output)) >= count:
                return
            if self.proc.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.05)
        raise AssertionError('no %r in the output:\n%s' % (pattern, self.output))

    def rank_pids(self):
        self.wait_for(r'MPI rank 1: pid \d+')
        return {int(r): int(p) for r, p in re.findall(r'MPI rank (\d+): pid (\d+)', self.output)}

    def finish(self, timeout):
        t = time.time()
        try:
            rc = self.proc.wait(timeout=timeout)
        finally:
            self.cleanup()
        self._reader.join(5)
        return rc, time.time() - t

    def cleanup(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for pid in self.pids.values():      # the rank processes this test started
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def _long_case(tmp_path):
    """sgd_step, batch 2 per rank, training "forever" with no periodic snapshot."""
    work = _case('sgd_step', tmp_path, batch=2)
    solver = work / 'solver.prototxt'
    text = solver.read_text()
    for field, value in (('max_iter', 1000000), ('snapshot', 0), ('display', 1000)):
        text, n = re.subn(r'(?m)^%s: \d+$' % field, '%s: %d' % (field, value), text)
        assert n == 1, field
    solver.write_text(text)
    for f in work.glob('snap_iter_*'):      # Caffe's snapshot: only ours are counted
        f.unlink()
    return work


def test_sighup_on_one_rank_snapshots_and_sigint_stops_all_ranks(tmp_path):
    work = _long_case(tmp_path)
    job = _Job(work)
    try:
        job.pids = job.rank_pids()
        job.wait_for('Starting Optimization')
        time.sleep(0.5)
        os.kill(job.pids[1], signal.SIGHUP)         # one rank only: all must take the action
        job.wait_for(r'Snapshotting solver state')
        os.kill(job.proc.pid, signal.SIGINT)        # mpiexec forwards Ctrl-C to every rank
        rc, _ = job.finish(60)
    finally:
        job.cleanup()
    assert rc == 0, job.output
    states = sorted(p.name for p in work.glob('snap_iter_*.solverstate'))
    # one snapshot for SIGHUP, one at the stop (snapshot_after_train), written by rank 0 only
    assert len(states) == 2, (states, job.output)
    assert job.output.count('Snapshotting solver state') == 2, job.output
    assert 'Optimization stopped early' in job.output


def test_sigint_under_mpiexec_one_snapshot_exit_0(tmp_path):
    work = _long_case(tmp_path)
    job = _Job(work)
    try:
        job.pids = job.rank_pids()
        job.wait_for('Starting Optimization')
        time.sleep(0.5)
        os.kill(job.proc.pid, signal.SIGINT)
        rc, _ = job.finish(60)
    finally:
        job.cleanup()
    assert rc == 0, job.output
    states = list(work.glob('snap_iter_*.solverstate'))
    assert len(states) == 1, job.output
    # the snapshot holds the iteration the ranks stopped at, and one process resumes it
    it = int(re.search(r'_iter_(\d+)', states[0].name).group(1))
    assert it > 0 and 'Snapshotting solver state to binary proto file %s' % states[0].name in job.output
    with _inside(work):
        solver = caffe.get_solver('solver.prototxt')
        solver.restore(states[0].name)
        assert solver.iter == it


def test_killed_rank_ends_the_job_naming_it(tmp_path):
    work = _long_case(tmp_path)
    job = _Job(work)
    try:
        job.pids = job.rank_pids()
        job.wait_for('Starting Optimization')
        time.sleep(0.5)
        os.kill(job.pids[1], signal.SIGKILL)
        rc, took = job.finish(30)
    finally:
        job.cleanup()
    assert rc != 0 and took < 30, job.output
    # MPICH's launcher reports the dead process by PID; rank 0 logged which rank that is.
    assert 'MPI rank 1: pid %d' % job.pids[1] in job.output
    assert str(job.pids[1]) in job.output.split('Starting Optimization', 1)[1], job.output


def test_stopped_rank_is_named_by_the_watchdog(tmp_path):
    work = _long_case(tmp_path)
    job = _Job(work, MINICAFFE_COMM_TIMEOUT='3')
    try:
        job.pids = job.rank_pids()
        job.wait_for('Starting Optimization')
        time.sleep(0.5)
        os.kill(job.pids[1], signal.SIGSTOP)        # alive but silent: MPI cannot notice
        rc, took = job.finish(30)
    finally:
        job.cleanup()
    assert rc != 0 and took < 30, job.output
    assert re.search(r'rank 0: all-reduce #\d+ waited \d+ s .*rank 1 never reached it', job.output), job.output


@pytest.mark.parametrize('change,what', [
    (('net.prototxt', 'batch_size: 2', 'batch_size: 3'), 'data batch'),
    (('net.prototxt', 'num_output: 5', 'num_output: 6'), 'net (learnable parameter shapes)'),
    (('solver.prototxt', 'type: "SGD"', 'type: "Nesterov"'), 'solver settings'),
])
def test_ranks_that_disagree_stop_with_an_error_naming_the_rank(tmp_path, change, what):
    work = _case('sgd_step', tmp_path, batch=2)
    fname, old, new = change
    text = (work / fname).read_text()
    assert old in text
    (work / ('b_' + fname)).write_text(text.replace(old, new))
    if fname == 'net.prototxt':
        (work / 'b_solver.prototxt').write_text(
            (work / 'solver.prototxt').read_text().replace('net: "net.prototxt"', 'net: "b_net.prototxt"'))
    cmd = ([MPIEXEC, '-n', '1'] + _train_cmd('--solver', 'solver.prototxt') + [':', '-n', '1']
           + _train_cmd('--solver', 'b_solver.prototxt'))
    run = subprocess.run(cmd, cwd=str(work), env=_env(), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, timeout=120)
    assert run.returncode != 0, run.stdout
    assert 'the ranks disagree: rank 1 differs from rank 0 in its %s' % what in run.stdout, run.stdout
    assert 'Traceback' not in run.stdout


def test_an_error_on_one_rank_ends_the_job_naming_the_rank(tmp_path):
    work = _case('sgd_step', tmp_path, batch=2)
    (work / 'b_solver.prototxt').write_text(
        (work / 'solver.prototxt').read_text().replace('net: "net.prototxt"', 'net: "missing.prototxt"'))
    cmd = ([MPIEXEC, '-n', '1'] + _train_cmd('--solver', 'solver.prototxt') + [':', '-n', '1']
           + _train_cmd('--solver', 'b_solver.prototxt'))
    t = time.time()
    run = subprocess.run(cmd, cwd=str(work), env=_env(), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, timeout=120)
    assert run.returncode == 2 and time.time() - t < 30, run.stdout
    assert re.search(r'minicaffe: error: rank 1: b_solver.prototxt: net file "missing.prototxt" does not'
                     r' exist', run.stdout), run.stdout
    assert 'Traceback' not in run.stdout


def test_communicator_collectives_on_three_ranks(tmp_path):
    """MPICommunicator's operations and the small collectives built on them."""
    script = tmp_path / 'collectives.py'
    script.write_text('''
import numpy as np
from minicaffe.parallel.launch import communicator_from_environment
from minicaffe.parallel.data_parallel import gather, broadcast_text, broadcast_seed
c = communicator_from_environment()
assert c is not None and c.size == 3
buf = np.full(5, c.rank + 1, np.float32)
c.allreduce(buf)
assert (buf == 6).all(), buf
h = c.allreduce_async(np.full(3, 2.0, np.float32)); h.wait()
b = np.arange(4, dtype=np.float32) * (c.rank + 1)
c.broadcast(b, root=2)
assert (b == np.arange(4) * 3).all(), b
c.barrier()
g = gather(c, [c.rank, 10 * c.rank])
assert g.tolist() == [[0, 0], [1, 10], [2, 20]], g
t = broadcast_text(c, 'rank zero says h\\u00e9llo' if c.rank == 0 else 'other')
assert t == 'rank zero says h\\u00e9llo', t
s = broadcast_seed(c, 0xDEADBEEF if c.rank == 0 else 7)
assert s == 0xDEADBEEF, s
print('rank %d ok' % c.rank)
''')
    run = subprocess.run([MPIEXEC, '-n', '3', sys.executable, str(script)], env=_env(),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)
    assert run.returncode == 0, run.stdout
    assert sorted(re.findall(r'rank \d ok', run.stdout)) == ['rank 0 ok', 'rank 1 ok', 'rank 2 ok']


def test_bench_scaling_runs(tmp_path):
    """benchmarks/bench_scaling.py end to end on LeNet, 1 and 2 ranks (a smoke
    test: timings here mean nothing)."""
    bench = CONFORMANCE.parent / 'bench'
    if not (bench / 'lenet_b64.prototxt').exists():
        pytest.skip('../shared/bench not found')
    out = tmp_path / 'scaling.json'
    run = subprocess.run([sys.executable, str(ROOT / 'benchmarks' / 'bench_scaling.py'), '--net', 'lenet',
                          '--ranks', '1,2', '--iterations', '1', '--warmup', '1', '--threads-per-rank', '1',
                          '--bench-dir', str(bench), '--json', str(out)],
                         env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert run.returncode == 0, run.stdout
    import json
    rows = json.loads(out.read_text())['rows']
    assert [(r['ranks'], r['layer_wise_reduce']) for r in rows] == [(1, False), (2, True), (2, False)]
    assert all(r['iter_per_s'] > 0 and r['batch_per_rank'] == 64 for r in rows)
    assert rows[1]['samples_per_s'] == pytest.approx(2 * 64 * rows[1]['iter_per_s'])
    assert rows[1]['mb_per_iter'] == pytest.approx(4 * 431080 / 1e6, rel=1e-3)    # LeNet's params
    assert '| lenet | 2 | true |' in run.stdout
