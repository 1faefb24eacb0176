"""The data-parallel core without MPI: Net's forward/backward hooks, gradient
buckets (shared parameters go with their lowest layer), DataParallel's
reduction schedule (through a recording communicator standing in for N
identical ranks), the launcher detection, and that a plain run never imports
mpi4py."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import minicaffe as caffe
from minicaffe.errors import MinicaffeError
from minicaffe.parallel import state
from minicaffe.parallel.comm import Communicator, DoneHandle
from minicaffe.parallel.data_parallel import DataParallel, describe, gradient_buckets
from minicaffe.parallel.mpi_comm import launched_by_mpiexec, timeout_from_environment

ROOT = Path(__file__).resolve().parents[1]

NET = '''
name: "tiny"
layer { name: "in" type: "Input" top: "x" top: "y"
  input_param { shape { dim: 4 dim: 3 } shape { dim: 4 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "x" top: "h"
  param { name: "shared_w" } inner_product_param { num_output: 3 bias_term: false
  weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "relu" type: "ReLU" bottom: "h" top: "h" }
layer { name: "ip2" type: "InnerProduct" bottom: "h" top: "h2"
  param { name: "shared_w" } inner_product_param { num_output: 3 bias_term: false } }
layer { name: "ip3" type: "InnerProduct" bottom: "h2" top: "z"
  inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "z" bottom: "y" top: "loss" }
'''


@pytest.fixture
def net_file(tmp_path):
    p = tmp_path / 'net.prototxt'
    p.write_text(NET)
    return p


def _solver(tmp_path, net_file, extra=''):
    s = tmp_path / 'solver.prototxt'
    s.write_text('net: "%s"\nbase_lr: 0.1\nmomentum: 0.9\nlr_policy: "fixed"\nmax_iter: 10\n'
                 'random_seed: 3\n%s\n' % (net_file, extra))
    solver = caffe.get_solver(str(s))
    rng = np.random.default_rng(0)
    solver.net.blobs['x'].data[...] = rng.standard_normal((4, 3))
    solver.net.blobs['y'].data[...] = [0, 1, 1, 0]
    return solver


class Recorder(object):
    def __init__(self, net, log):
        self.net, self.log, self.kind = net, log, None

    def run(self, layer_id):
        self.log.append((self.kind, self.net.layers[layer_id].name))


def test_net_hooks_run_around_every_layer_in_order(net_file):
    net = caffe.Net(str(net_file), caffe.TRAIN)
    log = []
    for kind in ('before_forward', 'after_forward', 'before_backward', 'after_backward'):
        r = Recorder(net, log)
        r.kind = kind
        getattr(net, kind)(r)
    net.forward()
    names = [l.name for l in net.layers]
    fwd = [(k, n) for n in names for k in ('before_forward', 'after_forward')]
    assert log == fwd
    del log[:]
    net.backward()
    bwd = [(k, n) for n in reversed(names) for k in ('before_backward', 'after_backward')]
    assert log == bwd      # every layer, also those that need no backward (as Caffe)


def test_net_hooks_may_be_callables_as_in_pycaffe(net_file):
    net = caffe.Net(str(net_file), caffe.TRAIN)
    seen = []
    net.before_forward(lambda layer: seen.append(('f', layer)))
    net.after_backward(lambda layer: seen.append(('b', layer)))
    net.forward()
    net.backward()
    n = len(net.layers)
    assert seen == [('f', i) for i in range(n)] + [('b', i) for i in reversed(range(n))]
    with pytest.raises(TypeError, match='net hook'):
        net.after_forward(42)


def test_gradient_buckets_follow_backward_and_sharing(net_file):
    net = caffe.Net(str(net_file), caffe.TRAIN)
    names = [l.name for l in net.layers]
    # learnable: 0 = shared_w (ip1 owns, ip2 shares), 1 = ip3 weight, 2 = ip3 bias
    buckets = [(names[lid], idx) for lid, idx in gradient_buckets(net, True)]
    assert buckets == [('ip3', [1, 2]), ('ip1', [0])]      # shared_w is complete after ip1
    assert gradient_buckets(net, False) == [(0, [0, 1, 2])]


class TwinRanks(Communicator):
    """N ranks that hold identical data: the sum is N times each buffer.  Records
    every all-reduce (its size and the layers whose backward had run by then)."""

    engine = 'test'

    def __init__(self, size, net):
        self.size, self.rank, self.net = size, 0, net
        self.calls = []
        self.progress = Recorder(net, [])
        net.after_backward(self.progress)

    def broadcast(self, buf, root=0):
        return buf

    def allreduce(self, buf):
        self.calls.append((buf.size, len(self.progress.log)))
        buf *= np.float32(self.size)
        return buf

    def allreduce_async(self, buf):
        self.allreduce(buf)
        return DoneHandle()

    def barrier(self):
        pass


@pytest.mark.parametrize('layer_wise', [True, False])
@pytest.mark.parametrize('iter_size', [1, 3])
def test_identical_ranks_train_as_one_process(tmp_path, net_file, layer_wise, iter_size):
    extra = 'iter_size: %d\nlayer_wise_reduce: %s' % (iter_size, str(layer_wise).lower())
    alone = _solver(tmp_path, net_file, extra)
    alone.step(3)
    solver = _solver(tmp_path, net_file, extra)
    comm = TwinRanks(4, solver.net)         # hooked first: it sees the layer before the DP does
    dp = DataParallel(solver, comm).install()
    solver.step(3)
    for a, b in zip(alone.net.learnable_params, solver.net.learnable_params):
        np.testing.assert_allclose(b.data, a.data, rtol=1e-6, atol=1e-7)
    # one all-reduce per bucket per iteration, in the last backward pass only
    per_iter = [b.count for b in dp.buckets]
    assert [n for n, _ in comm.calls] == per_iter * 3
    n_layers = len(solver.net.layers)
    for it in range(3):
        done = [seen for _, seen in comm.calls[it * len(per_iter):(it + 1) * len(per_iter)]]
        if layer_wise:
            # ip3's bucket right after ip3's backward of the last pass, ip1's after ip1's
            start = (it * iter_size + iter_size - 1) * n_layers
            assert done == [start + 2, start + 5]    # (loss, ip3) | ip2, relu, ip1
        else:
            assert done == [(it + 1) * iter_size * n_layers]
    assert dp.summary()['iterations'] == 3


def test_describe_names_params_batch_solver_and_iteration(tmp_path, net_file):
    d = describe(_solver(tmp_path, net_file))
    assert d['net (learnable parameter shapes)'] == 'ip1[0] 3x3, ip3[0] 2x3, ip3[1] 2'
    assert d['data batch (top shapes of the data layers)'] == 'x 4x3, y 4'
    assert 'type=SGD' in d['solver settings'] and d['start iteration'] == '0'


def test_launcher_detection_and_timeout():
    assert not launched_by_mpiexec({})
    assert not launched_by_mpiexec({'PMI_SIZE': '1'})
    assert launched_by_mpiexec({'PMI_SIZE': '2', 'PMI_RANK': '0'})
    assert launched_by_mpiexec({'OMPI_COMM_WORLD_SIZE': '8'})
    assert timeout_from_environment({}) == 120
    assert timeout_from_environment({'MINICAFFE_COMM_TIMEOUT': '2.5'}) == 2.5
    assert timeout_from_environment({'MINICAFFE_COMM_TIMEOUT': '0'}) is None
    assert timeout_from_environment({'MINICAFFE_COMM_TIMEOUT': 'none'}) is None
    with pytest.raises(MinicaffeError, match='MINICAFFE_COMM_TIMEOUT'):
        timeout_from_environment({'MINICAFFE_COMM_TIMEOUT': 'soon'})


def test_plain_training_does_not_import_mpi4py(tmp_path, net_file):
    data = tmp_path / 'd.h5'
    import h5py
    with h5py.File(data, 'w') as f:
        f['x'] = np.ones((4, 3), np.float32)
        f['y'] = np.zeros(4, np.float32)
    (tmp_path / 'list.txt').write_text(str(data) + '\n')
    net = NET.replace('type: "Input" top: "x" top: "y"\n  input_param { shape { dim: 4 dim: 3 } shape { dim: 4 } }',
                      'type: "HDF5Data" top: "x" top: "y"\n  hdf5_data_param { source: "%s" batch_size: 2 }'
                      % (tmp_path / 'list.txt'))
    (tmp_path / 'h.prototxt').write_text(net)
    (tmp_path / 's.prototxt').write_text('net: "%s"\nbase_lr: 0.1\nlr_policy: "fixed"\nmax_iter: 2\n'
                                         'snapshot_after_train: false\n' % (tmp_path / 'h.prototxt'))
    code = ('import sys; from minicaffe.commands.cli import main; rc = main(["-q", "train", "--solver", %r,'
            ' "--metrics", "none"]); print("mpi4py" in sys.modules, rc)' % str(tmp_path / 's.prototxt'))
    env = {k: v for k, v in os.environ.items() if not k.startswith(('PMI_', 'OMPI_', 'PMIX_'))}
    env['PYTHONPATH'] = str(ROOT)
    out = subprocess.run([sys.executable, '-c', code], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == 'False 0', out.stdout


def test_solver_on_a_non_root_rank_neither_tests_nor_snapshots(tmp_path, net_file):
    state.set_solver_count(2)
    state.set_solver_rank(1)
    try:
        solver = _solver(tmp_path, net_file, 'test_net: "%s"\ntest_iter: 1\ntest_interval: 1\n'
                         'snapshot: 1\nsnapshot_prefix: "%s/snap"' % (net_file, tmp_path))
        assert solver.test_nets == []
        solver.step(2)
        assert not list(tmp_path.glob('snap_iter_*'))
    finally:
        state.reset()


class TwinDeviceRanks(TwinRanks):
    """TwinRanks on device buffers, as the NCCL engine's (CuPy arrays)."""

    device_buffers = True


@pytest.mark.parametrize('layer_wise', [True, False])
def test_identical_ranks_on_device_buffers_train_as_one_process(tmp_path, net_file, layer_wise):
    """The device path (gpu_diff/gpu_data packing, device history broadcast) in
    GPU mode through the CPU stand-in for CuPy the GPU tests use."""
    from gpu_support import gpu_mode
    extra = 'iter_size: 2\nlayer_wise_reduce: %s' % str(layer_wise).lower()
    with gpu_mode() as cp:
        alone = _solver(tmp_path, net_file, extra)
        alone.step(3)
        solver = _solver(tmp_path, net_file, extra)
        comm = TwinDeviceRanks(2, solver.net)
        dp = DataParallel(solver, comm)
        assert all(isinstance(b.buffer, cp.ndarray) for b in dp.buckets)
        dp.broadcast_params()
        dp.install()
        solver.step(3)
        for a, b in zip(alone.net.learnable_params, solver.net.learnable_params):
            np.testing.assert_allclose(cp.asnumpy(b.gpu_data), cp.asnumpy(a.gpu_data), rtol=1e-6, atol=1e-7)
        assert len(comm.calls) == 3 * len(dp.buckets)
