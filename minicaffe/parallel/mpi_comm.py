"""The MPI engine: :class:`MPICommunicator` over mpi4py's COMM_WORLD, host
(NumPy) buffers.

``mpiexec -n 8 minicaffe train --solver S`` runs 8 ranks; :func:`launched_by_mpiexec`
tells from the launcher's environment (MPICH/Intel PMI, Open MPI, MVAPICH,
PMIx) that there is more than one rank, so a plain run never imports mpi4py
(an optional extra: ``pip install -e '.[mpi]'``).

Every collective is the non-blocking MPI call polled until done (Iallreduce,
Ibcast, Ibarrier), which gives a watchdog: a collective that waits longer than
``timeout`` seconds aborts the whole job naming the ranks that never reached
it.  Which ranks those are is learnt on a second communicator: a rank waiting
more than :data:`ANNOUNCE_AFTER_S` tells the others the number of the
collective it waits in; at the deadline the ranks that said nothing are the
silent ones.  (MPICH's launcher already ends the job within a second when a
rank process dies; the watchdog covers a rank that hangs or is stopped, and
launchers that leave the survivors waiting.)
"""
import os
import socket
import sys
import time

import numpy as np

from .comm import Communicator

# Launcher variables holding the number of ranks (MPICH/Intel MPI's PMI, Open MPI,
# MVAPICH, PMIx); their presence with a value > 1 means "started by mpiexec".
SIZE_VARIABLES = ('PMI_SIZE', 'OMPI_COMM_WORLD_SIZE', 'MV2_COMM_WORLD_SIZE', 'PMIX_SIZE')
TIMEOUT_VARIABLE = 'MINICAFFE_COMM_TIMEOUT'
DEFAULT_TIMEOUT_S = 120.0
ANNOUNCE_AFTER_S = 1.0
ABORT_GRACE_S = 0.5
_HEARTBEAT_TAG = 7177


def launched_by_mpiexec(environ=None):
    """True when the launcher's environment says this job has more than one rank."""
    env = os.environ if environ is None else environ
    for name in SIZE_VARIABLES:
        try:
            if int(env.get(name, '1')) > 1:
                return True
        except ValueError:
            continue
    return False


def timeout_from_environment(environ=None):
    """MINICAFFE_COMM_TIMEOUT seconds (0 or 'none': wait forever), default 120."""
    from ..errors import MinicaffeError
    text = (os.environ if environ is None else environ).get(TIMEOUT_VARIABLE, '').strip()
    if not text:
        return DEFAULT_TIMEOUT_S
    if text.lower() == 'none':
        return None
    try:
        value = float(text)
    except ValueError:
        raise MinicaffeError('%s must be a number of seconds (0 or "none": no timeout), got "%s"'
                             % (TIMEOUT_VARIABLE, text)) from None
    return value if value > 0 else None


class _Pending(object):
    """An MPI request polled by the communicator's watchdog."""

    def __init__(self, owner, request, what, seq, buf):
        self.owner, self.request, self.what, self.seq = owner, request, what, seq
        self.buf = buf          # keeps the buffer alive until MPI is done with it
        self.done = False

    def test(self):
        if not self.done:
            self.done = bool(self.request.Test())
        return self.done

    def wait(self):
        if not self.done:
            self.owner._wait(self)


