"""Layers that move, combine or reduce blobs without learned weights:
Flatten, Reshape, Concat, Slice, Eltwise, Tile, Reduction, ArgMax, Filter,
BatchReindex, Parameter.

Reshape tops alias their bottom (data and diff), as Caffe's ShareData/ShareDiff do;
so do single-top Slice and single-bottom Concat.  A Flatten top aliases the data and
hands its diff to the bottom in backward, as Caffe's does (see FlattenLayer).

GPU mode: Concat, Slice and Eltwise have forward_gpu/backward_gpu on the blobs'
device arrays (Eltwise MAX with kernels/eltwise.cu); the aliasing layers need
no device code (their forward and backward touch no memory).
"""
import numpy as np

from ..blob import Blob, DTYPE
from ..errors import MinicaffeError, layer_context
from ..protoio import pb
from .base import Layer, register_layer

_f = DTYPE


def _axis(layer, blob, axis, what='axis'):
    """Caffe's CanonicalAxisIndex with a layer-named error."""
    n = blob.num_axes()
    layer.check(-n <= axis < n, '%s %d is out of range for a bottom of shape %s (%d axes)'
                % (what, axis, blob.shape, n))
    return axis + n if axis < 0 else axis


def _count(shape, start=0, end=None):
    return int(np.prod(shape[start:end], dtype=np.int64))


def _cupy():
    from ..gpu.backend import cupy_module
    return cupy_module()


def _axis_view(arr, axis):
    """A C-contiguous array viewed as (outer, size of ``axis``, inner)."""
    s = arr.shape
    return arr.reshape(_count(s, 0, axis), s[axis], _count(s, axis + 1))


def _data_error(layer, msg):
    return MinicaffeError('%s: %s' % (layer_context(layer.layer_param), msg))


@register_layer('Flatten')
class FlattenLayer(Layer):
    """Flatten axes [axis, end_axis] into one (defaults 1 and -1).

    forward:  y = x viewed with shape x.shape[:axis] + (prod x.shape[axis:end_axis+1],)
              + x.shape[end_axis+1:] (the top shares the bottom's data)
    backward: dx = dy: as Caffe's Bottom->ShareDiff(top), the bottom's diff becomes
              the top's diff memory.  So where the bottom's diff was itself shared
              with another blob (a Reshape top, a single-top Slice, a single-bottom
              Concat), that other blob keeps its old diff: in Caffe no gradient
              passes below Reshape -> Flatten, and minicaffe computes the same.
    shapes:   (d0, ..., dn) -> (d0, ..., d_{axis-1}, d_axis*...*d_end, d_{end+1}, ...)
    """
    static_reshape = True
    exact_num_bottom = 1
    exact_num_top = 1

    def reshape(self, bottom, top):
        p = self.layer_param.flatten_param
        s = bottom[0].shape
        start = _axis(self, bottom[0], p.axis)
        end = _axis(self, bottom[0], p.end_axis, 'end_axis')
        # Caffe's Blob::count(start, end + 1) allows start == end + 1: the flattened
        # range is empty and an axis of size 1 is inserted there
        self.check(start <= end + 1, 'axis (%d) must not come after end_axis + 1 (%d) for shape %s'
                   % (start, end + 1, s))
        shape = s[:start] + (_count(s, start, end + 1),) + s[end + 1:]
        owner = getattr(self, '_top_diff', None)
        if owner is None or owner.shape != tuple(shape):
            owner = self._top_diff = Blob(shape)        # the top's own diff, kept across passes
        top[0].alias_data(bottom[0], shape, owner)

    def forward(self, bottom, top):
        pass

    def backward(self, top, propagate_down, bottom):
        bottom[0].share_diff(top[0])


