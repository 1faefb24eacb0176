"""pycaffe's ``caffe.NCCL`` (python/caffe/_caffe.cpp over parallel.cpp's NCCL
class): data-parallel training of one solver per GPU and process, as
upstream's python/train.py drives it::

    caffe.set_device(gpus[rank]); caffe.set_mode_gpu()
    caffe.set_solver_count(len(gpus)); caffe.set_solver_rank(rank)
    caffe.set_multiprocess(True)
    solver = caffe.SGDSolver(proto)
    nccl = caffe.NCCL(solver, uid)          # uid = caffe.NCCL.new_uid(), made once
    nccl.bcast()                            # rank 0's weights everywhere
    solver.add_callback(nccl)               # on_start / on_gradients_ready
    if solver.param.layer_wise_reduce:
        solver.net.after_backward(nccl)     # run(layer): reduce as backward goes
    solver.step(solver.param.max_iter)

All of the training semantics (buckets, 1/N scaling, agreement) are the
engine-agnostic :class:`~minicaffe.parallel.data_parallel.DataParallel`; this
class only joins the NCCL communicator of ``solver_count()`` ranks named by
``uid`` as rank ``solver_rank()`` on the current device.
"""
from . import state
from .data_parallel import DataParallel
from .nccl_comm import FROM_ENVIRONMENT, NCCLCommunicator, new_uid as _new_uid


class NCCL(DataParallel):
    """``caffe.NCCL(solver, uid)``: ``bcast()``, ``on_start()``,
    ``on_gradients_ready()``, ``run(layer)``; ``NCCL.new_uid()`` (bytes)."""

    def __init__(self, solver, uid, timeout=FROM_ENVIRONMENT):
        state.set_multiprocess(True)            # as Caffe's NCCL(solver, uid) constructor
        comm = NCCLCommunicator(state.solver_count(), uid, state.solver_rank(), timeout=timeout)
        super(NCCL, self).__init__(solver, comm)

    @staticmethod
    def new_uid():
        return _new_uid()

    def bcast(self):
        """Rank 0's parameters (and solver history) on every rank (Caffe's Broadcast)."""
        self.broadcast_params()