class MPICommunicator(Communicator):
    """Collectives of mpi4py's COMM_WORLD (or ``comm``) on float32 NumPy buffers."""

    engine = 'mpi'
    device_buffers = False

    def __init__(self, comm=None, timeout=DEFAULT_TIMEOUT_S):
        from mpi4py import MPI
        self.MPI = MPI
        self.comm = comm if comm is not None else MPI.COMM_WORLD
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        self.timeout = timeout
        self._signals = self.comm.Dup()     # the watchdog's "I am waiting in #n" messages
        self._seq = 0                       # collectives started so far (the same on every rank)
        self._announcements = {}            # rank -> newest collective it said it waits in
        self._sends = []

    # ------------------------------------------------------------ the five operations
    def broadcast(self, buf, root=0):
        buf = _checked(buf)
        self._wait(self._start(self.comm.Ibcast([buf, self.MPI.FLOAT], root=root),
                               'broadcast', buf))
        return buf

    def allreduce(self, buf):
        handle = self.allreduce_async(buf)
        handle.wait()
        return buf

    def allreduce_async(self, buf):
        buf = _checked(buf)
        return self._start(self.comm.Iallreduce(self.MPI.IN_PLACE, [buf, self.MPI.FLOAT],
                                                op=self.MPI.SUM), 'all-reduce', buf)

    def barrier(self):
        self._wait(self._start(self.comm.Ibarrier(), 'barrier', None))

    def abort(self, message, errorcode=1):
        sys.stderr.write('minicaffe: error: rank %d: %s\n' % (self.rank, message))
        sys.stderr.flush()
        # MPI_Abort makes the launcher kill every rank at once, and output still
        # on its way through the launcher can be lost with them: let it arrive.
        time.sleep(ABORT_GRACE_S)
        self.comm.Abort(errorcode)

    # ------------------------------------------------------------ watchdog
    def _start(self, request, what, buf):
        self._seq += 1
        return _Pending(self, request, what, self._seq, buf)

    def _wait(self, pending):
        start = time.monotonic()
        announced = False
        pause = 0.0
        while not pending.test():
            waited = time.monotonic() - start
            if self.timeout is not None:
                if not announced and waited > ANNOUNCE_AFTER_S:
                    self._announce(pending.seq)
                    announced = True
                if waited > self.timeout:
                    self._abort_silent(pending, waited)
            # MPI moves a large buffer only while it is polled: poll without pause
            # (yielding the core to other runnable processes) for the length of a
            # large all-reduce, then gently (ranks waiting for rank 0's test).
            if waited < 0.5:
                time.sleep(0)
            else:
                pause = min(0.001, pause + 0.0001)
                time.sleep(pause)

    def _announce(self, seq):
        msg = np.array([seq], np.int64)
        self._sends = [(r, b) for r, b in self._sends if not r.Test()]
        for other in range(self.size):
            if other != self.rank:
                req = self._signals.Isend([msg, self.MPI.INT64_T], dest=other, tag=_HEARTBEAT_TAG)
                self._sends.append((req, msg))      # msg stays alive until the send is done
        self._drain()

    def _drain(self):
        status = self.MPI.Status()
        got = np.zeros(1, np.int64)
        while self._signals.Iprobe(source=self.MPI.ANY_SOURCE, tag=_HEARTBEAT_TAG, status=status):
            src = status.Get_source()
            self._signals.Recv([got, self.MPI.INT64_T], source=src, tag=_HEARTBEAT_TAG)
            self._announcements[src] = max(self._announcements.get(src, 0), int(got[0]))

    def silent_ranks(self, seq):
        """Ranks that have not said they wait in collective ``seq`` (or a later one)."""
        self._drain()
        return [r for r in range(self.size)
                if r != self.rank and self._announcements.get(r, 0) < seq]

    def _abort_silent(self, pending, waited):
        silent = self.silent_ranks(pending.seq)
        who = ('rank %s' % ', '.join(str(r) for r in silent)) if silent else 'another rank'
        self.abort('%s #%d waited %.0f s (%s=%s): %s never reached it (the process died, hangs,'
                   ' was stopped, or runs a different net or solver); ending the job'
                   % (pending.what, pending.seq, waited, TIMEOUT_VARIABLE, _fmt(self.timeout), who))

    # ------------------------------------------------------------ information
    def ranks_on_this_node(self):
        """How many ranks of the job share this machine (a collective)."""
        node = self.comm.Split_type(self.MPI.COMM_TYPE_SHARED)
        try:
            return node.Get_size()
        finally:
            node.Free()

    def describe_ranks(self):
        """'rank 0: pid 123 on host' lines for every rank (a collective), so that a
        launcher's report of a dead PID reads as a rank."""
        mine = '%d %d %s' % (self.rank, os.getpid(), socket.gethostname())
        every = self.comm.allgather(mine)
        out = []
        for line in every:
            r, pid, host = line.split(' ', 2)
            out.append('rank %s: pid %s on %s' % (r, pid, host))
        return out


def _fmt(timeout):
    return 'none' if timeout is None else '%g' % timeout


def _checked(buf):
    if not isinstance(buf, np.ndarray) or buf.dtype != np.float32 or not buf.flags.c_contiguous:
        raise TypeError('MPICommunicator buffers are contiguous float32 NumPy arrays, got %r'
                        % (getattr(buf, 'dtype', type(buf)),))
    return buf