@register_layer('Reshape')
class ReshapeLayer(Layer):
    """Reshape without copying.

    reshape_param.shape: dim 0 copies the bottom's dim, -1 (at most once) is inferred.
    axis/num_axes select the bottom axes replaced (default: all).
    forward:  y = x with the new shape (shares data and diff)
    backward: dx = dy (shared memory)
    shapes:   (d...) -> bottom[:axis] + shape + bottom[axis+num_axes:], same count
    """
    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom, top):
        dims = list(self.layer_param.reshape_param.shape.dim)
        self.copy_axes = [i for i, d in enumerate(dims) if d == 0]
        inferred = [i for i, d in enumerate(dims) if d == -1]
        self.check(len(inferred) <= 1, 'new shape %s contains more than one -1 (at most one'
                   ' dimension can be inferred)' % dims)
        for d in dims:
            self.check(d >= -1, 'new shape %s has a dimension < -1' % dims)
        self.inferred_axis = inferred[0] if inferred else -1
        self.dims = dims
        self.constant_count = 1
        for d in dims:
            if d > 0:
                self.constant_count *= d

    def reshape(self, bottom, top):
        p = self.layer_param.reshape_param
        s = bottom[0].shape
        n = len(s)
        start = p.axis if p.axis >= 0 else n + p.axis + 1
        self.check(0 <= start <= n, 'axis %d out of range for a bottom of shape %s' % (p.axis, s))
        self.check(p.num_axes >= -1, 'num_axes must be >= 0, or -1 for all, got %d' % p.num_axes)
        end = n if p.num_axes == -1 else start + p.num_axes
        self.check(end <= n, 'axis %d + num_axes %d is beyond the %d axes of the bottom (shape %s)'
                   % (start, p.num_axes, n, s))
        shape = list(s[:start]) + list(self.dims) + list(s[end:])
        for i in self.copy_axes:
            self.check(start + i < n, 'new shape dim %d is 0 (copy) but the bottom (shape %s) has'
                       ' no axis %d' % (i, s, start + i))
            shape[start + i] = s[start + i]
        if self.inferred_axis >= 0:
            explicit = self.constant_count * _count(s, 0, start) * _count(s, end)
            for i in self.copy_axes:
                explicit *= s[start + i]
            self.check(explicit != 0 and bottom[0].count % explicit == 0,
                       'bottom count (%d, shape %s) is not divisible by the product of the'
                       ' specified dimensions (%d)' % (bottom[0].count, s, explicit))
            shape[start + self.inferred_axis] = bottom[0].count // explicit
        self.check(_count(shape) == bottom[0].count,
                   'new shape %s has %d elements but the bottom (shape %s) has %d'
                   % (tuple(shape), _count(shape), s, bottom[0].count))
        top[0].view_of(bottom[0], tuple(shape))

    def forward(self, bottom, top):
        pass

    def backward(self, top, propagate_down, bottom):
        pass


