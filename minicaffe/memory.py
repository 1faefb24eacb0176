"""How much memory a net needs, checked when it is built.

Each blob is capped on its own (blob.py: Caffe's INT_MAX count and a per-blob
byte limit), but many blobs under the cap can still add up to more than the
machine has -- and NumPy allocates zeros lazily, so such a net builds and dies
later in forward.  ``check_net`` adds up what a built net really holds and
refuses it, with the estimate in the message, when it exceeds the limit:

* the data and diff arrays of every blob (each buffer once: in-place tops,
  Flatten/Reshape views and shared params alias one buffer; minicaffe allocates
  diffs eagerly, as Caffe does);
* the learnable blobs of the layers (data and diff);
* the largest scratch array a layer declares (Layer.workspace_shapes: im2col
  columns, padded inputs), which layers reuse;
* the arrays layers keep from one pass to the next (Layer.kept_shapes: the
  convolutions' columns or input transforms kept for backward in TRAIN phase,
  the Winograd transform of their weights).  Other layers' smaller kept arrays
  (pooling's argmax, dropout's mask) and the solver's history are not counted.

The limit is ``MINICAFFE_MEMORY_LIMIT`` (bytes, or ``none`` for no check),
else the memory the system reports available (MemAvailable in /proc/meminfo;
the physical memory where that is unknown).
"""
import os

import numpy as np

from .blob import MAX_BYTES, MAX_COUNT
from .errors import MinicaffeError

ENV = 'MINICAFFE_MEMORY_LIMIT'


def _gib(n):
    return n / float(1 << 30)


def array_problem(shape, dtype, what):
    """None when an array of ``shape`` and ``dtype`` may be allocated, else the
    reason (the per-array rules of blob.py: Caffe's INT_MAX count, the per-blob bytes)."""
    count = 1
    for d in shape:
        count *= int(d)
    nbytes = count * np.dtype(dtype).itemsize
    if count > MAX_COUNT:
        return ('%s, shape %s, has %d elements, more than Caffe allows in one array (%d)'
                % (what, tuple(shape), count, MAX_COUNT))
    if nbytes > MAX_BYTES:
        return ('%s, shape %s, needs %.1f GiB, more than the %.1f GiB minicaffe allows per array'
                ' (MINICAFFE_MAX_BLOB_BYTES)' % (what, tuple(shape), _gib(nbytes), _gib(MAX_BYTES)))
    return None


def available_bytes():
    """MemAvailable from /proc/meminfo, else the physical memory, else None."""
    try:
        with open('/proc/meminfo') as f:
            for line in f:
                if line.startswith('MemAvailable:'):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')
    except (ValueError, OSError, AttributeError):
        return None


def memory_limit():
    """(bytes, where it came from), or (None, reason) when the check is off."""
    env = os.environ.get(ENV, '').strip()
    if env.lower() in ('none', 'off'):
        return None, '%s=%s' % (ENV, env)
    if env:
        try:
            return int(float(env)), '%s=%s' % (ENV, env)
        except ValueError:
            raise MinicaffeError('%s must be a number of bytes or "none", got %r' % (ENV, env)) from None
    avail = available_bytes()
    if avail is None:
        return None, 'the available memory is unknown'
    return avail, 'the memory this machine has available now'


def _buffer_key(arr):
    return arr.__array_interface__['data'][0], arr.nbytes


def estimate(net):
    """{'blobs', 'params', 'workspace', 'kept', 'total'}: bytes the built net holds or
    will use."""
    seen = set()

    def unique_bytes(arrays):
        total = 0
        for a in arrays:
            key = _buffer_key(a)
            if a.nbytes and key not in seen:
                seen.add(key)
                total += a.nbytes
        return total

    blobs = unique_bytes(a for b in net._blob_list for a in (b._data, b._diff))
    params = unique_bytes(a for layer in net.layers for b in layer.blobs for a in (b._data, b._diff))
    workspace = max([0] + [w for w in net._workspace_bytes])
    kept = sum(net._kept_bytes)
    return {'blobs': blobs, 'params': params, 'workspace': workspace, 'kept': kept,
            'total': blobs + params + workspace + kept}


def check_net(net, error):
    """Raise ``error`` (with the estimate) when the net needs more than the limit."""
    limit, source = memory_limit()
    if limit is None:
        return
    est = estimate(net)
    if est['total'] > limit:
        raise error('%s: the net needs about %.2f GiB (blob data and diffs %.2f GiB, learnable'
                    ' parameters %.2f GiB, largest scratch array %.2f GiB, arrays layers keep'
                    ' between passes %.2f GiB), more than the %.2f GiB limit (%s); reduce the'
                    ' batch or input sizes, or set %s to a number of bytes (or "none") to change'
                    ' the limit'
                    % (net.source, _gib(est['total']), _gib(est['blobs']), _gib(est['params']),
                       _gib(est['workspace']), _gib(est['kept']), _gib(limit), source, ENV))
