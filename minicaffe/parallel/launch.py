"""Joining a data-parallel job and starting data-parallel training on a solver:
what ``minicaffe train`` does under ``mpiexec`` (and what the NCCL engine's
launcher reuses with its own communicator).

    comm = communicator_from_environment()      # None in a plain run
    if comm: join(comm)                         # before the solver is built
    solver = Solver(...); solver.restore(...)   # every rank, same files
    if comm: dp = start(solver, comm)           # agree, broadcast, install hooks
"""
import logging

from ..errors import MinicaffeError
from . import state

log = logging.getLogger('minicaffe')


def communicator_from_environment():
    """An MPICommunicator when mpiexec started this process with more than one
    rank, else None (and mpi4py is not imported)."""
    from .mpi_comm import launched_by_mpiexec, timeout_from_environment
    if not launched_by_mpiexec():
        return None
    timeout = timeout_from_environment()
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        raise MinicaffeError('started by mpiexec with several ranks, but mpi4py is not installed;'
                             " install the MPI extra: pip install -e '.[mpi]' (mpi4py and mpich)"
                             ) from None
    from .mpi_comm import MPICommunicator
    return MPICommunicator(timeout=timeout)


def join(comm, seed=None):
    """Make this process rank ``comm.rank`` of ``comm.size`` solvers: the
    process-wide solver count/rank (data layers shard by them), one shared
    random seed (so shuffles agree; returned), quiet logging on the other
    ranks, and the cores of a node shared among its ranks."""
    from ..rng import set_random_seed
    from .data_parallel import broadcast_seed
    state.set_solver_count(comm.size)
    state.set_solver_rank(comm.rank)
    state.set_multiprocess(True)
    if comm.rank != 0:
        # Caffe's LOG_IF(INFO, root_solver()): rank 0 speaks; the others warn and fail.
        logger = logging.getLogger('minicaffe')
        logger.setLevel(max(logger.level, logging.WARNING))
    _share_cores(comm)
    shared = broadcast_seed(comm, seed)
    set_random_seed(shared)         # data layers draw their shuffle seeds from it at setup
    log.info('The ranks share random seed %d (the solver\'s random_seed, if set, replaces it)', shared)
    describe = getattr(comm, 'describe_ranks', None)
    if describe is not None:
        for line in describe():
            log.info('MPI %s', line)
    return shared


def _share_cores(comm):
    """Ranks on one node split its cores: minicaffe's worker threads per rank =
    cores / ranks on the node, unless --threads or MINICAFFE_NUM_THREADS chose
    them (minicaffe.threads.share_cores; the BLAS stays at one thread per worker)."""
    from ..threads import share_cores
    share_cores(getattr(comm, 'ranks_on_this_node', lambda: 1)())


def batch_size(net):
    """The train net's batch: the leading dimension of its first data layer's first top."""
    for lid in range(len(net.layers)):
        if not net.bottom_ids[lid] and net.top_ids[lid]:
            shape = net._blob_list[net.top_ids[lid][0]].shape
            if shape:
                return shape[0]
    return None


def start(solver, comm):
    """Check that the ranks agree, give every rank rank 0's parameters and
    history, and install the data-parallel hooks.  Returns the DataParallel."""
    from .data_parallel import DataParallel, check_agreement, untimed
    from ..rng import rng, set_random_seed
    # The nets are built: their data layers drew their seeds from the shared
    # stream, so every rank shuffles alike.  From here on each rank draws its
    # own numbers (Dropout masks, DummyData), as Caffe seeds each GPU's solver
    # with random_seed + device: ranks with identical masks would add nothing.
    seeds = rng().integers(0, 2 ** 31 - 1, size=comm.size)
    set_random_seed(int(seeds[comm.rank]))
    # Untimed: ranks arrive when their nets are built (rank 0 builds the test
    # nets too; a large HDF5 source loads whole); a rank that fails aborts the job.
    with untimed(comm):
        check_agreement(comm, solver)
        dp = DataParallel(solver, comm)
        dp.broadcast_params()
    dp.install()
    b = batch_size(solver.net)
    iters = max(1, solver.param.iter_size)
    if b is not None:
        total = comm.size * b * iters
        per = '%d x %d' % (comm.size, b) + (' x %d (iter_size)' % iters if iters > 1 else '')
        log.info('Using %d ranks (%s); effective batch %s = %d', comm.size, comm.engine.upper(),
                 per, total)
    else:
        log.info('Using %d ranks (%s)', comm.size, comm.engine.upper())
    log.info('Gradients: %d bucket(s), reduced %s', len(dp.buckets),
             'layer by layer during backward (layer_wise_reduce)' if dp.layer_wise
             else 'after backward (layer_wise_reduce: false)')
    return dp
