"""N-D im2col / col2im (Caffe's util/im2col.cpp), vectorized with stride tricks.

Caffe lays one image's columns out as a matrix of shape
``(C * k_0 * ... * k_{n-1}, o_0 * ... * o_{n-1})``: row ``(c, i_0, ..., i_{n-1})``
(kernel offsets, C order), column ``(p_0, ..., p_{n-1})`` (output position),
holding ``x[c, p_0*s_0 - pad_0 + i_0*d_0, ...]`` or 0 outside the image.

Here the same numbers are produced for any number of leading axes at once:

* ``im2col(x, ...)``: ``x`` of shape ``lead + spatial`` gives an array of shape
  ``lead + kernel + out`` (``lead`` is e.g. ``(N, C)``); reshaped to
  ``(N, C*prod(kernel), prod(out))`` it is Caffe's column buffer per image.
* ``window_view(...)``: the same as a read-only strided view of a padded copy
  (no column copy), so a caller can transpose it before the one copy it needs.
* ``col2im(col, ...)``: the adjoint -- sums the columns back into an image of
  shape ``lead + spatial``; kernel offsets are accumulated in Caffe's order
  (C order over the kernel), so each pixel's sum is formed as Caffe forms it.

``pad``, ``stride``, ``dilation`` and ``kernel`` are sequences with one value
per spatial axis.  Output sizes follow Caffe's integer arithmetic
(``conv_out_size``), including C's truncating division.
"""
import itertools
import threading

import numpy as np
from numpy.lib.stride_tricks import as_strided

# NumPy releases the GIL in copies and arithmetic on float arrays, so large
# memory-bound loops (im2col, col2im, pooling) split over the leading axis run
# on several cores: minicaffe.threads' pool, in chunks that do not depend on
# the thread count (MINICAFFE_NUM_THREADS / set_num_threads choose it).
from .threads import PARALLEL_MIN_ELEMS, num_threads, parallel_for  # noqa: F401,E402


