"""GPU ranks: ``minicaffe train --gpu 0,1,2,3`` / ``--gpu all`` starts one
process per GPU on this node, NCCL between them, as upstream's python/train.py
does (multiprocessing with the 'spawn' start method: CUDA cannot be forked);
under mpiexec with ``--gpu`` each rank takes a GPU of its node and NCCL joins
them across nodes.  Training itself is the MPI path's (launch.join, launch.start,
DataParallel) with the NCCL communicator in place of MPI's.

The parent makes the NCCL unique id, starts rank r on GPU ``gpus[r]`` and
then only supervises:

- a rank that exits non-zero (an error, a crash, a kill) ends the job: the
  parent names it, stops the other ranks (which would otherwise wait for it
  in their next all-reduce) and exits with that rank's status;
- SIGINT / SIGHUP / SIGTERM sent to the parent are passed on to every rank
  once (the ranks run in their own process group, so a Ctrl-C on the
  terminal reaches them through the parent only); the ranks agree on the
  action (data_parallel.DataParallel.agree_action), so one snapshot is
  written and all exit 0;
- a rank whose parent disappears ends itself.
"""
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
import time

log = logging.getLogger('minicaffe')

FORWARDED_SIGNALS = ('SIGINT', 'SIGHUP', 'SIGTERM')
GRACE_SECONDS = 10.0        # after a rank failed, how long the others get to end on SIGTERM


def should_spawn(args, gpus):
    """Several GPUs named in a plain process (not a spawned rank, not under mpiexec)."""
    from .mpi_comm import launched_by_mpiexec
    return getattr(args, 'gpu_rank', None) is None and len(gpus) > 1 and not launched_by_mpiexec()


def join_gpu_ranks(args, gpus):
    """In a rank of a multi-GPU job: take this rank's GPU and return its NCCL
    communicator (launch.join then sets the solver count/rank); None outside
    such a job.

    A rank spawned by :func:`spawn_gpu_ranks` has its GPU, rank and the unique
    id in ``args.gpu_rank``.  Under mpiexec each rank takes the GPU of its rank
    on its node (``gpus[local rank]``, so ``--gpu all`` on nodes of 8 GPUs runs
    8 ranks per node) and rank 0's unique id is broadcast over MPI: NCCL then
    reduces across nodes too."""
    from .. import mode
    from ..errors import MinicaffeError
    from .mpi_comm import launched_by_mpiexec
    from .nccl_comm import NCCLCommunicator
    if getattr(args, 'gpu_rank', None) is not None:
        gpus, rank, uid = args.gpu_rank
        size, device, mpi = len(gpus), gpus[rank], None
    elif launched_by_mpiexec():
        from .launch import communicator_from_environment
        mpi = communicator_from_environment()
        size, rank = mpi.size, mpi.rank
        local = _local_rank(mpi)
        if local >= len(gpus):
            raise MinicaffeError('rank %d is rank %d on its node, but --gpu %s names %d device(s):'
                                 ' start at most %d ranks per node' % (rank, local, args.gpu, len(gpus),
                                                                       len(gpus)))
        device = gpus[local]
    else:
        return None
    mode.set_device(device)
    mode.set_mode_gpu()
    log.info('Use GPU with device ID %d (rank %d of %d, NCCL)', device, rank, size)
    if mpi is not None:
        uid = _broadcast_uid(mpi)
    # the solver count/rank are set by launch.join, as for MPI ranks
    return NCCLCommunicator(size, uid, rank)


def _local_rank(mpi):
    """This rank's index among the ranks on its node: from the launcher's
    environment, else from MPI's shared-memory split."""
    from .nccl_comm import local_rank_from_env
    local = local_rank_from_env()
    if local is None:
        node = mpi.comm.Split_type(mpi.MPI.COMM_TYPE_SHARED)
        local = node.Get_rank()
        node.Free()
    return local


