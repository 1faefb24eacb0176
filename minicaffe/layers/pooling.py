"""Pooling and spatial pyramid pooling (Caffe's PoolingLayer, SPPLayer).

Windows are strided views of a padded copy of the input; the only Python loop
is over the kernel offsets (kh * kw), never over output pixels.

Caffe's rules, reproduced exactly:

* output size ``ceil((H + 2 pad - k) / s) + 1`` (``round_mode: FLOOR`` floors);
  when pad_h or pad_w is non-zero, a last window that would start in the
  padding is dropped, in both dimensions (see ``pooled_shape``).
* MAX: the window is clipped to the image; the running maximum starts at
  -FLT_MAX and a value replaces it only when strictly greater, so the first
  maximum in row-major window order wins (ties) and NaNs never win.  The index
  (``h * W + w`` within the channel) routes the gradient and is the optional
  second top.
* AVE: the sum over the window clipped to the image divided by the window size
  clipped to ``H + pad`` (padding counts, the ceil-mode overhang does not).
* STOCHASTIC has no CPU implementation in Caffe: forward raises.
"""
import itertools

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ..blob import DTYPE
from ..im2col import pad_spatial
from ..protoio import pb
from ..threads import num_threads, run_ranges
from .base import Layer, register_layer

_f = DTYPE
FLT_MAX = np.finfo(np.float32).max

MAX = 0
AVE = 1
STOCHASTIC = 2


def pooled_shape(in_hw, kernel, stride, pad, ceil_mode=True):
    """Caffe's pooled output size (PoolingLayer::Reshape) over (H, W): per axis
    ceil((n + 2 pad - k) / s) + 1 (floor with round_mode FLOOR); then, when either
    pad is non-zero, each axis whose last window starts at or beyond n + pad drops
    it -- on BOTH axes, also one with pad 0 (Caffe tests ``pad_h_ || pad_w_``)."""
    out = []
    for n, k, s, p in zip(in_hw, kernel, stride, pad):
        q = float(np.float32(n + 2 * p - k) / np.float32(s))   # Caffe divides in float
        out.append(int(np.ceil(q) if ceil_mode else np.floor(q)) + 1)
    if any(pad):
        out = [o - 1 if (o - 1) * s >= n + p else o
               for o, n, s, p in zip(out, in_hw, stride, pad)]
    return tuple(out)


def padded_input_workspace(shape, geom, what='the zero-padded input'):
    """(what, shape, dtype) of the padded copy of an (N, C, H, W) input that the
    windows are views of (for Layer.workspace_shapes)."""
    (pt, pb_), (pl, pr) = geom.padding
    return ('%s (pad %s, kernel %s)' % (what, geom.pad, geom.kernel),
            (shape[0] * shape[1], shape[2] + pt + pb_, shape[3] + pl + pr), _f)


class PoolGeometry(object):
    """Kernel/stride/pad/output of a 2-D pooling over the last two axes."""

    def __init__(self, in_hw, kernel, stride, pad, out):
        self.H, self.W = in_hw
        self.kernel, self.stride, self.pad, self.out = (tuple(kernel), tuple(stride),
                                                        tuple(pad), tuple(out))
        # (left, right) padding so that every window lies inside the padded array
        self.padding = tuple((p, max(0, s * (o - 1) + k - p - n)) for n, k, s, p, o
                             in zip(in_hw, kernel, stride, pad, out))
        self.global_window = (self.out == (1, 1) and self.pad == (0, 0)
                              and self.kernel == (self.H, self.W))
        # windows that cover disjoint parts of the unpadded input (no overhang)
        self.disjoint = (not self.global_window and self.pad == (0, 0)
                         and all(s >= k and (o - 1) * s + k <= n for n, k, s, o
                                 in zip(in_hw, kernel, stride, out)))

    def offsets(self):
        return itertools.product(range(self.kernel[0]), range(self.kernel[1]))

    def window(self, i, j):
        (oh, ow), (sh, sw) = self.out, self.stride
        return (Ellipsis, slice(i, i + sh * (oh - 1) + 1, sh), slice(j, j + sw * (ow - 1) + 1, sw))

    def crop(self):
        (pt, _), (pl, _) = self.padding
        return (Ellipsis, slice(pt, pt + self.H), slice(pl, pl + self.W))

    def ave_divisor(self):
        """Caffe's pool_size per output pixel: window clipped to H + pad, W + pad."""
        sizes = []
        for n, k, s, p, o in zip((self.H, self.W), self.kernel, self.stride, self.pad, self.out):
            start = np.arange(o) * s - p
            sizes.append(np.minimum(start + k, n + p) - start)
        return (sizes[0][:, None] * sizes[1][None, :]).astype(_f)


