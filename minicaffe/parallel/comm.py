"""The communicator interface data-parallel training is written against.

Every engine (MPI on host buffers, NCCL on device buffers) implements these
five operations; nothing above this module knows which one runs.  Buffers are
flat, contiguous float32 arrays of the engine's kind (NumPy for MPI, CuPy for
NCCL), reduced in place, so that one call moves a whole layer's (or bucket's)
gradients rather than one call per blob.
"""


class CommunicatorError(RuntimeError):
    """A collective failed or timed out (a rank died, ranks disagree)."""


class Communicator(object):
    """``rank`` (0-based) of ``size`` ranks; rank 0 is the root solver."""

    rank = 0
    size = 1
    engine = 'none'             # 'mpi', 'nccl', 'local'
    # Buffers live on the device (CuPy arrays: NCCL) or on the host (NumPy: MPI).
    device_buffers = False
    # Seconds a collective may wait for the slowest rank before the engine
    # aborts the job naming the ranks that never arrived; None waits forever.
    # Engines without a way to time out (NCCL) may ignore it.
    timeout = None

    def broadcast(self, buf, root=0):
        """Overwrite ``buf`` on every rank with the root's values (in place)."""
        raise NotImplementedError

    def allreduce(self, buf):
        """Sum ``buf`` over all ranks, in place; every rank gets the sum."""
        raise NotImplementedError

    def barrier(self):
        raise NotImplementedError

    def allreduce_async(self, buf):
        """Start summing ``buf`` in place; returns a handle whose ``wait()``
        returns once every rank has the sum (and ``test()`` says whether it is
        done, driving the engine's progress).  Engines that cannot overlap run
        the all-reduce now and hand back a finished handle (this default)."""
        self.allreduce(buf)
        return DoneHandle()

    def abort(self, message, errorcode=1):
        """End the whole job (every rank) after logging ``message``; never returns."""
        raise NotImplementedError

    @property
    def is_root(self):
        return self.rank == 0


class DoneHandle(object):
    """An :meth:`Communicator.allreduce_async` that has already finished."""

    def test(self):
        return True

    def wait(self):
        pass


class LocalCommunicator(Communicator):
    """One rank: every collective is the identity (the single-process path)."""

    engine = 'local'

    def broadcast(self, buf, root=0):
        return buf

    def allreduce(self, buf):
        return buf

    def barrier(self):
        pass

    def abort(self, message, errorcode=1):
        raise CommunicatorError(message)
