"""Blob: an N-D float32 array with a matching gradient array (Caffe's Blob).

``data`` and ``diff`` are NumPy arrays that callers may write in place
(``blob.data[...] = x``), exactly as pycaffe exposes them.  A blob can share
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


class Blob(object):
    def __init__(self, shape=(), name=None):
        self.name = name
        shape = _checked_shape(shape)
        self._data = np.zeros(shape, DTYPE)
        self._diff = np.zeros(shape, DTYPE)

    # -- arrays -----------------------------------------------------------
    @property
    def data(self):
        return self._data

    @data.setter
    def data(self, value):
        # Assignment copies into the existing buffer so views stay valid.
        self._data[...] = value

    @property
    def diff(self):
        return self._diff

    @diff.setter
    def diff(self, value):
        self._diff[...] = value

    # -- shape ------------------------------------------------------------
    @property
    def shape(self):
        return self._data.shape

    @property
    def count(self):
        return int(self._data.size)

    def num_axes(self):
        return self._data.ndim

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

    def reshape_like(self, other):
        self.reshape(other.shape)

    # -- sharing ------------------------------------------------------------
    def share_data(self, other):
        """Alias other's data memory (counts must match; shape stays ours)."""
        if other.count != self.count:
            raise ValueError('cannot share data: count %d != %d' % (other.count, self.count))
        self._data = other._data.reshape(self.shape)

    def share_diff(self, other):
        if other.count != self.count:
            raise ValueError('cannot share diff: count %d != %d' % (other.count, self.count))
        self._diff = other._diff.reshape(self.shape)

    def view_of(self, other, shape):
        """Become a reshaped alias of other (data and diff), as Flatten/Reshape tops are."""
        self._data = other._data.reshape(shape)
        self._diff = other._diff.reshape(shape)

    def __repr__(self):
        return 'Blob(%r, shape=%s)' % (self.name, self.shape)
