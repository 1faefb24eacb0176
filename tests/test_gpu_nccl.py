"""NCCL on the GPU path: one NCCL rank must train exactly as the plain GPU path
(the stand-in in CI, the device under tools/gpu_check.sh), and on a machine
with 2 or 4 GPUs ``minicaffe train --gpu all`` must reproduce Caffe's
one-process run of the whole batch."""
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

import minicaffe as caffe
from minicaffe.parallel import state

from conformance import CONFORMANCE, copy_case, mismatch
from gpu_support import REAL_GPU, gpu_mode

ROOT = Path(__file__).resolve().parents[1]
SOLVERS = CONFORMANCE / 'solvers'


@pytest.fixture(autouse=True)
def _one_process():
    state.reset()
    yield
    state.reset()


def _train(case, work, with_nccl):
    os.chdir(str(work))
    solver = caffe.get_solver('solver.prototxt')
    solver.net.copy_from('init.caffemodel')
    if with_nccl:
        caffe.set_solver_count(1)
        caffe.set_solver_rank(0)
        nccl = caffe.NCCL(solver, caffe.NCCL.new_uid())
        nccl.bcast()
        solver.add_callback(nccl)
        if solver.param.layer_wise_reduce:
            solver.net.after_backward(nccl)
    solver.step(8)
    return {name: [b.data.copy() for b in blobs] for name, blobs in solver.net.params.items()}


@pytest.mark.parametrize('case', ['sgd_step', 'sgd_itersize_clip_sigmoid', 'adam_poly'])
def test_one_nccl_rank_equals_the_plain_gpu_path(case, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    plain_dir = copy_case(SOLVERS / case, tmp_path / 'plain')
    nccl_dir = copy_case(SOLVERS / case, tmp_path / 'nccl')
    with gpu_mode():
        plain = _train(case, plain_dir, with_nccl=False)
        nccl = _train(case, nccl_dir, with_nccl=True)
    for name in plain:
        for a, b in zip(plain[name], nccl[name]):
            np.testing.assert_array_equal(a, b, err_msg=name)
    ref = h5py.File(plain_dir / 'ref.h5', 'r')['param_iter_8']
    problems = ['%s[%s]: %s' % (layer, i, m) for layer in ref for i in ref[layer]
                for m in [mismatch(nccl[layer][int(i)], ref[layer][i][()])] if m]
    assert not problems, problems


def _device_count():
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount()
    except Exception:
        return 0


@pytest.mark.gpu
@pytest.mark.skipif(not REAL_GPU, reason='needs CUDA devices (MINICAFFE_TEST_MODE=gpu)')
def test_every_gpu_of_the_machine_trains_like_caffe_with_the_whole_batch(tmp_path):
    n = _device_count()
    if n not in (2, 4):
        pytest.skip('needs 2 or 4 GPUs to split the batch of 4 (this machine has %d)' % n)
    work = copy_case(SOLVERS / 'sgd_step', tmp_path)
    net = (work / 'net.prototxt').read_text()
    (work / 'net.prototxt').write_text(net.replace('batch_size: 4', 'batch_size: %d' % (4 // n)))
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', ''))
    r = subprocess.run([sys.executable, '-m', 'minicaffe', 'train', '--solver', 'solver.prototxt',
                        '--weights', 'init.caffemodel', '--gpu', 'all'], cwd=str(work), env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'Using %d ranks (NCCL)' % n in r.stderr
    os.chdir(str(work))
    trained = caffe.Net('net.prototxt', caffe.TEST, weights='snap_iter_8.caffemodel')
    ref = h5py.File('ref.h5', 'r')['param_iter_8']
    problems = ['%s[%s]: %s' % (layer, i, m) for layer in ref for i in ref[layer]
                for m in [mismatch(trained.params[layer][int(i)].data, ref[layer][i][()])] if m]
    assert not problems, problems
