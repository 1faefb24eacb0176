"""A CPU stand-in for ``cupy.cuda.nccl`` (part of tests/fake_cupy.py), whose
communicators really reduce across processes: the ranks of
``minicaffe train --gpu 0,1`` (spawned processes) or of ``mpiexec`` meet in a
folder named by the unique id, where each collective is one file per rank
(written atomically); every rank reads all of them and sums in rank order.

It checks its arguments as CuPy's Cython signatures and NCCL would: device
pointers are ints that lie inside a live device array (``a.data.ptr``; a host
pointer is refused), counts and roots are ints, the data type and reduction
are NCCL's enum constants, the stream is a pointer (int), the unique id is
128 bytes from :func:`get_unique_id`, every rank joins with the same rank
count and a rank is used once, and all ranks issue the same collective with
the same count (a mismatch raises here; real NCCL would hang or corrupt).

What it cannot show: device-side asynchrony (every call completes before it
returns) and NCCL's own ring order of summation (here: rank 0 + rank 1 + ...).
"""
import os
import tempfile
import time

import numpy as np

# cupy_backends.cuda.libs.nccl's enum values (nccl.h)
NCCL_INT8 = NCCL_CHAR = 0
NCCL_UINT8 = 1
NCCL_INT32 = NCCL_INT = 2
NCCL_UINT32 = 3
NCCL_INT64 = 4
NCCL_UINT64 = 5
NCCL_FLOAT16 = NCCL_HALF = 6
NCCL_FLOAT32 = NCCL_FLOAT = 7
NCCL_FLOAT64 = NCCL_DOUBLE = 8
NCCL_SUM, NCCL_PROD, NCCL_MAX, NCCL_MIN = 0, 1, 2, 3

_DTYPES = {NCCL_FLOAT32: np.float32, NCCL_FLOAT64: np.float64, NCCL_INT32: np.int32}
_UID_PREFIX = b'fake-nccl:'
UID_BYTES = 128
JOIN_TIMEOUT = 300.0        # a collective nobody else joins fails after this (real NCCL hangs)


class NcclError(RuntimeError):
    def __init__(self, status, message=''):
        self.status = status
        super(NcclError, self).__init__('%s: %s' % (status, message))


def _int(x, what):
    if type(x) is not int and not isinstance(x, np.integer):
        raise TypeError('%s must be an int, got %s' % (what, type(x).__name__))
    return int(x)


def make_module(device_buffer):
    """The ``cupy.cuda.nccl`` stand-in; ``device_buffer(ptr, count, itemsize, where)``
    (from fake_cupy) maps a device pointer to its memory."""
    import types
    m = types.ModuleType('cupy.cuda.nccl')
    m.available = True
    for name, value in globals().items():
        if name.startswith('NCCL_'):
            setattr(m, name, value)
    m.NcclError = NcclError
    m.get_unique_id = get_unique_id
    m.get_version = lambda: 22605
    m.NcclCommunicator = type('NcclCommunicator', (NcclCommunicator,), {'_device_buffer': staticmethod(device_buffer)})
    return m


def get_unique_id():
    """128 bytes naming a fresh rendezvous folder (CuPy >= 14 returns bytes)."""
    folder = tempfile.mkdtemp(prefix='fnccl')
    uid = _UID_PREFIX + folder.encode()
    if len(uid) > UID_BYTES:
        raise RuntimeError('fake NCCL: temporary folder path too long for a unique id')
    return uid + b'\0' * (UID_BYTES - len(uid))