@register_layer('Concat')
class ConcatLayer(Layer):
    """Concatenate bottoms along `axis` (default 1; legacy concat_dim).

    forward:  y = [x_1, ..., x_K] along axis
    backward: dx_i = the matching slice of dy
    shapes:   x_i (..., c_i, ...) -> y (..., sum c_i, ...); other axes must agree
    """
    static_reshape = True
    min_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom, top):
        p = self.layer_param.concat_param
        self.check(not (p.HasField('axis') and p.HasField('concat_dim')),
                   'either axis or concat_dim should be given, not both')

    def _concat_axis(self, b0):
        p = self.layer_param.concat_param
        if p.HasField('concat_dim'):
            self.check(p.concat_dim < b0.num_axes(), 'concat_dim %d out of range for a bottom of'
                       ' shape %s' % (p.concat_dim, b0.shape))
            return int(p.concat_dim)
        return _axis(self, b0, p.axis)

    def reshape(self, bottom, top):
        b0 = bottom[0]
        self.axis = ax = self._concat_axis(b0)
        shape = list(b0.shape)
        for i, b in enumerate(bottom[1:], 1):
            self.check(b.num_axes() == b0.num_axes(),
                       'all bottoms must have the same number of axes: bottom 0 has shape %s,'
                       ' bottom %d has shape %s' % (b0.shape, i, b.shape))
            same = all(b.shape[j] == b0.shape[j] for j in range(b0.num_axes()) if j != ax)
            self.check(same, 'all bottoms must have the same shape except at concat axis %d:'
                       ' bottom 0 has shape %s, bottom %d has shape %s' % (ax, b0.shape, i, b.shape))
            shape[ax] += b.shape[ax]
        if len(bottom) == 1:
            top[0].view_of(b0, b0.shape)
        else:
            top[0].reshape(tuple(shape))

    def forward(self, bottom, top):
        if len(bottom) == 1:
            return
        np.concatenate([b.data for b in bottom], axis=self.axis, out=top[0].data)

    def backward(self, top, propagate_down, bottom):
        if len(bottom) == 1:
            return
        off = 0
        idx = [slice(None)] * top[0].num_axes()
        for b, p in zip(bottom, propagate_down):
            n = b.shape[self.axis]
            if p:
                idx[self.axis] = slice(off, off + n)
                b.diff[...] = top[0].diff[tuple(idx)]
            off += n

    def forward_gpu(self, bottom, top):
        """Each bottom copied into its block of the (outer, axis, inner) top view."""
        if len(bottom) == 1:
            return
        y = _axis_view(top[0].gpu_data, self.axis)
        off = 0
        for b in bottom:
            n = b.shape[self.axis]
            y[:, off:off + n, :] = _axis_view(b.gpu_data, self.axis)
            off += n

    def backward_gpu(self, top, propagate_down, bottom):
        """dx_i = its block of dy."""
        if len(bottom) == 1:
            return
        dy = _axis_view(top[0].gpu_diff, self.axis)
        off = 0
        for b, p in zip(bottom, propagate_down):
            n = b.shape[self.axis]
            if p:
                _axis_view(b.gpu_diff, self.axis)[...] = dy[:, off:off + n, :]
            off += n