def _broadcast_uid(mpi):
    """Rank 0's new NCCL unique id on every rank, through the MPI communicator
    (128 bytes travel as 32 float32 values; MPI copies them bit for bit)."""
    import numpy as np
    from .nccl_comm import UID_BYTES, new_uid
    buf = np.zeros(UID_BYTES // 4, np.float32)
    if mpi.rank == 0:
        buf[:] = np.frombuffer(new_uid(), np.float32)
    mpi.broadcast(buf, 0)
    return buf.tobytes()


def spawn_gpu_ranks(args, gpus, run_command):
    """Run ``minicaffe train`` (``args``) as ``len(gpus)`` ranks; returns the
    job's exit status.  ``run_command(args, verbosity, log_file, prefix=)`` is
    the command line's runner (minicaffe.commands.runner.run_reporting_errors),
    passed in because the engine never imports the commands; it must be a
    module-level function (spawned processes receive it pickled)."""
    from .nccl_comm import new_uid
    uid = new_uid()
    log.info('Using GPUs %s: %d ranks, NCCL (one process per GPU)', ', '.join(map(str, gpus)), len(gpus))
    ctx = multiprocessing.get_context('spawn')
    procs = []
    with _ForwardSignals(procs):
        for rank in range(len(gpus)):
            p = ctx.Process(target=rank_main, args=(args, list(gpus), rank, uid, run_command),
                            name='minicaffe-rank%d' % rank, daemon=True)
            p.start()
            procs.append(p)
        return _supervise(procs, gpus)


def _supervise(procs, gpus):
    running = {p.sentinel: (rank, p) for rank, p in enumerate(procs)}
    while running:
        ready = multiprocessing.connection.wait(list(running), timeout=1.0)
        for sentinel in ready:
            rank, p = running.pop(sentinel)
            p.join()
            code = p.exitcode
            if code != 0:
                how = ('was killed by signal %d' % -code) if code < 0 else 'exited with status %d' % code
                log.error('rank %d (GPU %d) %s; stopping the other %d rank(s)',
                          rank, gpus[rank], how, len(running))
                sys.stderr.write('minicaffe: error: rank %d (GPU %d) %s\n' % (rank, gpus[rank], how))
                _stop([p for _, p in running.values()])
                return code if code > 0 else 1
    return 0


def _stop(procs):
    for p in procs:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + GRACE_SECONDS
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join()


class _ForwardSignals(object):
    """While the ranks run: the parent passes SIGINT/SIGHUP/SIGTERM on to them."""

    def __init__(self, procs):
        self.procs = procs
        self.previous = {}

    def _forward(self, signum, frame):
        for p in self.procs:
            if p.pid is not None and p.is_alive():
                try:
                    os.kill(p.pid, signum)
                except ProcessLookupError:
                    pass

    def __enter__(self):
        for name in FORWARDED_SIGNALS:
            sig = getattr(signal, name, None)
            if sig is not None:
                self.previous[sig] = signal.signal(sig, self._forward)
        return self

    def __exit__(self, *exc):
        for sig, prev in self.previous.items():
            signal.signal(sig, prev)


def _watch_parent(parent_pid):
    """End this rank when the process that started it is gone."""
    def watch():
        while True:
            time.sleep(1.0)
            if os.getppid() != parent_pid:
                os._exit(1)
    threading.Thread(target=watch, name='parent-watch', daemon=True).start()


def rank_main(args, gpus, rank, uid, run_command):
    """One rank (a spawned process): ``minicaffe train`` on GPU ``gpus[rank]``,
    run by ``run_command`` (see :func:`spawn_gpu_ranks`)."""
    try:
        os.setpgid(0, 0)        # a terminal's Ctrl-C reaches us through the parent only
    except OSError:
        pass
    _watch_parent(os.getppid())
    args.gpu_rank = (list(gpus), rank, uid)
    # Rank 0 logs as the command would; the others only warnings and errors.
    sys.exit(run_command(args, args.verbose - args.quiet if rank == 0 else -1,
                         args.log_file if rank == 0 else None,
                         prefix='rank %d (GPU %d): ' % (rank, gpus[rank])))