def _first_match(views, target, dtype):
    """Index of the first of views equal to target (len(views) - 1 where none is),
    and for each view the mask of elements where it is that first match.  Only
    comparisons and boolean/int arithmetic: masked copies are slow on random masks."""
    n = len(views)
    idx = np.zeros(target.shape, dtype)
    firsts = []
    notyet = None                         # no view so far equals target
    for t in range(n):
        ne = np.not_equal(views[t], target)
        if notyet is None:
            firsts.append(~ne)
            notyet = ne
        else:
            firsts.append(notyet & ~ne)
            notyet &= ne
        if t < n - 1:
            idx += notyet
    return idx, firsts


def _overlapping(g):
    """Whether some input lies in two pooling windows."""
    return any(o > 1 and s < k for o, s, k in zip(g.out, g.stride, g.kernel))


def max_pool_forward(x, g):
    """MAX pooling of x (..., H, W); returns (y, idx): idx is Caffe's mask index
    h * W + w of the winner within its channel (-1 when no value beat -FLT_MAX).

    The window maximum is separable: first over the kernel columns (giving, for
    each image row, the row maximum R and the first column J holding it), then
    over the kernel rows.  The first row whose R equals the maximum, with that
    row's J, is exactly the first maximum of Caffe's row-major scan."""
    lead = x.shape[:-2]
    if g.global_window:
        xv = x.reshape(lead + (-1,))
        with np.errstate(invalid='ignore'):
            m = np.fmax.reduce(xv, axis=-1) if xv.shape[-1] else np.full(lead, -np.inf, _f)
            ok = m > -FLT_MAX
        idx = np.where(ok, np.argmax(xv == m[..., None], axis=-1), -1).astype(np.int32)
        y = np.where(ok, m, _f(-FLT_MAX)).astype(_f)
        return y.reshape(lead + (1, 1)), idx.reshape(lead + (1, 1))
    if g.disjoint:
        return _max_pool_disjoint(x, g)
    (kh, kw), (sh, sw), (oh, ow) = g.kernel, g.stride, g.out
    small = np.int8 if max(kh, kw) < 128 else np.int32
    xp = pad_spatial(x, 2, g.padding, value=-np.inf)
    with np.errstate(invalid='ignore'):
        # pass 1: over the kernel columns, for every (padded) row
        cols = [xp[..., :, j:j + sw * (ow - 1) + 1:sw] for j in range(kw)]
        R = cols[0].copy()
        for c in cols[1:]:
            np.fmax(R, c, out=R)              # fmax: NaN never wins, as in Caffe
        J, _ = _first_match(cols, R, small)
        # pass 2: over the kernel rows
        rows = [R[..., i:i + sh * (oh - 1) + 1:sh, :] for i in range(kh)]
        m = rows[0].copy()
        for r in rows[1:]:
            np.fmax(m, r, out=m)
        np.fmax(m, _f(-FLT_MAX), out=m)       # Caffe's running max starts at -FLT_MAX
        I, firsts = _first_match(rows, m, small)
        Jsel = np.zeros(m.shape, small)
        for i in range(kh):
            Jsel += J[..., i:i + sh * (oh - 1) + 1:sh, :] * firsts[i]
        (pt, _), (pl, _) = g.padding
        base = ((np.arange(oh, dtype=np.int32) * sh - pt)[:, None] * g.W
                + (np.arange(ow, dtype=np.int32) * sw - pl)[None, :])
        idx = I.astype(np.int32)
        idx *= g.W
        idx += Jsel
        idx += base
        none = ~(m > -FLT_MAX)
        if none.any():
            idx[none] = -1
    return m, idx