@register_layer('Slice')
class SliceLayer(Layer):
    """Split a bottom along `axis` (default 1; legacy slice_dim) into the tops.

    slice_point (one fewer than the tops, increasing) gives the cut positions;
    without it the axis is split evenly.
    forward:  y_i = x[..., p_{i-1}:p_i, ...]
    backward: dx = [dy_1, ..., dy_K] along axis
    shapes:   x (..., C, ...) -> y_i (..., p_i - p_{i-1}, ...)
    """
    exact_num_bottom = 1
    min_num_top = 1

    def setup(self, bottom, top):
        p = self.layer_param.slice_param
        self.check(not (p.HasField('axis') and p.HasField('slice_dim')),
                   'either axis or slice_dim should be given, not both')
        self.points = [int(v) for v in p.slice_point]

    def reshape(self, bottom, top):
        p = self.layer_param.slice_param
        b = bottom[0]
        if p.HasField('slice_dim'):
            self.check(p.slice_dim < b.num_axes(), 'slice_dim %d out of range for a bottom of'
                       ' shape %s' % (p.slice_dim, b.shape))
            ax = int(p.slice_dim)
        else:
            ax = _axis(self, b, p.axis)
        self.axis = ax
        size = b.shape[ax]
        nt = len(top)
        if self.points:
            self.check(len(self.points) == nt - 1,
                       '%d slice_point values given for %d tops (need one fewer than the tops)'
                       % (len(self.points), nt))
            self.check(nt <= size, '%d tops but the slice axis %d has only %d entries (shape %s)'
                       % (nt, ax, size, b.shape))
            prev = 0
            sizes = []
            for pt in self.points:
                self.check(pt > prev, 'slice_point values must be increasing and positive, got %s'
                           % self.points)
                sizes.append(pt - prev)
                prev = pt
            self.check(size - prev >= 0, 'slice_point %d is beyond the slice axis size %d (shape %s)'
                       % (prev, size, b.shape))
            sizes.append(size - prev)
        else:
            self.check(size % nt == 0, 'the %d tops should evenly divide the slice axis %d of'
                       ' size %d (shape %s); give slice_point otherwise' % (nt, ax, size, b.shape))
            sizes = [size // nt] * nt
        self.sizes = sizes
        if nt == 1:
            top[0].view_of(b, b.shape)
            return
        for t, n in zip(top, sizes):
            shape = list(b.shape)
            shape[ax] = n
            t.reshape(tuple(shape))

    def forward(self, bottom, top):
        if len(top) == 1:
            return
        idx = [slice(None)] * bottom[0].num_axes()
        off = 0
        for t, n in zip(top, self.sizes):
            idx[self.axis] = slice(off, off + n)
            t.data[...] = bottom[0].data[tuple(idx)]
            off += n

    def backward(self, top, propagate_down, bottom):
        if len(top) == 1 or not propagate_down[0]:
            return
        np.concatenate([t.diff for t in top], axis=self.axis, out=bottom[0].diff)

    def forward_gpu(self, bottom, top):
        """y_i = block i of the (outer, axis, inner) bottom view."""
        if len(top) == 1:
            return
        x = _axis_view(bottom[0].gpu_data, self.axis)
        off = 0
        for t, n in zip(top, self.sizes):
            _axis_view(t.gpu_data, self.axis)[...] = x[:, off:off + n, :]
            off += n

    def backward_gpu(self, top, propagate_down, bottom):
        """dx = the top diffs written back into their blocks."""
        if len(top) == 1 or not propagate_down[0]:
            return
        dx = _axis_view(bottom[0].gpu_diff, self.axis)
        off = 0
        for t, n in zip(top, self.sizes):
            dx[:, off:off + n, :] = _axis_view(t.gpu_diff, self.axis)
            off += n


@register_layer('Eltwise')
class EltwiseLayer(Layer):
    """Elementwise combination of bottoms of one shape.

    SUM (default):  y = sum_i c_i x_i  (coeff: one per bottom, default 1);  dx_i = c_i dy
    PROD:           y = prod_i x_i;  dx_i = dy * prod_{j != i} x_j  (stable_prod_grad, default)
                    or dy * y / x_i
    MAX:            y = max_i x_i;  dx_i = dy where bottom i was chosen, else 0.
                    Ties: bottom 1 wins a tie with bottom 0; a later bottom must be
                    strictly greater to win.
    shapes:   x_i (any, all equal) -> y (same)
    In place (top named like bottom 0) for SUM and MAX; PROD's gradient needs x_0.
    """
    min_num_bottom = 2
    exact_num_top = 1
    supports_in_place = True

    @classmethod
    def allows_in_place(cls, layer_param):
        return layer_param.eltwise_param.operation != pb.EltwiseParameter.PROD

    def setup(self, bottom, top):
        p = self.layer_param.eltwise_param
        self.check(len(p.coeff) in (0, len(bottom)),
                   'takes one coeff per bottom: %d coeff for %d bottoms' % (len(p.coeff), len(bottom)))
        self.check(not (p.operation == pb.EltwiseParameter.PROD and len(p.coeff)),
                   'coeff is only allowed with operation SUM')
        self.op = p.operation
        self.coeffs = [float(c) for c in p.coeff] if len(p.coeff) else [1.0] * len(bottom)
        self.stable = bool(p.stable_prod_grad)
        self.mask = None

    def reshape(self, bottom, top):
        for i, b in enumerate(bottom[1:], 1):
            self.check(b.shape == bottom[0].shape,
                       'all bottoms must have the same shape: bottom 0 has %s, bottom %d has %s'
                       % (bottom[0].shape, i, b.shape))
        if top[0] is not bottom[0]:
            top[0].reshape(bottom[0].shape)

    def forward(self, bottom, top):
        if self.op == pb.EltwiseParameter.PROD:
            y = bottom[0].data * bottom[1].data
            for b in bottom[2:]:
                y *= b.data
        elif self.op == pb.EltwiseParameter.SUM:
            y = bottom[0].data * _f(self.coeffs[0])
            for c, b in zip(self.coeffs[1:], bottom[1:]):
                y += b.data * _f(c)
        else:
            a, b = bottom[0].data, bottom[1].data
            first = a > b
            y = np.where(first, a, b)
            mask = np.where(first, 0, 1).astype(np.int32)
            for k, bk in enumerate(bottom[2:], 2):
                upd = bk.data > y
                y = np.where(upd, bk.data, y)
                mask[upd] = k
            self.mask = mask
        top[0].data[...] = y

    def _bottom_grads(self, dy, xs, y, max_grad, propagate_down):
        """dx_i for each bottom (None where not propagated), for both paths: xs are
        the bottoms' data and y the top's (host or device arrays), max_grad(i) gives
        MAX's gradient to bottom i.  The caller writes them only after all are
        computed, as an in-place bottom 0 shares the top's diff."""
        grads = []
        for i, p in enumerate(propagate_down):
            if not p:
                grads.append(None)
                continue
            if self.op == pb.EltwiseParameter.PROD:
                if self.stable:
                    g = None
                    for j, xj in enumerate(xs):
                        if j == i:
                            continue
                        g = xj.copy() if g is None else g * xj
                else:
                    with np.errstate(invalid='ignore', divide='ignore'):
                        g = y / xs[i]
                g = g * dy
            elif self.op == pb.EltwiseParameter.SUM:
                g = dy.copy() if self.coeffs[i] == 1 else dy * _f(self.coeffs[i])
            else:
                g = max_grad(i)
            grads.append(g)
        return grads

    def backward(self, top, propagate_down, bottom):
        dy = top[0].diff
        y = top[0].data.copy() if self.op == pb.EltwiseParameter.PROD and not self.stable else None
        grads = self._bottom_grads(dy, [b.data for b in bottom], y,
                                   lambda i: np.where(self.mask == i, dy, _f(0)),
                                   propagate_down[:len(bottom)])
        for b, g in zip(bottom, grads):
            if g is not None:
                b.diff[...] = g

    # -- GPU ---------------------------------------------------------------------------
    def forward_gpu(self, bottom, top):
        """SUM and PROD as the CPU computes them, in the same order, into a fresh
        array copied to the top (so the top may be a bottom, in place); MAX with the
        max_forward kernel, which keeps the winning bottom's index in a device mask
        (ties as on the CPU) and reads each element before writing it."""
        cp = _cupy()
        xs = [b.gpu_data for b in bottom]
        if self.op == pb.EltwiseParameter.MAX:
            from ..gpu.kernels import launch
            y = top[0].gpu_data
            mask = self._gpu_mask = cp.empty(y.shape, dtype=np.int32)
            launch('eltwise', 'max_forward', y.size, (y.size, xs[0], xs[1], 0, y, mask))
            for k in range(2, len(xs)):
                launch('eltwise', 'max_forward', y.size, (y.size, y, xs[k], k - 1, y, mask))
            return
        if self.op == pb.EltwiseParameter.PROD:
            y = xs[0] * xs[1]
            for x in xs[2:]:
                y *= x
        else:
            y = xs[0] * _f(self.coeffs[0])
            for c, x in zip(self.coeffs[1:], xs[1:]):
                y += x * _f(c)
        top[0].gpu_data[...] = y

    def backward_gpu(self, top, propagate_down, bottom):
        """As backward; MAX's gradient with the max_backward kernel."""
        cp = _cupy()
        dy = top[0].gpu_diff

        def max_grad(i):
            from ..gpu.kernels import launch
            g = cp.empty(dy.shape, dtype=_f)
            launch('eltwise', 'max_backward', g.size, (g.size, dy, i, self._gpu_mask, g))
            return g
        grads = self._bottom_grads(dy, [b.gpu_data for b in bottom], top[0].gpu_data, max_grad,
                                   propagate_down[:len(bottom)])
        for b, g in zip(bottom, grads):
            if g is not None:
                b.gpu_diff[...] = g


@register_layer('Tile')
class TileLayer(Layer):
    """Repeat the bottom `tiles` times along `axis` (default 1).

    forward:  y[..., t*d + j, ...] = x[..., j, ...] for t < tiles, i.e. the
              block x[i, axis:] is copied tiles times for each outer index i
    backward: dx = sum over the tiles of dy
    shapes:   (..., d_axis, ...) -> (..., tiles * d_axis, ...)
    """
    exact_num_bottom = 1
    exact_num_top = 1

    def reshape(self, bottom, top):
        p = self.layer_param.tile_param
        self.axis = _axis(self, bottom[0], p.axis)
        self.check(p.HasField('tiles'), 'tile_param.tiles (the number of copies) must be given')
        self.check(p.tiles > 0, 'tiles must be positive, got %d' % p.tiles)
        self.tiles = int(p.tiles)
        s = bottom[0].shape
        self.outer = _count(s, 0, self.axis)
        self.inner = _count(s, self.axis)
        shape = list(s)
        shape[self.axis] *= self.tiles
        top[0].reshape(tuple(shape))

    def forward(self, bottom, top):
        x = bottom[0].data.reshape(self.outer, 1, self.inner)
        top[0].data.reshape(self.outer, self.tiles, self.inner)[...] = x

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dy = top[0].diff.reshape(self.outer, self.tiles, self.inner)
        bottom[0].diff.reshape(self.outer, self.inner)[...] = dy.sum(axis=1)


@register_layer('Reduction')
class ReductionLayer(Layer):
    """Reduce all axes from `axis` (default 0) on to a scalar per leading index.

    SUM:   y = coeff * sum x            dx = coeff * dy
    ASUM:  y = coeff * sum |x|          dx = coeff * sign(x) * dy
    SUMSQ: y = coeff * sum x^2          dx = 2 * coeff * x * dy
    MEAN:  y = coeff / D * sum x        dx = coeff / D * dy   (D = reduced count)
    shapes:   (d0, ..., dn) -> (d0, ..., d_{axis-1})  (a 0-axis scalar for axis 0)
    """
    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom, top):
        self.op = self.layer_param.reduction_param.operation

    def reshape(self, bottom, top):
        p = self.layer_param.reduction_param
        s = bottom[0].shape
        self.axis = _axis(self, bottom[0], p.axis)
        top[0].reshape(s[:self.axis])
        self.num = _count(s, 0, self.axis)
        self.dim = _count(s, self.axis)
        coeff = _f(p.coeff)
        if self.op == pb.ReductionParameter.MEAN:
            coeff = _f(coeff / _f(self.dim)) if self.dim else coeff
        self.coeff = coeff

    def forward(self, bottom, top):
        x = bottom[0].data.reshape(self.num, self.dim)
        if self.op in (pb.ReductionParameter.SUM, pb.ReductionParameter.MEAN):
            y = x.sum(axis=1, dtype=np.float64)
        elif self.op == pb.ReductionParameter.ASUM:
            y = np.abs(x).sum(axis=1, dtype=np.float64)
        elif self.op == pb.ReductionParameter.SUMSQ:
            x64 = x.astype(np.float64)
            y = (x64 * x64).sum(axis=1)
        else:
            raise self.error('unknown reduction operation %d' % self.op)
        y = y.astype(_f)
        if self.coeff != 1:
            y *= self.coeff
        top[0].data.reshape(self.num)[...] = y

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        c = (top[0].diff.reshape(self.num, 1) * self.coeff)
        dx = bottom[0].diff.reshape(self.num, self.dim)
        if self.op in (pb.ReductionParameter.SUM, pb.ReductionParameter.MEAN):
            dx[...] = c
        elif self.op == pb.ReductionParameter.ASUM:
            dx[...] = np.sign(bottom[0].data.reshape(self.num, self.dim)) * c
        else:
            dx[...] = bottom[0].data.reshape(self.num, self.dim) * (2 * c)


