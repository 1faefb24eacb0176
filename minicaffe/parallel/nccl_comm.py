"""NCCL through CuPy (``cupy.cuda.nccl``): the GPU engine behind
:class:`~minicaffe.parallel.comm.Communicator`.

Buffers are flat, C-contiguous float32 CuPy arrays on this rank's device.
Every collective runs on the communicator's own non-blocking stream, ordered
with CUDA events: it starts after the work already queued on the caller's
(compute) stream, which wrote the buffer.  ``allreduce_async`` returns at
once, so backward goes on computing while NCCL reduces (layer_wise_reduce);
its handle's ``wait()`` -- and the blocking collectives -- return when the
result is there, as Caffe's on_gradients_ready synchronizes its NCCL stream.

NCCL collectives hang when a peer is gone (NCCL kernels spin on the device).
A watchdog thread therefore follows every collective: when one has not
completed within ``timeout`` seconds, or NCCL reports an asynchronous error
(``check_async_error``; a peer whose connection dropped), it aborts the
communicator (``ncclCommAbort``, which releases the spinning kernels), logs
which collective on which rank failed, and ends the process with a non-zero
status.  Whoever started the ranks (``minicaffe train --gpu 0,1`` or
mpiexec) then ends the others.

The unique id that joins the ranks is 128 bytes (``ncclUniqueId``), made by
rank 0 with :func:`new_uid` and handed to the other ranks by whoever starts
them (the spawning parent, or an MPI broadcast).  CuPy >= 14 represents it as
``bytes``, older CuPy as a tuple of 128 signed chars; :func:`new_uid` always
returns bytes and the constructor accepts either.
"""
import importlib
import logging
import os
import sys
import threading
import time
import weakref

import numpy as np

from ..errors import MinicaffeError
from .comm import Communicator, DoneHandle

log = logging.getLogger('minicaffe')

UID_BYTES = 128                 # NCCL_UNIQUE_ID_BYTES

# The timeout of a collective when none is given: MINICAFFE_COMM_TIMEOUT, as
# for MPI (the data-parallel core lifts it while rank 0 tests or snapshots).
FROM_ENVIRONMENT = 'environment'

NCCL_INSTALL_HINT = ('pip install -e ".[cuda13]" (or ".[cuda12]") installs CuPy with NVIDIA\'s NCCL'
                     ' wheel; if CuPy still does not load it: python -m cupyx.tools.install_library'
                     ' --library nccl --cuda 13.x (or 12.x)')


def nccl_module():
    """``cupy.cuda.nccl``, or a MinicaffeError saying what is missing."""
    from ..gpu.backend import cupy_module
    cupy_module()           # CuPy and a device first: its message is the clearer one
    try:
        nccl = importlib.import_module('cupy.cuda.nccl')
    except ImportError as e:
        raise MinicaffeError('multi-GPU training needs NCCL, which CuPy cannot load (%s); %s'
                             % (e, NCCL_INSTALL_HINT)) from None
    if not getattr(nccl, 'available', True) or not hasattr(nccl, 'NcclCommunicator'):
        raise MinicaffeError('multi-GPU training needs NCCL, which CuPy cannot load; '
                             + NCCL_INSTALL_HINT)
    return nccl


def has_nccl():
    """pycaffe's ``caffe.has_nccl()``: CuPy with NCCL imports and a device exists."""
    try:
        nccl_module()
    except MinicaffeError:
        return False
    return True


def uid_bytes(uid):
    """A unique id as 128 bytes (from bytes, or CuPy < 14's tuple of signed chars)."""
    if isinstance(uid, (tuple, list)):
        uid = bytes(int(x) & 0xFF for x in uid)
    elif isinstance(uid, str):          # pycaffe under Python 2 passed str; be lenient
        uid = uid.encode('latin-1')
    if not isinstance(uid, (bytes, bytearray)) or len(uid) != UID_BYTES:
        raise MinicaffeError('an NCCL unique id is %d bytes (caffe.NCCL.new_uid()), got %r'
                             % (UID_BYTES, type(uid).__name__ if not isinstance(uid, (bytes, bytearray))
                                else '%d bytes' % len(uid)))
    return bytes(uid)


def _uid_tuple(uid):
    return tuple(b - 256 if b > 127 else b for b in uid)