def in_blocks(part, per_item, block_elems):
    """part(lo, hi) run over [lo, hi) in blocks of items (channels, images, or
    single elements) of about block_elems values, so that the temporaries of
    vectorized passes over a block stay in cache.  Meant as parallel_for's fn."""
    step = max(1, block_elems // max(1, per_item))

    def run(lo, hi):
        for s in range(lo, hi, step):
            part(s, min(hi, s + step))
    return run


# Element-wise passes over large arrays run in blocks of this many values.
ELEMENTWISE_BLOCK = 1 << 16


def elementwise(part, n):
    """part(lo, hi) over [0, n) in cache-sized blocks, split across the worker
    threads: an element-wise pass's temporaries stay in cache and every core works."""
    parallel_for(n, in_blocks(part, 1, ELEMENTWISE_BLOCK), n)


def _cdiv(a, b):
    """C/C++ integer division (truncates toward zero)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def kernel_extent(kernel, dilation):
    return tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilation))


def conv_out_size(in_size, kernel, stride, pad, dilation):
    """Caffe's ConvolutionLayer::compute_output_shape for one set of axes."""
    ext = kernel_extent(kernel, dilation)
    return tuple(_cdiv(i + 2 * p - e, s) + 1 for i, p, e, s in zip(in_size, pad, ext, stride))


def deconv_out_size(in_size, kernel, stride, pad, dilation):
    """Caffe's DeconvolutionLayer::compute_output_shape."""
    ext = kernel_extent(kernel, dilation)
    return tuple(s * (i - 1) + e - 2 * p for i, p, e, s in zip(in_size, pad, ext, stride))


def _padding(in_size, kernel, stride, pad, dilation, out):
    """(left, right) zero padding so that every window lies inside the array."""
    ext = kernel_extent(kernel, dilation)
    res = []
    for i, p, e, s, o in zip(in_size, pad, ext, stride, out):
        need = s * (o - 1) + e            # extent touched, counted from -pad
        res.append((p, max(0, need - p - i)))
    return res


def pad_spatial(x, nsp, padding, value=0.0):
    """Copy of x with the last nsp axes padded ((left, right) per axis) by value."""
    if not any(l or r for l, r in padding):
        return x
    lead = x.shape[:x.ndim - nsp]
    shape = lead + tuple(n + l + r for n, (l, r) in zip(x.shape[x.ndim - nsp:], padding))
    out = np.full(shape, value, dtype=x.dtype)
    out[(Ellipsis,) + tuple(slice(l, l + n) for n, (l, r)
                            in zip(x.shape[x.ndim - nsp:], padding))] = x
    return out


def window_view(xp, kernel, stride, dilation, out):
    """Read-only view ``lead + kernel + out`` of a padded array ``lead + padded``."""
    nsp = len(kernel)
    lead = xp.ndim - nsp
    st = xp.strides
    shape = xp.shape[:lead] + tuple(kernel) + tuple(out)
    strides = (st[:lead] + tuple(st[lead + i] * dilation[i] for i in range(nsp))
               + tuple(st[lead + i] * stride[i] for i in range(nsp)))
    return as_strided(xp, shape=shape, strides=strides, writeable=False)


def windows(x, kernel, stride, pad, dilation, out=None, pad_value=0.0):
    """Strided view ``lead + kernel + out`` of the (padded) input x."""
    nsp = len(kernel)
    in_size = x.shape[x.ndim - nsp:]
    if out is None:
        out = conv_out_size(in_size, kernel, stride, pad, dilation)
    if any(o <= 0 for o in out):
        raise ValueError('kernel extent %s larger than the padded input %s'
                         % (kernel_extent(kernel, dilation),
                            tuple(i + 2 * p for i, p in zip(in_size, pad))))
    xp = pad_spatial(x, nsp, _padding(in_size, kernel, stride, pad, dilation, out), pad_value)
    return window_view(xp, kernel, stride, dilation, out)


def im2col(x, kernel, stride, pad, dilation, out=None):
    """Columns of x: contiguous array ``lead + kernel + out`` (zeros outside the image)."""
    return copy_split(windows(x, kernel, stride, pad, dilation, out))


_local = threading.local()


def workspace(key, shape, dtype=np.float32):
    """A scratch array of the given shape, reused across calls with the same key
    (per thread): large temporaries then cost no fresh, kernel-zeroed pages.
    The contents are only valid until the next request for that key."""
    bufs = getattr(_local, 'bufs', None)
    if bufs is None:
        bufs = _local.bufs = {}
    n = 1
    for d in shape:
        n *= int(d)
    buf = bufs.get(key)
    if buf is None or buf.size < n or buf.dtype != dtype:
        buf = bufs[key] = np.empty(max(n, 1), dtype)
    return buf[:n].reshape(shape)


def clear_workspace():
    """Free the scratch arrays of this thread."""
    _local.bufs = {}


def copy_split(a, out=None):
    """np.ascontiguousarray(a) (into out if given), the copy split over a's first
    axis across threads."""
    if out is None:
        out = np.empty(a.shape, a.dtype)
    if a.ndim == 0 or a.shape[0] == 0:
        out[...] = a
        return out
    # split over the first axis longer than 1 (conv1's columns, (1, kh, kw, ...)
    # for one input channel, would otherwise be one serial copy)
    lead = 0
    while lead < a.ndim - 1 and a.shape[lead] == 1:
        lead += 1
    src, dst = a.reshape(a.shape[lead:]), out.reshape(out.shape[lead:])

    def part(lo, hi):
        dst[lo:hi] = src[lo:hi]
    parallel_for(src.shape[0], part, a.size)
    return out


def col2im(col, in_size, kernel, stride, pad, dilation, out=None, dtype=np.float32,
           scratch=None):
    """Adjoint of im2col: ``col`` (``lead + kernel + out``, any strides) summed into
    an array ``lead + in_size``; contributions that fall into padding are dropped.
    With ``scratch`` (a workspace key) the (padded) image lives in a reused
    workspace array, valid until the next use of that key."""
    nsp = len(kernel)
    if out is None:
        out = col.shape[col.ndim - nsp:]
    lead = col.shape[:col.ndim - 2 * nsp]
    padding = _padding(in_size, kernel, stride, pad, dilation, out)
    psize = tuple(i + l + r for i, (l, r) in zip(in_size, padding))
    if scratch is None:
        img = np.zeros(lead + psize, dtype=dtype)
    else:
        img = workspace(scratch, lead + psize, dtype)
        img.fill(0)
    ell = (Ellipsis,)
    offsets = list(itertools.product(*[range(k) for k in kernel]))
    dsts = [ell + tuple(slice(o * d, o * d + s * (n - 1) + 1, s)
                        for o, d, s, n in zip(offs, dilation, stride, out)) for offs in offsets]
    srcs = [ell + offs + (slice(None),) * nsp for offs in offsets]

    def part(lo, hi):
        im, cl = img[lo:hi], col[lo:hi]
        for dst, src in zip(dsts, srcs):
            im[dst] += cl[src]
    if lead:
        parallel_for(lead[0], part, col.size)
    else:
        part(None, None)
    if any(l or r for l, r in padding):
        img = img[ell + tuple(slice(l, l + i) for i, (l, r) in zip(in_size, padding))]
    return img