@register_layer('ArgMax')
class ArgMaxLayer(Layer):
    """Indices (and optionally values) of the top_k largest entries (no backward).

    Without axis: per item n of the batch, over all count(1) values:
        y (N, 1, top_k) = indices, or with out_max_val (N, 2, top_k) = [indices; values]
        (at least 3 axes).
    With axis: y has the bottom's shape with axis replaced by top_k, holding the
        indices, or the values with out_max_val.
    Order: descending value; equal values by descending index (std::partial_sort
    with std::greater on (value, index) pairs, as Caffe).
    """
    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom, top):
        p = self.layer_param.argmax_param
        self.out_max_val = bool(p.out_max_val)
        self.top_k = int(p.top_k)
        self.has_axis = p.HasField('axis')
        self.check(self.top_k >= 1, 'top_k must be at least 1, got %d' % self.top_k)
        if self.has_axis:
            ax = _axis(self, bottom[0], p.axis)
            self.check(self.top_k <= bottom[0].shape[ax], 'top_k (%d) must not exceed the size %d'
                       ' of axis %d (shape %s)' % (self.top_k, bottom[0].shape[ax], ax, bottom[0].shape))
        else:
            self.check(self.top_k <= bottom[0].count_range(1),
                       'top_k (%d) must not exceed the %d values per item (shape %s)'
                       % (self.top_k, bottom[0].count_range(1), bottom[0].shape))

    def reshape(self, bottom, top):
        s = bottom[0].shape
        if self.has_axis:
            self.axis = _axis(self, bottom[0], self.layer_param.argmax_param.axis)
            shape = list(s)
            shape[self.axis] = self.top_k
        else:
            shape = [1] * max(len(s), 3)
            shape[0] = s[0]
            shape[2] = self.top_k
            if self.out_max_val:
                shape[1] = 2
        top[0].reshape(tuple(shape))

    def _topk(self, v):
        """v (rows, dim) -> (indices, values) (rows, top_k) in Caffe's order."""
        dim = v.shape[1]
        rev = v[:, ::-1]
        order = np.argsort(-rev, axis=1, kind='stable')[:, :self.top_k]
        idx = dim - 1 - order
        return idx, np.take_along_axis(v, idx, axis=1)

    def forward(self, bottom, top):
        x = bottom[0].data
        if self.has_axis:
            v = np.moveaxis(x, self.axis, -1)
            lead = v.shape[:-1]
            idx, val = self._topk(v.reshape(int(np.prod(lead, dtype=np.int64)), v.shape[-1]))
            out = val if self.out_max_val else idx.astype(_f)
            out = out.reshape(lead + (self.top_k,))
            top[0].data[...] = np.moveaxis(out, -1, self.axis)
        else:
            n = x.shape[0]
            idx, val = self._topk(x.reshape(n, x.size // n if n else 0))   # (n = 0: empty)
            if self.out_max_val:
                y = np.concatenate([idx.astype(_f), val], axis=1)
            else:
                y = idx.astype(_f)
            top[0].data.reshape(-1)[...] = y.reshape(-1)


@register_layer('Filter')
class FilterLayer(Layer):
    """Keep the items (axis-0 entries) whose selector value is nonzero.

    bottoms: x_1..x_K (N, ...), selector (N, 1, ...) last; tops y_1..y_K (S, ...)
    forward:  y_k = x_k[selector != 0]   (at setup, S = N as in Caffe)
    backward: dx_k = dy_k at the kept items, 0 elsewhere; no gradient to the selector
    """
    min_num_bottom = 2
    min_num_top = 1

    def setup(self, bottom, top):
        self.check(len(top) == len(bottom) - 1,
                   'needs one top per filtered bottom (bottoms minus the selector): %d bottoms,'
                   ' %d tops' % (len(bottom), len(top)))
        self.first_reshape = True
        self.selector_index = len(bottom) - 1
        self.indices = np.zeros(0, np.int64)

    def allow_force_backward(self, bottom_index):
        return bottom_index != self.selector_index

    def reshape(self, bottom, top):
        sel = bottom[-1]
        self.check(sel.num_axes() >= 1, 'the selector (last bottom) needs an axis 0')
        for i in range(1, sel.num_axes()):
            self.check(sel.shape[i] == 1, 'selector (last bottom) dimensions must be 1 except the'
                       ' first, got shape %s' % (sel.shape,))
        for i, b in enumerate(bottom[:-1]):
            self.check(b.num_axes() >= 1 and b.shape[0] == sel.shape[0],
                       'bottom %d (shape %s) must have the same first dimension as the selector'
                       ' (shape %s)' % (i, b.shape, sel.shape))
        self.indices = np.flatnonzero(sel.data.reshape(-1))
        n = len(self.indices)
        if self.first_reshape:
            n = bottom[0].shape[0]
            self.first_reshape = False
        for t, b in zip(top, bottom):
            t.reshape((n,) + b.shape[1:])

    def forward(self, bottom, top):
        for t, b in zip(top, bottom):
            t.data[...] = b.data[self.indices]

    def backward(self, top, propagate_down, bottom):
        if propagate_down[-1]:
            raise self.error('cannot backpropagate to the selector (last bottom)')
        for t, b, p in zip(top, bottom, propagate_down):
            if p:
                d = np.zeros_like(b.diff)
                d[self.indices] = t.diff
                b.diff[...] = d


@register_layer('BatchReindex')
class BatchReindexLayer(Layer):
    """Select/permute items of the batch by an index blob.

    bottoms: x (N, ...), idx (M,) with values in [0, N)
    forward:  y[m] = x[int(idx[m])]                 -> y (M, ...)
    backward: dx[n] = sum over m with idx[m] == n of dy[m]; no gradient to idx
    """
    exact_num_bottom = 2
    exact_num_top = 1

    def allow_force_backward(self, bottom_index):
        return bottom_index == 0

    def reshape(self, bottom, top):
        self.check(bottom[1].num_axes() == 1, 'the index bottom must have exactly 1 axis, got'
                   ' shape %s' % (bottom[1].shape,))
        self.check(bottom[0].num_axes() >= 1, 'the data bottom needs an axis 0')
        top[0].reshape((bottom[1].shape[0],) + bottom[0].shape[1:])

    def _index(self, bottom):
        r = bottom[1].data
        n = bottom[0].shape[0]
        if r.size and (r.min() < 0 or r.max() >= n):
            raise _data_error(self, 'index values must lie in [0, %d) (the batch size), got'
                              ' min %g max %g' % (n, r.min(), r.max()))
        return r.astype(np.int64)

    def forward(self, bottom, top):
        idx = self._index(bottom)
        if top[0].count == 0:
            return
        top[0].data[...] = bottom[0].data[idx]

    def backward(self, top, propagate_down, bottom):
        if propagate_down[1]:
            raise self.error('cannot backpropagate to the index (bottom 1)')
        if not propagate_down[0]:
            return
        idx = self._index(bottom)
        d = np.zeros_like(bottom[0].diff)
        np.add.at(d, idx, top[0].diff)
        bottom[0].diff[...] = d


@register_layer('Parameter')
class ParameterLayer(Layer):
    """Expose a learnable blob as a top (Caffe's ParameterLayer).

    blobs: w, shape parameter_param.shape (zeros unless weights are loaded)
    forward:  y = w (the top shares w's data and diff)
    backward: dw = dy (shared memory)
    """
    exact_num_bottom = 0
    exact_num_top = 1

    def setup(self, bottom, top):
        if len(self.blobs) == 0:
            self.blobs.append(Blob(tuple(self.layer_param.parameter_param.shape.dim)))
        top[0].view_of(self.blobs[0], self.blobs[0].shape)

    def reshape(self, bottom, top):
        top[0].view_of(self.blobs[0], self.blobs[0].shape)

    def forward(self, bottom, top):
        top[0].view_of(self.blobs[0], self.blobs[0].shape)

    def backward(self, top, propagate_down, bottom):
        pass