def new_uid():
    """A fresh NCCL unique id as bytes (pycaffe's ``caffe.NCCL.new_uid()``)."""
    return uid_bytes(nccl_module().get_unique_id())


def local_rank_from_env(environ=None):
    """This process's rank among the ranks on its node, as MPI launchers export
    it (MPICH/hydra, Open MPI, MVAPICH, Slurm); None when none says."""
    env = os.environ if environ is None else environ
    for name in ('MPI_LOCALRANKID', 'OMPI_COMM_WORLD_LOCAL_RANK', 'MV2_COMM_WORLD_LOCAL_RANK',
                 'PMI_LOCAL_RANK', 'PALS_LOCAL_RANKID', 'SLURM_LOCALID'):
        v = env.get(name)
        if v is not None and v.strip().isdigit():
            return int(v)
    return None


class NCCLCommunicator(Communicator):
    """One rank of ``size`` ranks joined by ``uid``; this process's device is
    the current CuPy device (set it first: ``minicaffe.set_device``)."""

    engine = 'nccl'
    device_buffers = True       # buffers are CuPy arrays

    def __init__(self, size, uid, rank, timeout=FROM_ENVIRONMENT):
        from ..gpu.backend import cupy_module
        self.cp = cupy_module()
        self.nccl = nccl_module()
        self.size, self.rank = int(size), int(rank)
        if not 0 <= self.rank < self.size:
            raise MinicaffeError('NCCL: rank %d is not in 0..%d' % (self.rank, self.size - 1))
        if timeout == FROM_ENVIRONMENT:
            from .mpi_comm import timeout_from_environment      # (imports no mpi4py)
            timeout = timeout_from_environment()
        self.timeout = None if timeout is None else float(timeout)     # None: wait forever
        self.uid = uid_bytes(uid)
        self.device = self.cp.cuda.Device().id      # this rank's (current) device
        self.comm = None
        self._pending = []          # [name, start time, done event or None]
        self._lock = threading.Lock()
        self._closed = False
        self._watchdog = threading.Thread(target=_watchdog, args=(weakref.ref(self),),
                                          name='nccl-watchdog', daemon=True)
        self._watchdog.start()
        # ncclCommInitRank blocks until every rank has joined: watched as well.
        entry = self._begin('ncclCommInitRank')
        try:
            self.comm = self._init_comm()
        except Exception as e:
            self._closed = True
            raise MinicaffeError('NCCL: rank %d of %d could not join the communicator (%s)'
                                 % (self.rank, self.size, e)) from None
        finally:
            self._end(entry, None)
        self.stream = self.cp.cuda.Stream(non_blocking=True)

    def _init_comm(self):
        try:
            return self.nccl.NcclCommunicator(self.size, self.uid, self.rank)
        except TypeError:
            # CuPy < 14 takes the id as a tuple of 128 signed chars
            return self.nccl.NcclCommunicator(self.size, _uid_tuple(self.uid), self.rank)

    # ---------------------------------------------------------- collectives
    def _check(self, buf, what):
        if not isinstance(buf, self.cp.ndarray):
            raise TypeError('NCCL %s: a CuPy device array is needed, got %s.%s'
                            % (what, type(buf).__module__, type(buf).__name__))
        if buf.dtype != np.float32 or not buf.flags.c_contiguous:
            raise TypeError('NCCL %s: a C-contiguous float32 array is needed, got %s%s'
                            % (what, buf.dtype, '' if buf.flags.c_contiguous else ' (not contiguous)'))

    def _queue(self, name, launch):
        """Queue ``launch(stream_ptr)`` on our stream after the work already
        queued on the caller's (compute) stream, which wrote the buffer; returns
        the handle of the collective."""
        compute = self.cp.cuda.get_current_stream()
        self.stream.wait_event(compute.record())
        entry = self._begin(name)
        launch(self.stream.ptr)
        done = self.stream.record()
        self._end(entry, done)
        return _DeviceHandle(self.cp, done)

    def allreduce_async(self, buf):
        """Queue the in-place sum and return its handle; compute work queued
        meanwhile runs alongside it (Caffe's layer-wise reduce on its own stream)."""
        self._check(buf, 'all-reduce')
        if not buf.size:
            return DoneHandle()
        nccl = self.nccl
        return self._queue('ncclAllReduce', lambda s: self.comm.allReduce(
            buf.data.ptr, buf.data.ptr, buf.size, nccl.NCCL_FLOAT32, nccl.NCCL_SUM, s))

    def allreduce(self, buf):
        """The sum, in ``buf`` when this returns."""
        self.allreduce_async(buf).wait()
        return buf

    def broadcast(self, buf, root=0):
        self._check(buf, 'broadcast')
        if buf.size:
            self._queue('ncclBcast', lambda s: self.comm.bcast(
                buf.data.ptr, buf.size, self.nccl.NCCL_FLOAT32, int(root), s)).wait()
        return buf

    def barrier(self):
        """An all-reduce of one value."""
        self.allreduce(self.cp.zeros(1, dtype=np.float32))

    def synchronize(self):
        """Wait on the host until every queued collective has finished."""
        self.stream.synchronize()

    def abort(self, message, errorcode=1):
        """End this rank: ``minicaffe: error: rank r: message`` on stderr, the
        communicator aborted, exit status ``errorcode``; whoever started the
        ranks (the spawning parent, mpiexec) ends the others."""
        for h in logging.getLogger('minicaffe').handlers:
            h.flush()
        sys.stderr.write('minicaffe: error: rank %d: %s\n' % (self.rank, message))
        sys.stderr.flush()
        try:
            if self.comm is not None:
                self.comm.abort()       # ncclCommAbort: frees kernels waiting on a dead peer
        except Exception:
            pass
        os._exit(errorcode)

    def close(self):
        """Wait for the queued collectives and free the communicator."""
        if self._closed:
            return
        self.synchronize()
        self._closed = True
        self.comm.destroy()

    # ---------------------------------------------------------- watchdog
    def _begin(self, name):
        entry = [name, time.monotonic(), None]
        with self._lock:
            self._pending.append(entry)
        return entry

    def _end(self, entry, done_event):
        with self._lock:
            if done_event is None:
                self._pending.remove(entry)
            else:
                entry[2] = done_event

    def _overdue(self):
        """The name of a collective past its deadline, or None."""
        now = time.monotonic()
        with self._lock:
            for entry in list(self._pending):
                name, start, done = entry
                if done is not None and done.done:
                    self._pending.remove(entry)
                elif self.timeout is not None and now - start > self.timeout:
                    return name
        return None

    def _health(self):
        """What is wrong with the collectives in flight, or None."""
        name = self._overdue()
        if name is not None:
            return ('%s did not complete within %g s: a peer rank is dead or stuck'
                    ' (the NCCL communicator is aborted; MINICAFFE_COMM_TIMEOUT sets the limit)'
                    % (name, self.timeout))
        if self.comm is not None and not self._closed:
            try:
                self.comm.check_async_error()
            except Exception as e:      # CuPy's NcclError: a peer's connection failed
                return 'NCCL reported an asynchronous error: %s' % e
        return None


def _watchdog(ref):
    """The watchdog thread of the communicator ``ref`` points to (a weak
    reference, so that a communicator nobody uses any more is freed and its
    watchdog ends)."""
    comm = ref()
    if comm is None:
        return
    try:
        comm.cp.cuda.Device(comm.device).use()     # query our events on our device
    except Exception:
        pass
    while True:
        interval = 0.02 if comm.timeout is not None and comm.timeout < 5 else 0.2
        del comm
        time.sleep(interval)
        comm = ref()
        if comm is None or comm._closed:
            return
        problem = comm._health()
        if problem is not None:
            comm.abort(problem)


class _DeviceHandle(object):
    """A queued collective: ``test()`` whether the device has finished it;
    ``wait()`` returns when it has (the time the solver waits for the
    reduction, as in Caffe) and orders the caller's stream after it."""

    def __init__(self, cp, done):
        self.cp, self.done = cp, done

    def test(self):
        return bool(self.done.done)

    def wait(self):
        self.cp.cuda.get_current_stream().wait_event(self.done)
        self.done.synchronize()


__all__ = ['NCCLCommunicator', 'has_nccl', 'new_uid', 'nccl_module',
           'uid_bytes', 'local_rank_from_env', 'UID_BYTES']