class NcclCommunicator(object):
    """cupy.cuda.nccl.NcclCommunicator(int ndev, bytes commId, int rank)."""

    def __init__(self, ndev, commId, rank):
        ndev, rank = _int(ndev, 'ndev'), _int(rank, 'rank')
        if not isinstance(commId, bytes):
            raise TypeError("Argument 'commId' has incorrect type (expected bytes, got %s)"
                            % type(commId).__name__)
        if len(commId) != UID_BYTES or not commId.startswith(_UID_PREFIX):
            raise NcclError('NCCL_ERROR_INVALID_ARGUMENT', 'not a unique id from get_unique_id()')
        if not 0 <= rank < ndev:
            raise NcclError('NCCL_ERROR_INVALID_ARGUMENT', 'rank %d not in 0..%d' % (rank, ndev - 1))
        self.folder = commId[len(_UID_PREFIX):].rstrip(b'\0').decode()
        self._ndev, self._rank = ndev, rank
        self.seq = 0
        self.aborted = self.destroyed = False
        hello = os.path.join(self.folder, 'hello.%d' % rank)
        if os.path.exists(hello):
            raise NcclError('NCCL_ERROR_INVALID_USAGE', 'rank %d joined twice' % rank)
        self._write(hello, np.array([ndev, os.getpid()], np.int64))
        self.peers = {}
        for r, arr in self._gather('hello.%d'):
            if int(arr[0]) != ndev:
                raise NcclError('NCCL_ERROR_INVALID_USAGE', 'rank %d was started with %d ranks, rank %d'
                                ' with %d' % (r, int(arr[0]), rank, ndev))
            self.peers[r] = int(arr[1])

    # -- files
    def _path(self, pattern, r):
        return os.path.join(self.folder, pattern % r)

    @staticmethod
    def _write(path, arr):
        tmp = path + '.tmp%d' % os.getpid()
        with open(tmp, 'wb') as f:
            np.save(f, arr)
        os.replace(tmp, path)

    def _gather(self, pattern):
        """Every rank's file of this pattern, in rank order, once all exist."""
        deadline = time.monotonic() + JOIN_TIMEOUT
        pause = 0.0002
        out = []
        for r in range(self._ndev):
            path = self._path(pattern, r)
            while not os.path.exists(path):
                if self.aborted:
                    raise NcclError('NCCL_ERROR_REMOTE_ERROR', 'communicator aborted')
                if time.monotonic() > deadline:
                    raise NcclError('NCCL_ERROR_SYSTEM_ERROR', 'rank %d never joined' % r)
                time.sleep(pause)
                pause = min(0.01, pause * 2)
            with open(path, 'rb') as f:
                out.append((r, np.load(f)))
        return out

    def _collective(self, kind, ptr, count, datatype, stream, root=-1, op=NCCL_SUM):
        if self.aborted or self.destroyed:
            raise NcclError('NCCL_ERROR_INVALID_USAGE', 'communicator is %s'
                            % ('aborted' if self.aborted else 'destroyed'))
        count, datatype, root, op = (_int(count, 'count'), _int(datatype, 'datatype'),
                                     _int(root, 'root'), _int(op, 'op'))
        _int(stream, 'stream')
        if datatype not in _DTYPES:
            raise NcclError('NCCL_ERROR_INVALID_ARGUMENT', 'datatype %d is not supported by the fake'
                            % datatype)
        if op != NCCL_SUM:
            raise NcclError('NCCL_ERROR_INVALID_ARGUMENT', 'only NCCL_SUM is emulated')
        dtype = np.dtype(_DTYPES[datatype])
        raw = self._device_buffer(ptr, count, dtype.itemsize, 'nccl %s' % kind)
        mine = np.frombuffer(raw, dtype=dtype, count=count)
        self.seq += 1
        pattern = 'op%d.%%d' % self.seq
        header = np.array([{'allreduce': 1, 'bcast': 2}[kind], count, datatype, root], np.float64)
        payload = mine if kind == 'allreduce' or self._rank == root else mine[:0]
        self._write(self._path(pattern, self._rank),
                    np.concatenate([header, payload.astype(np.float64)]))
        files = self._gather(pattern)
        for r, arr in files:
            if not np.array_equal(arr[:4], header):
                raise NcclError('NCCL_ERROR_INVALID_USAGE', 'rank %d issued a different collective'
                                ' (kind/count/type/root %s) than rank %d (%s)'
                                % (r, arr[:4].tolist(), self._rank, header.tolist()))
        if kind == 'allreduce':
            total = files[0][1][4:].astype(dtype)
            for _, arr in files[1:]:
                total = total + arr[4:].astype(dtype)       # in the buffer's type, rank order
        else:
            total = files[root][1][4:].astype(dtype)
        mine[...] = total
        # every rank has written op seq, so all have read op seq-1: drop ours
        old = self._path('op%d.%%d' % (self.seq - 1), self._rank)
        if self.seq > 1 and os.path.exists(old):
            os.remove(old)

    # -- CuPy's methods
    def allReduce(self, sendbuf, recvbuf, count, datatype, op, stream):
        if sendbuf != recvbuf:
            raise NcclError('NCCL_ERROR_INVALID_ARGUMENT', 'the fake emulates in-place all-reduce only')
        self._collective('allreduce', sendbuf, count, datatype, stream, op=op)

    def bcast(self, buff, count, datatype, root, stream):
        if not 0 <= _int(root, 'root') < self._ndev:
            raise NcclError('NCCL_ERROR_INVALID_ARGUMENT', 'root %d' % root)
        self._collective('bcast', buff, count, datatype, stream, root=root)

    def check_async_error(self):
        """A peer process that is gone: NCCL sees its connection drop."""
        for r, pid in self.peers.items():
            if r == self._rank:
                continue
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                raise NcclError('NCCL_ERROR_REMOTE_ERROR', 'rank %d (pid %d) is gone' % (r, pid))
            except PermissionError:
                pass

    def abort(self):
        self.aborted = True

    def destroy(self):
        self.destroyed = True

    def rank_id(self):
        return self._rank

    def size(self):
        return self._ndev

    def device_id(self):
        return self._rank
