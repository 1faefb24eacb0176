"""Blob: an N-D float32 array with a matching gradient array (Caffe's Blob).

``data`` and ``diff`` are NumPy arrays that callers may write in place
(``blob.data[...] = x``), exactly as pycaffe exposes them.  In GPU mode each
also has a device copy (``gpu_data``/``gpu_diff``, CuPy arrays) kept in step by
:class:`SyncedMemory`, copied only when the other side is touched.  A blob can share
the memory of another blob (``share_data``/``share_diff``), which is how
Reshape/Flatten tops and shared parameters alias their source, as in Caffe.
"""
import os

import numpy as np

DTYPE = np.float32

# Refuse absurd shapes before allocating (a corrupt or hostile file must not
# exhaust memory): 2**31 elements is Caffe's own INT_MAX count limit, and a
# blob's data + diff may not take more than MAX_BYTES (half the machine's
# memory unless MINICAFFE_MAX_BLOB_BYTES says otherwise).
MAX_COUNT = 2 ** 31 - 1


def _default_max_bytes():
    env = os.environ.get('MINICAFFE_MAX_BLOB_BYTES')
    if env:
        return int(float(env))
    try:
        return max(1 << 30, os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') // 2)
    except (ValueError, OSError, AttributeError):
        return 16 << 30


MAX_BYTES = _default_max_bytes()


def _checked_shape(shape):
    shape = tuple(int(d) for d in shape)
    count = 1
    for d in shape:
        if d < 0:
            raise ValueError('blob shape %s has a negative dimension' % (shape,))
        count *= d
    if count > MAX_COUNT:
        raise ValueError('blob shape %s has %d elements, more than Caffe allows (%d)'
                         % (shape, count, MAX_COUNT))
    if 2 * count * np.dtype(DTYPE).itemsize > MAX_BYTES:
        raise ValueError('blob shape %s needs %.1f GiB for its data and diff, more than the %.1f GiB'
                         ' minicaffe allows per blob (set MINICAFFE_MAX_BLOB_BYTES to change it)'
                         % (shape, 2 * count * np.dtype(DTYPE).itemsize / 2.0 ** 30, MAX_BYTES / 2.0 ** 30))
    return shape


# SyncedMemory heads (Caffe's SyncedMemory::head_): which copy is current.
HOST, DEVICE = 0, 1


class SyncedMemory(object):
    """One buffer with a host copy (NumPy, always there) and, once the GPU path
    touches it, a device copy (CuPy), as Caffe's SyncedMemory.

    ``head`` says which copy is current; every access hands out a writable array,
    so an access to one side marks the other stale (Caffe's mutable_cpu_data /
    mutable_gpu_data).  Blobs that alias each other (share_data, view_of, reshape
    to the same count) share one SyncedMemory, so the state is shared as well.
    Without a device copy (CPU mode) nothing here runs: Blob.data returns its
    NumPy array directly.
    """
    __slots__ = ('host', 'dev', 'head')

    def __init__(self, host):
        self.host = host.reshape(-1)        # flat view of the blob's NumPy array
        self.dev = None
        self.head = HOST

    def to_host(self):
        """Make the host copy current and the writer (the device copy goes stale)."""
        if self.head == DEVICE:
            self.dev.get(out=self.host)
        self.head = HOST

    def to_device(self):
        """Make the device copy current and the writer; returns the flat device array."""
        if self.dev is None:
            from .gpu.backend import cupy_module
            cp = cupy_module()
            self.dev = cp.empty(self.host.size, dtype=DTYPE)
            self.dev.set(self.host)
        elif self.head == HOST:
            self.dev.set(self.host)
        self.head = DEVICE
        return self.dev


class Blob(object):
    def __init__(self, shape=(), name=None):
        self.name = name
        shape = _checked_shape(shape)
        self._data = np.zeros(shape, DTYPE)
        self._diff = np.zeros(shape, DTYPE)
        self._dmem = SyncedMemory(self._data)
        self._gmem = SyncedMemory(self._diff)

    # -- arrays -----------------------------------------------------------
    # data/diff: the host arrays (synced from the device when the GPU path
    # wrote last); gpu_data/gpu_diff: the device arrays (synced from the host).
    @property
    def data(self):
        if self._dmem.dev is not None:
            self._dmem.to_host()
        return self._data

    @data.setter
    def data(self, value):
        # Assignment copies into the existing buffer so views stay valid.
        self.data[...] = value

    @property
    def diff(self):
        if self._gmem.dev is not None:
            self._gmem.to_host()
        return self._diff

    @diff.setter
    def diff(self, value):
        self.diff[...] = value

    @property
    def gpu_data(self):
        """The data as a CuPy array (GPU mode); the host copy is then stale."""
        return self._dmem.to_device().reshape(self._data.shape)

    @property
    def gpu_diff(self):
        return self._gmem.to_device().reshape(self._diff.shape)

    def on_device(self):
        """True when the device copy of data or diff is the current one."""
        return self._dmem.head == DEVICE or self._gmem.head == DEVICE

    # -- shape ------------------------------------------------------------
    @property
    def shape(self):
        return self._data.shape

    @property
    def count(self):
        return int(self._data.size)

    def num_axes(self):
        return self._data.ndim

    def shape_string(self):
        """Caffe's Blob::shape_string: ``64 1 28 28 (50176)``."""
        return shape_string(self.shape)

    def canonical_axis(self, axis):
        """Caffe's CanonicalAxisIndex: negative axes count from the end."""
        n = self._data.ndim
        if axis < -n or axis >= max(n, 1):
            raise ValueError('axis %d out of range for a %d-axis blob of shape %s'
                             % (axis, n, self.shape))
        return axis + n if axis < 0 else axis

    def count_range(self, start, end=None):
        shape = self.shape
        end = len(shape) if end is None else end
        c = 1
        for d in shape[start:end]:
            c *= d
        return int(c)

    def _legacy(self, i):
        # Caffe's num/channels/height/width: 1 for missing trailing axes.
        s = self.shape
        if len(s) > 4:
            raise ValueError('legacy accessor on a %d-axis blob' % len(s))
        return s[i] if i < len(s) else 1

    num = property(lambda self: self._legacy(0))
    channels = property(lambda self: self._legacy(1))
    height = property(lambda self: self._legacy(2))
    width = property(lambda self: self._legacy(3))

    def reshape(self, *shape):
        """Reshape; keeps the values when the element count is unchanged."""
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = shape[0]
        shape = _checked_shape(shape)
        if shape == self._data.shape:
            return
        if int(np.prod(shape, dtype=np.int64)) == self._data.size:
            self._data = self._data.reshape(shape)
            self._diff = self._diff.reshape(shape)
        else:
            self._data = np.zeros(shape, DTYPE)
            self._diff = np.zeros(shape, DTYPE)
            self._dmem = SyncedMemory(self._data)
            self._gmem = SyncedMemory(self._diff)

    def reshape_like(self, other):
        self.reshape(other.shape)

    # -- sharing ------------------------------------------------------------
    def share_data(self, other):
        """Alias other's data memory (counts must match; shape stays ours)."""
        if other.count != self.count:
            raise ValueError('cannot share data: count %d != %d' % (other.count, self.count))
        self._data = other._data.reshape(self.shape)
        self._dmem = other._dmem

    def share_diff(self, other):
        if other.count != self.count:
            raise ValueError('cannot share diff: count %d != %d' % (other.count, self.count))
        self._diff = other._diff.reshape(self.shape)
        self._gmem = other._gmem

    def alias_data(self, other, shape, diff_owner):
        """Alias other's data under ``shape`` (Caffe's ShareData), with the diff
        memory of ``diff_owner`` (a blob of that shape kept by the caller) as ours."""
        self._data = other._data.reshape(shape)
        self._dmem = other._dmem
        self._diff = diff_owner._diff
        self._gmem = diff_owner._gmem

    def view_of(self, other, shape):
        """Become a reshaped alias of other (data and diff), as Flatten/Reshape tops are."""
        self._data = other._data.reshape(shape)
        self._diff = other._diff.reshape(shape)
        self._dmem = other._dmem
        self._gmem = other._gmem

    def __repr__(self):
        return 'Blob(%r, shape=%s)' % (self.name, self.shape)


def shape_string(shape):
    """``(64, 1, 28, 28)`` -> ``64 1 28 28 (50176)`` (a scalar: ``(1)``), as Caffe logs shapes."""
    count = 1
    for d in shape:
        count *= int(d)
    return ''.join('%d ' % d for d in shape) + '(%d)' % count