def _max_pool_disjoint(x, g):
    """max_pool_forward where the windows cover disjoint parts of the input, with
    no padding or overhang (LeNet's 2x2 stride 2).  The values at each kernel
    offset are first copied apart, (kh, kw, planes, oh, ow), in one strided pass;
    every later pass -- a running fmax over the offsets, then the number of
    leading offsets whose value differs from the maximum, i.e. the first match in
    Caffe's row-major window order -- then runs over contiguous arrays in
    numpy's SIMD loops, not over strided views whose inner loops are one row of
    windows long (12 on LeNet's pool1: 0.6 ms there against 1.1, 1 thread)."""
    (kh, kw), (sh, sw), (oh, ow) = g.kernel, g.stride, g.out
    lead = x.shape[:-2]
    x3 = x.reshape((-1,) + x.shape[-2:])
    st = x3.strides
    win = as_strided(x3, shape=(x3.shape[0], oh, kh, ow, kw),
                     strides=(st[0], st[1] * sh, st[1], st[2] * sw, st[2]), writeable=False)
    k = kh * kw
    parts = np.empty((kh, kw) + win.shape[:2] + (ow,), _f)
    np.copyto(parts, win.transpose(2, 4, 0, 1, 3))
    v = parts.reshape(k, -1)
    count = np.int8 if k < 128 else np.int32
    with np.errstate(invalid='ignore'):
        m = np.fmax(v[0], v[1]) if k > 1 else v[0].copy()
        for t in range(2, k):
            np.fmax(m, v[t], out=m)           # fmax: NaN never wins, as in Caffe
        # loc = the number of leading offsets whose value differs from m
        notyet = np.not_equal(v[0], m)
        loc = notyet.astype(count) if k > 1 else np.zeros(m.shape, count)
        ne = np.empty_like(notyet)
        for t in range(1, k - 1):
            np.not_equal(v[t], m, out=ne)
            notyet &= ne
            loc += notyet
        # the offset (i, j) = divmod(loc, kw) is at i * W + j = loc + i * (W - kw)
        idx = loc.astype(np.int32)
        if kh > 1:
            idx += (loc // count(kw)).astype(np.int32) * (g.W - kw)
        idx = idx.reshape(-1, oh, ow)
        idx += ((np.arange(oh, dtype=np.int32) * sh)[:, None] * g.W
                + (np.arange(ow, dtype=np.int32) * sw)[None, :])
        if m.size and not m.min() > -FLT_MAX:   # a window without a winner (or NaN)
            np.fmax(m, _f(-FLT_MAX), out=m)   # Caffe's running max starts at -FLT_MAX
            idx[~(m > -FLT_MAX).reshape(idx.shape)] = -1
    return m.reshape(lead + (oh, ow)), idx.reshape(lead + (oh, ow))


def max_pool_backward(dy, idx, g, out=None):
    """dx[n, c, idx] += dy (Caffe routes each output's gradient to its argmax),
    written into out (shaped lead + (H, W), contiguous) if given."""
    lead = dy.shape[:-2]
    nch = int(np.prod(lead, dtype=np.int64))
    hw = g.H * g.W
    flat = idx.reshape(nch, -1).astype(np.intp)
    w = dy.reshape(nch, -1)
    bad = flat < 0
    flat += (np.arange(nch, dtype=np.intp) * hw)[:, None]
    if not _overlapping(g) and not bad.any():
        # Windows that do not overlap send at most one gradient to each input:
        # a scatter (0 + dy, as Caffe adds it: -0 becomes +0).
        dx = np.zeros(nch * hw, _f) if out is None else out.reshape(-1)
        if out is not None:
            dx.fill(0)
        dx[flat.ravel()] = w.ravel() + _f(0)
        return dx.reshape(lead + (g.H, g.W))
    if bad.any():
        # An empty window (one lying wholly in the padding, or past the input when
        # a stride exceeds the kernel) has no winner: Caffe's mask is -1 and its CPU
        # backward adds dy at index -1 of the channel plane, i.e. to the last input
        # of the plane before it (an out-of-bounds write, dropped here for the very
        # first plane; Caffe's GPU kernel drops them all: see backward_gpu).  The
        # flat index computed above is already plane * hw - 1.
        lost = flat < 0
        if lost.any():
            flat = np.where(lost, 0, flat)
            w = np.where(lost, 0, w)
    dx = np.bincount(flat.ravel(), weights=w.ravel(), minlength=nch * hw)
    if out is None:
        return dx.astype(_f).reshape(lead + (g.H, g.W))
    out[...] = dx.reshape(out.shape)
    return out


def ave_pool_forward(x, g):
    lead = x.shape[:-2]
    div = g.ave_divisor()
    if g.global_window:
        s = x.reshape(lead + (-1,)).sum(axis=-1, dtype=_f)
        return (s / div[0, 0]).reshape(lead + (1, 1)).astype(_f)
    xp = pad_spatial(x, 2, g.padding, value=0.0)
    acc = np.zeros(lead + g.out, _f)
    for i, j in g.offsets():
        acc += xp[g.window(i, j)]
    with np.errstate(divide='ignore', invalid='ignore'):
        acc /= div
    return acc


def ave_pool_backward(dy, g):
    lead = dy.shape[:-2]
    with np.errstate(divide='ignore', invalid='ignore'):
        d = (dy / g.ave_divisor()).astype(_f)
    if g.global_window:
        return np.broadcast_to(d, lead + (g.H, g.W)).copy()
    shape = lead + tuple(n + l + r for n, (l, r) in zip((g.H, g.W), g.padding))
    dxp = np.zeros(shape, _f)
    # Caffe adds each window's share in raster order of the windows (ph, then pw), so
    # an input receives from the window at the largest kernel offset first: the
    # offsets run backwards here, and each input's float sum has Caffe's order
    # (which decides the result when huge shares cancel).
    for i, j in reversed(list(g.offsets())):
        dxp[g.window(i, j)] += d
    return dxp[g.crop()]


# Channels are pooled in blocks of about this many input values, so that the
# temporaries of the vectorized passes stay in cache: on AlexNet-sized inputs
# this is 2x faster than whole-array passes (and bit-identical: each channel's
# arithmetic is unchanged).
CHUNK_ELEMS = 1 << 18
# Inputs of fewer values are pooled in one block, on the calling thread.
SPLIT_MIN_ELEMS = 1 << 15
# MAX pooling over disjoint windows (_max_pool_disjoint and its scatter backward)
# makes a few short passes, so its blocks are larger than CHUNK_ELEMS: LeNet's
# pool1 (737K values) in 2 blocks.  Timed inside whole LeNet iterations on 2
# threads (its input fresh from conv1, not in cache), median of 4 rounds:
# forward 1.11 ms whole / 0.89 in 2 blocks / 1.09 in 4, backward 0.70 / 0.58 /
# 0.66.  (Alone, on an input already in cache, blocks had gained nothing: the
# threads queue for the GIL between numpy's calls.)
DISJOINT_BLOCK_ELEMS = 1 << 19


def plane_blocks(planes, per_plane, block_elems=CHUNK_ELEMS):
    """Bounds of the blocks of channel planes pooled one at a time (each on a
    worker thread): about block_elems input values each, their number rounded
    up to a multiple of the thread count.  A plane's numbers do not depend on
    the cut, so it may follow the threads: no core idles while another pools an
    odd last block (LeNet's pool1 made 5 blocks, 3 + 2 on 2 cores)."""
    if planes == 0:
        return [0]                      # no blocks: an empty batch
    total = planes * per_plane
    n = -(-total // block_elems)
    if total < SPLIT_MIN_ELEMS or planes < 2 or n < 2:
        return [0, planes]
    t = num_threads()
    n = min(planes, -(-n // t) * t)
    return [planes * i // n for i in range(n + 1)]


def _pool_method_name(method):
    return {MAX: 'MAX', AVE: 'AVE', STOCHASTIC: 'STOCHASTIC'}.get(method, str(method))


@register_layer('Pooling')
class PoolingLayer(Layer):
    """Max or average pooling over the last two axes of a 4-D blob.

    forward:  MAX y[n,c,ph,pw] = max over the window (clipped to the image) of x,
              first maximum wins; optional top[1] = its index h * W + w
              AVE y = (sum over the clipped window of x) / pool_size,
              pool_size = window clipped to (H + pad, W + pad)
    backward: MAX dx[argmax] += dy;  AVE dx[window] += dy / pool_size
    shapes:   x (N, C, H, W) -> y (N, C, PH, PW) [, mask (N, C, PH, PW)],
              PH = ceil((H + 2 pad_h - kernel_h) / stride_h) + 1 (floor with
              round_mode FLOOR), minus 1 if (pad_h or pad_w) and
              (PH - 1) stride_h >= H + pad_h; PW likewise
    """
    exact_num_bottom = 1
    min_num_top = 1
    max_num_top = 2
    static_reshape = True

    def setup(self, bottom, top):
        pp = self.layer_param.pooling_param
        has = pp.HasField
        self.method = pp.pool
        self.check(self.method in (MAX, AVE, STOCHASTIC), 'unknown pooling method %d' % pp.pool)
        self.check(len(top) == 1 or self.method == MAX,
                   'only MAX pooling has a second (mask) top; %s pooling takes exactly one top'
                   % _pool_method_name(self.method))
        self.global_pooling = bool(pp.global_pooling)
        if self.global_pooling:
            self.check(not (has('kernel_size') or has('kernel_h') or has('kernel_w')),
                       'With Global_pooling: true Filter size cannot specified')
        else:
            self.check(not (has('kernel_size') and (has('kernel_h') or has('kernel_w'))),
                       'Filter size is kernel_size OR kernel_h and kernel_w; not both')
            self.check(has('kernel_size') or (has('kernel_h') and has('kernel_w')),
                       'needs a filter size: kernel_size, or for non-square filters both'
                       ' kernel_h and kernel_w')
        self.check((not has('pad') and has('pad_h') and has('pad_w'))
                   or (not has('pad_h') and not has('pad_w')),
                   'pad is pad OR pad_h and pad_w are required.')
        self.check((not has('stride') and has('stride_h') and has('stride_w'))
                   or (not has('stride_h') and not has('stride_w')),
                   'Stride is stride OR stride_h and stride_w are required.')
        self.check(pp.round_mode in (pb.PoolingParameter.CEIL, pb.PoolingParameter.FLOOR),
                   'Unknown rounding mode.')
        self.ceil_mode = pp.round_mode == pb.PoolingParameter.CEIL
        if self.global_pooling:
            self.kernel = self._global_kernel(bottom[0])
        elif has('kernel_size'):
            self.kernel = (int(pp.kernel_size),) * 2
        else:
            self.kernel = (int(pp.kernel_h), int(pp.kernel_w))
        self.pad = (int(pp.pad),) * 2 if not has('pad_h') else (int(pp.pad_h), int(pp.pad_w))
        self.stride = ((int(pp.stride),) * 2 if not has('stride_h')
                       else (int(pp.stride_h), int(pp.stride_w)))
        self.check(self.kernel[0] > 0 and self.kernel[1] > 0,
                   'Filter dimensions cannot be zero (kernel %s)' % (self.kernel,))
        self.check(self.stride[0] > 0 and self.stride[1] > 0,
                   'Stride dimensions cannot be zero (stride %s)' % (self.stride,))
        if self.global_pooling:
            self.check(self.pad == (0, 0) and self.stride == (1, 1),
                       'With Global_pooling: true; only pad = 0 and stride = 1')
        if self.pad != (0, 0):
            self.check(self.method in (MAX, AVE),
                       'Padding implemented only for average and max pooling.')
            self.check(self.pad[0] < self.kernel[0] and self.pad[1] < self.kernel[1],
                       'pad %s must be smaller than the kernel %s' % (self.pad, self.kernel))
        self._geom_key = None

    def _global_kernel(self, b):
        s = b.shape
        return (s[2] if len(s) > 2 else 1, s[3] if len(s) > 3 else 1)

    def reshape(self, bottom, top):
        s = bottom[0].shape
        self.check(len(s) == 4, 'Input must have 4 axes, corresponding to (num, channels,'
                   ' height, width); got shape %s' % (s,))
        if self.global_pooling:
            self.kernel = (s[2], s[3])
        key = (s[2], s[3], self.kernel)
        if key != self._geom_key:
            out = pooled_shape((s[2], s[3]), self.kernel, self.stride, self.pad, self.ceil_mode)
            if self.pad != (0, 0):
                for o, st, n, p in zip(out, self.stride, (s[2], s[3]), self.pad):
                    self.check((o - 1) * st < n + p, 'the last pooling window starts outside'
                               ' the padded input %s' % (s,))
            self.check(out[0] > 0 and out[1] > 0, 'pooled output size %s is not positive for'
                       ' input %s' % (out, s))
            self.geom = PoolGeometry((s[2], s[3]), self.kernel, self.stride, self.pad, out)
            self._geom_key = key
        shape = s[:2] + self.geom.out
        for t in top:
            t.reshape(shape)

    def workspace_shapes(self, bottom, top):
        return [padded_input_workspace(bottom[0].shape, self.geom)]

    def _block_elems(self):
        disjoint_max = self.method == MAX and self.geom.disjoint
        return DISJOINT_BLOCK_ELEMS if disjoint_max else CHUNK_ELEMS

    def forward(self, bottom, top):
        if self.method == STOCHASTIC:
            raise self.error('STOCHASTIC pooling is not implemented on the CPU in Caffe'
                             ' (it is GPU-only); use MAX or AVE')
        g = self.geom
        x = bottom[0].data
        nc = x.shape[0] * x.shape[1]
        xs = x.reshape((nc,) + x.shape[2:])          # split over images and channels
        ys = top[0].data.reshape((nc,) + g.out)
        if self.method == MAX:
            self.kept_array('idx', ys.shape, np.int32)       # for backward
            mask = top[1].data.reshape(ys.shape) if len(top) > 1 else None

            def part(lo, hi):
                y, idx = max_pool_forward(xs[lo:hi], g)
                ys[lo:hi] = y
                self.idx[lo:hi] = idx
                if mask is not None:
                    mask[lo:hi] = idx
        else:
            def part(lo, hi):
                ys[lo:hi] = ave_pool_forward(xs[lo:hi], g)
        run_ranges(plane_blocks(nc, g.H * g.W, self._block_elems()), part)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        g = self.geom
        dy = top[0].diff
        nc = dy.shape[0] * dy.shape[1]
        dys = dy.reshape((nc,) + g.out)
        dxs = bottom[0].diff.reshape((nc, g.H, g.W))
        if self.method == MAX:
            def part(lo, hi):
                max_pool_backward(dys[lo:hi], self.idx[lo:hi], g, out=dxs[lo:hi])
        else:
            def part(lo, hi):
                dxs[lo:hi] = ave_pool_backward(dys[lo:hi], g)
        run_ranges(plane_blocks(nc, g.H * g.W, self._block_elems()), part)


    # -- GPU: Caffe's pooling kernels (kernels/pooling.cu) --------------------
    def _gpu_geom_args(self, x):
        g = self.geom
        return (x.shape[1], g.H, g.W) + g.out + g.kernel + g.stride + g.pad

    def forward_gpu(self, bottom, top):
        if self.method == STOCHASTIC:
            return self.forward(bottom, top)        # raises, as on the CPU
        from ..gpu.backend import cupy_module
        from ..gpu.kernels import launch
        cp = cupy_module()
        x, y = bottom[0].gpu_data, top[0].gpu_data
        geom = self._gpu_geom_args(x)
        if self.method == MAX:
            mask = self.kept_array('_gpu_mask', y.shape, np.int32, xp=cp)
            launch('pooling', 'max_pool_forward', y.size, (y.size, x) + geom + (y, mask))
            if len(top) > 1:
                top[1].gpu_data[...] = mask.astype(cp.float32)
        else:
            launch('pooling', 'ave_pool_forward', y.size, (y.size, x) + geom + (y,))

    def backward_gpu(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        from ..gpu.kernels import launch
        dy, dx = top[0].gpu_diff, bottom[0].gpu_diff
        geom = self._gpu_geom_args(dx)
        if self.method == MAX:
            launch('pooling', 'max_pool_backward', dx.size,
                   (dx.size, dy, self._gpu_mask) + geom + (dx,))
        else:
            launch('pooling', 'ave_pool_backward', dx.size, (dx.size, dy) + geom + (dx,))


def spp_level_geometry(layer, level, H, W):
    """Caffe's SPPLayer::GetPoolingParam for one pyramid level, as a PoolGeometry."""
    bins = 2 ** level
    kernel, pad = [], []
    for n in (H, W):
        k = int(np.ceil(n / float(bins)))
        remainder = k * bins - n
        kernel.append(k)
        pad.append((remainder + 1) // 2)
    stride = kernel
    if pad != [0, 0]:
        layer.check(pad[0] < kernel[0] and pad[1] < kernel[1],
                    'pyramid level %d on a %dx%d input needs pad %s >= kernel %s, which pooling'
                    ' does not allow' % (level, H, W, pad, kernel))
    out = pooled_shape((H, W), kernel, stride, pad)
    return PoolGeometry((H, W), kernel, stride, pad, out)


@register_layer('SPP')
class SPPLayer(Layer):
    """Spatial pyramid pooling: level l pools into 2^l x 2^l bins, all flattened and
    concatenated (Caffe builds it from Split, Pooling, Flatten and Concat).

    level l: kernel = ceil(H / 2^l), pad = (kernel 2^l - H + 1) / 2, stride = kernel
    forward:  y[n] = concat over l of flatten(pool_l(x)[n])
    backward: dx = sum over l of the pooling backward of that level's slice of dy
    shapes:   x (N, C, H, W) -> y (N, C * sum_l 4^l); with pyramid_height 1,
              y (N, C, 1, 1)
    """
    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom, top):
        sp = self.layer_param.spp_param
        self.method = sp.pool
        self.check(self.method in (MAX, AVE, STOCHASTIC), 'Unknown pooling method.')
        self.height = int(sp.pyramid_height)
        self.check(self.height >= 1, 'pyramid_height must be at least 1')
        s = bottom[0].shape
        self.check(len(s) == 4 and s[2] > 0 and s[3] > 0,
                   'Input must have 4 axes (num, channels, height, width) with nonzero height'
                   ' and width; got shape %s' % (s,))
        self._key = None

    def reshape(self, bottom, top):
        s = bottom[0].shape
        self.check(len(s) == 4, 'Input must have 4 axes, corresponding to (num, channels,'
                   ' height, width); got shape %s' % (s,))
        if s[2:] != self._key:
            self.geoms = [spp_level_geometry(self, l, s[2], s[3]) for l in range(self.height)]
            self._key = s[2:]
        if self.height == 1:
            top[0].reshape(s[:2] + self.geoms[0].out)
        else:
            top[0].reshape((s[0], sum(s[1] * g.out[0] * g.out[1] for g in self.geoms)))

    def forward(self, bottom, top):
        if self.method == STOCHASTIC:
            raise self.error('STOCHASTIC pooling is not implemented on the CPU in Caffe'
                             ' (it is GPU-only); use MAX or AVE')
        x = bottom[0].data
        N = x.shape[0]
        if N == 0:                      # an empty batch: nothing to pool
            return
        y = top[0].data.reshape(N, -1)
        self.args = []
        pos = 0
        for g in self.geoms:
            if self.method == MAX:
                p, arg = max_pool_forward(x, g)
                self.args.append(arg)
            else:
                p = ave_pool_forward(x, g)
            n = p[0].size
            y[:, pos:pos + n] = p.reshape(N, -1)
            pos += n

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        x = bottom[0]
        N, C = x.shape[:2]
        if N == 0:
            return
        dy = top[0].diff.reshape(N, -1)
        dx = None
        pos = 0
        for l, g in enumerate(self.geoms):
            n = C * g.out[0] * g.out[1]
            d = dy[:, pos:pos + n].reshape((N, C) + g.out)
            pos += n
            if self.method == MAX:
                part = max_pool_backward(d, self.args[l], g)
            else:
                part = ave_pool_backward(d, g)
            dx = part.copy() if dx is None else dx + part
        bottom[0].diff[...] = dx
