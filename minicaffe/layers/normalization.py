"""Normalization and affine layers: BatchNorm, Scale, Bias, MVN.

Scale and Bias broadcast a smaller blob over the input seen as
(outer, dim, inner): ``dim`` covers the axes [axis, axis + num_axes) that the
scale/bias blob spans, ``outer`` the axes before, ``inner`` the axes after.

GPU mode: each layer's forward_gpu/backward_gpu computes the same expressions
with CuPy on gpu_data/gpu_diff (reductions on the device; BatchNorm's running
statistics are updated on the device, as on the CPU).
"""
import numpy as np

from ..blob import Blob
from ..fillers import fill
from ..protoio import pb
from .base import Layer, register_layer


def _cupy():
    """The cupy module (imported on first GPU use only)."""
    from ..gpu.backend import cupy_module
    return cupy_module()


def _canonical_axis(layer, blob, axis):
    try:
        return blob.canonical_axis(axis)
    except ValueError as e:
        raise layer.error(str(e))


def _param_shape(layer, bottom0, axis, num_axes, what):
    """Shape of a learned scale/bias blob: bottom axes [axis, axis + num_axes)."""
    layer.check(num_axes >= -1, '%s num_axes must be non-negative, or -1 to extend to the'
                ' end of bottom[0]' % what)
    start = _canonical_axis(layer, bottom0, axis)
    if num_axes >= 0:
        layer.check(bottom0.num_axes() >= start + num_axes,
                    '%s blob would span axes %d..%d but bottom[0] %s has only %d axes'
                    % (what, start, start + num_axes - 1, bottom0.shape, bottom0.num_axes()))
    end = bottom0.num_axes() if num_axes == -1 else start + num_axes
    return bottom0.shape[start:end]


def _broadcast_dims(layer, bottom0, operand, axis_param, what):
    """(outer, dim, inner) for applying ``operand`` to bottom0 starting at axis_param."""
    axis = 0 if operand.num_axes() == 0 else _canonical_axis(layer, bottom0, axis_param)
    n = operand.num_axes()
    layer.check(bottom0.num_axes() >= axis + n and bottom0.shape[axis:axis + n] == operand.shape,
                '%s blob shape %s does not match bottom[0] shape %s at axis %d'
                % (what, operand.shape, bottom0.shape, axis))
    return (bottom0.count_range(0, axis), operand.count,
            bottom0.count_range(axis + n))


@register_layer('BatchNorm')
class BatchNormLayer(Layer):
    """Batch normalization without the affine part (Caffe's BatchNormLayer).

    bottom: x (N, C, ...) (a 1-axis bottom counts as C = 1); top: y, same shape.
    blobs:  mean_sum (C), var_sum (C), s (1) -- running sums, never learned: their
            lr_mult is pinned to 0.
    Statistics per channel c over the m = count / C values of that channel.
    forward, batch statistics (use_global_stats false; the default in TRAIN):
        mu = mean(x), var = mean((x - mu)^2)
        s <- beta s + 1, mean_sum <- beta mean_sum + mu,
        var_sum <- beta var_sum + m/(m-1) var        (beta = moving_average_fraction)
      global statistics (the default in TEST):
        mu = mean_sum / s, var = var_sum / s          (0 when s = 0)
      y = (x - mu) / sqrt(var + eps)
    backward, batch statistics:
        dx = (dy - mean(dy) - mean(dy * y) * y) / sqrt(var + eps)
      global statistics: dx = dy / sqrt(var + eps)
    """
    supports_in_place = True
    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom, top):
        p = self.layer_param.batch_norm_param
        self.use_global_stats = (p.use_global_stats if p.HasField('use_global_stats')
                                 else self.phase == pb.TEST)
        self.maf = p.moving_average_fraction
        self.eps = p.eps
        self.channels = 1 if bottom[0].num_axes() == 1 else bottom[0].shape[1]
        if len(self.blobs) == 0:
            for shape in ((self.channels,), (self.channels,), (1,)):
                self.blobs.append(Blob(shape))
        else:
            self.check(len(self.blobs) == 3, 'expected 3 blobs (mean, variance, scale factor),'
                       ' got %d' % len(self.blobs))
        # Mask the statistics from the solver, as Caffe does.
        specs = self.layer_param.param
        for i in range(3):
            if i == len(specs):
                specs.add().lr_mult = 0.0
            else:
                self.check(specs[i].lr_mult == 0, 'cannot configure batch normalization'
                           ' statistics as layer parameters (param %d has lr_mult %g; it must'
                           ' be 0)' % (i, specs[i].lr_mult))
        self.param_propagate_down = [False] * 3

    def reshape(self, bottom, top):
        if bottom[0].num_axes() >= 1:
            c = 1 if bottom[0].num_axes() == 1 else bottom[0].shape[1]
            self.check(c == self.channels, 'bottom has %d channels, the statistics have %d'
                       % (c, self.channels))
        top[0].reshape(bottom[0].shape)

    def _view(self, a):
        """(N, C, spatial) view of a bottom-shaped array (N may be 0)."""
        n = a.shape[0] if a.ndim > 1 else a.size
        return a.reshape(n, self.channels, int(np.prod(a.shape[2:], dtype=np.int64)))

    # The CPU and GPU paths share the arithmetic below; ``xp`` is numpy or cupy and
    # ``stats`` the three statistics arrays on the same side.
    def _normalize(self, xp, x, stats, s_host):
        """Normalize x (N, C, S; a float32 copy) in place, updating the running
        statistics in TRAIN; ``s_host()`` reads the scale factor s to the host."""
        mean_sum, var_sum, s = stats
        if self.use_global_stats:
            s0 = s_host()
            factor = np.float32(0 if s0 == 0 else 1 / s0)
            mean = factor * mean_sum
            var = factor * var_sum
            x -= mean[None, :, None]
        else:
            m = x.shape[0] * x.shape[2]
            # an empty batch (m = 0) has mean and variance 0 here, as Caffe's
            # zero-filled buffers give when its gemv over no rows returns at once
            mean = x.sum(axis=(0, 2)) / np.float32(max(m, 1))
            x -= mean[None, :, None]
            var = (x * x).sum(axis=(0, 2)) / np.float32(max(m, 1))
            s[...] = s * self.maf + 1
            correction = np.float32(m / (m - 1.0)) if m > 1 else np.float32(1)
            mean_sum[...] = mean + self.maf * mean_sum
            var_sum[...] = correction * var + self.maf * var_sum
        std = xp.sqrt(var + np.float32(self.eps)).astype(np.float32)
        x /= std[None, :, None]
        return x, std

    def _normalize_backward(self, dy, x_norm, std):
        std = std[None, :, None]
        if self.use_global_stats:
            return dy / std
        m = dy.shape[0] * dy.shape[2]
        sum_dy_y = (dy * x_norm).sum(axis=(0, 2), keepdims=True)
        sum_dy = dy.sum(axis=(0, 2), keepdims=True)
        dx = dy - (x_norm * sum_dy_y + sum_dy) / np.float32(m)
        return dx / std

    def forward(self, bottom, top):
        x = self._view(bottom[0].data).astype(np.float32, copy=True)
        # x_norm is kept: a later in-place layer may overwrite top data
        self.x_norm, self.std = self._normalize(np, x, [b.data for b in self.blobs],
                                                lambda: self.blobs[2].data[0])
        self._view(top[0].data)[...] = self.x_norm

    def backward(self, top, propagate_down, bottom):
        dy = self._view(top[0].diff).copy()
        self._view(bottom[0].diff)[...] = self._normalize_backward(dy, self.x_norm, self.std)

    def forward_gpu(self, bottom, top):
        """As forward; the statistics blobs are read and updated on the device
        (only the scale factor s travels to the host, as in Caffe's Forward_gpu)."""
        x = self._view(bottom[0].gpu_data).copy()
        self._gpu_x_norm, self._gpu_std = self._normalize(
            _cupy(), x, [b.gpu_data for b in self.blobs],
            lambda: self.blobs[2].gpu_data.get()[0])
        self._view(top[0].gpu_data)[...] = self._gpu_x_norm

    def backward_gpu(self, top, propagate_down, bottom):
        dy = self._view(top[0].gpu_diff).copy()
        self._view(bottom[0].gpu_diff)[...] = self._normalize_backward(
            dy, self._gpu_x_norm, self._gpu_std)


@register_layer('Bias')
class BiasLayer(Layer):
    """Adds a bias broadcast over the input (Caffe's BiasLayer).

    bottoms: x; optionally b (else b is a learned blob of shape x.shape[axis:axis+num_axes],
             bias_param { axis (1) num_axes (1; -1 = to the end) filler (constant 0) }).
    top: y = x + b, b broadcast along the axes outside its span; same shape as x.
    backward: dx = dy; db = sum of dy over the outer and inner axes (accumulated
              into a learned b, assigned to a bottom b).
    """
    supports_in_place = True
    min_num_bottom = 1
    max_num_bottom = 2
    exact_num_top = 1

    def setup(self, bottom, top):
        p = self.layer_param.bias_param
        if len(bottom) == 1 and len(self.blobs) == 0:
            blob = Blob(_param_shape(self, bottom[0], p.axis, p.num_axes, 'bias'))
            fill(blob, p.filler, context=self.name)
            self.blobs.append(blob)
        self.param_propagate_down = [True] * len(self.blobs)

    def _bias(self, bottom):
        return bottom[1] if len(bottom) > 1 else self.blobs[0]

    def reshape(self, bottom, top):
        self.dims = _broadcast_dims(self, bottom[0], self._bias(bottom),
                                    self.layer_param.bias_param.axis, 'bias')
        if top[0] is not bottom[0]:
            top[0].reshape(bottom[0].shape)

    def forward(self, bottom, top):
        outer, dim, inner = self.dims
        b = self._bias(bottom).data.reshape(1, dim, 1)
        np.add(bottom[0].data.reshape(outer, dim, inner), b,
               out=top[0].data.reshape(outer, dim, inner))

    def backward(self, top, propagate_down, bottom):
        outer, dim, inner = self.dims
        if propagate_down[0] and bottom[0] is not top[0]:
            bottom[0].diff[...] = top[0].diff
        learned = len(bottom) == 1
        if (learned and self.param_propagate_down[0]) or (not learned and propagate_down[1]):
            db = top[0].diff.reshape(outer, dim, inner).sum(axis=(0, 2))
            target = self._bias(bottom).diff.reshape(-1)
            if learned:
                target += db
            else:
                target[...] = db

    # -- GPU ---------------------------------------------------------------------
    def forward_gpu(self, bottom, top):
        outer, dim, inner = self.dims
        b = self._bias(bottom).gpu_data.reshape(1, dim, 1)
        _cupy().add(bottom[0].gpu_data.reshape(outer, dim, inner), b,
                    out=top[0].gpu_data.reshape(outer, dim, inner))

    def backward_gpu(self, top, propagate_down, bottom):
        outer, dim, inner = self.dims
        if propagate_down[0] and bottom[0] is not top[0]:
            bottom[0].gpu_diff[...] = top[0].gpu_diff
        learned = len(bottom) == 1
        if (learned and self.param_propagate_down[0]) or (not learned and propagate_down[1]):
            db = top[0].gpu_diff.reshape(outer, dim, inner).sum(axis=(0, 2))
            target = self._bias(bottom).gpu_diff.reshape(-1)
            if learned:
                target += db
            else:
                target[...] = db


@register_layer('Scale')
class ScaleLayer(Layer):
    """Multiplies by a scale broadcast over the input, optionally adds a bias (Caffe's ScaleLayer).

    bottoms: x; optionally s (else s is a learned blob of shape x.shape[axis:axis+num_axes],
             scale_param { axis (1) num_axes (1; -1 = to the end) filler (constant 1) }).
    top: y = x * s [+ b] (bias_term: a learned b of s's shape, bias_filler), same shape as x.
    blobs: [s if learned], [b if bias_term].
    backward: dx = dy * s;  ds = sum over outer/inner axes of dy * x  (x before an
              in-place overwrite);  db = sum of dy.
    Caffe's quirks kept: ds is assigned for a bottom s and accumulated for a learned s,
    except when s has as many elements as x (then it is assigned); and the product
    dy * x is staged in bottom[0]'s diff, which therefore holds it when x needs no
    gradient.
    """
    supports_in_place = True
    min_num_bottom = 1
    max_num_bottom = 2
    exact_num_top = 1

    def setup(self, bottom, top):
        p = self.layer_param.scale_param
        has_bias = p.bias_term
        given = len(self.blobs)
        if len(bottom) == 1 and given == 0:
            blob = Blob(_param_shape(self, bottom[0], p.axis, p.num_axes, 'scale'))
            filler = p.filler if p.HasField('filler') else pb.FillerParameter(type='constant', value=1)
            fill(blob, filler, context=self.name)
            self.blobs.append(blob)
        if has_bias:
            # Caffe's internal Bias layer: same axis; spans the scale blob's axes.
            num_axes = bottom[1].num_axes() if len(bottom) > 1 else p.num_axes
            if len(self.blobs) + len(bottom) < 3:
                blob = Blob(_param_shape(self, bottom[0], p.axis, num_axes, 'bias'))
                fill(blob, p.bias_filler, context=self.name)
                self.blobs.append(blob)
            self.bias_index = len(self.blobs) - 1
        else:
            self.bias_index = None
        self.param_propagate_down = [True] * len(self.blobs)

    def _scale(self, bottom):
        return bottom[1] if len(bottom) > 1 else self.blobs[0]

    def reshape(self, bottom, top):
        axis = self.layer_param.scale_param.axis
        self.dims = _broadcast_dims(self, bottom[0], self._scale(bottom), axis, 'scale')
        if self.bias_index is not None:
            _broadcast_dims(self, bottom[0], self.blobs[self.bias_index], axis, 'bias')
        if top[0] is not bottom[0]:
            top[0].reshape(bottom[0].shape)

    def forward(self, bottom, top):
        outer, dim, inner = self.dims
        x = bottom[0].data.reshape(outer, dim, inner)
        if top[0] is bottom[0]:
            self.saved_x = x.copy()      # the scale gradient needs x after it is overwritten
        y = top[0].data.reshape(outer, dim, inner)
        np.multiply(x, self._scale(bottom).data.reshape(1, dim, 1), out=y)
        if self.bias_index is not None:
            y += self.blobs[self.bias_index].data.reshape(1, dim, 1)

    def backward(self, top, propagate_down, bottom):
        outer, dim, inner = self.dims
        dy = top[0].diff.reshape(outer, dim, inner)
        scale = self._scale(bottom)
        learned = len(bottom) == 1
        if self.bias_index is not None and self.param_propagate_down[self.bias_index]:
            self.blobs[self.bias_index].diff.reshape(-1)[...] += dy.sum(axis=(0, 2))
        if (learned and self.param_propagate_down[0]) or (not learned and propagate_down[1]):
            in_place = top[0] is bottom[0]
            x = self.saved_x if in_place else bottom[0].data.reshape(outer, dim, inner)
            product = dy * x
            ds = product.sum(axis=(0, 2))
            if scale.count == bottom[0].count or not learned:
                scale.diff.reshape(-1)[...] = ds
            else:
                scale.diff.reshape(-1)[...] += ds
            if not in_place and scale.count != bottom[0].count:
                bottom[0].diff.reshape(outer, dim, inner)[...] = product
        if propagate_down[0]:
            np.multiply(dy, scale.data.reshape(1, dim, 1),
                        out=bottom[0].diff.reshape(outer, dim, inner))

    # -- GPU: forward/backward on the device, Caffe's quirks included ----------------
    def forward_gpu(self, bottom, top):
        """As forward; in place x is copied on the device for the scale gradient."""
        outer, dim, inner = self.dims
        x = bottom[0].gpu_data.reshape(outer, dim, inner)
        if top[0] is bottom[0]:
            self._gpu_saved_x = x.copy()
        y = top[0].gpu_data.reshape(outer, dim, inner)
        _cupy().multiply(x, self._scale(bottom).gpu_data.reshape(1, dim, 1), out=y)
        if self.bias_index is not None:
            y += self.blobs[self.bias_index].gpu_data.reshape(1, dim, 1)

    def backward_gpu(self, top, propagate_down, bottom):
        outer, dim, inner = self.dims
        dy = top[0].gpu_diff.reshape(outer, dim, inner)
        scale = self._scale(bottom)
        learned = len(bottom) == 1
        if self.bias_index is not None and self.param_propagate_down[self.bias_index]:
            db = self.blobs[self.bias_index].gpu_diff.reshape(-1)
            db += dy.sum(axis=(0, 2))
        if (learned and self.param_propagate_down[0]) or (not learned and propagate_down[1]):
            in_place = top[0] is bottom[0]
            x = self._gpu_saved_x if in_place else bottom[0].gpu_data.reshape(outer, dim, inner)
            product = dy * x
            ds = product.sum(axis=(0, 2))
            target = scale.gpu_diff.reshape(-1)
            if scale.count == bottom[0].count or not learned:
                target[...] = ds
            else:
                target += ds
            if not in_place and scale.count != bottom[0].count:
                bottom[0].gpu_diff.reshape(outer, dim, inner)[...] = product
        if propagate_down[0]:
            _cupy().multiply(dy, scale.gpu_data.reshape(1, dim, 1),
                             out=bottom[0].gpu_diff.reshape(outer, dim, inner))


@register_layer('MVN')
class MVNLayer(Layer):
    """Mean-variance normalization (Caffe's MVNLayer).

    bottom: x (N, C, ...); top: y, same shape.  Statistics per (n, c) over the
    spatial axes, or per n over (C, spatial) with across_channels.
    forward:  y = x - mean(x); with normalize_variance (default true)
              y = (x - mean(x)) / (sqrt(mean((x - mean)^2)) + eps)   (eps 1e-9, added
              to the standard deviation as Caffe does)
    backward: normalize_variance: dx = (dy - mean(dy) - y * mean(dy * y)) / (std + eps)
              otherwise:          dx = dy - mean(dy)
    """
    supports_in_place = True
    exact_num_bottom = 1
    exact_num_top = 1

    def reshape(self, bottom, top):
        top[0].reshape(bottom[0].shape)

    def _rows(self, a):
        shape = a.shape
        n = shape[0] if self.layer_param.mvn_param.across_channels else shape[0] * (
            shape[1] if len(shape) > 1 else 1)
        return a.reshape(n, a.size // n if n else 0)      # (n = 0: an empty batch)

    def forward(self, bottom, top):
        p = self.layer_param.mvn_param
        x = self._rows(bottom[0].data)
        if x.size == 0:                 # an empty batch: nothing to normalize
            return
        y = x - x.mean(axis=1, keepdims=True, dtype=np.float32)
        if p.normalize_variance:
            var = (y * y).mean(axis=1, keepdims=True, dtype=np.float32)
            self.sigma = np.sqrt(var) + np.float32(p.eps)
            y /= self.sigma
        self._rows(top[0].data)[...] = y

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dy = self._rows(top[0].diff)
        if dy.size == 0:
            return
        mean_dy = dy.mean(axis=1, keepdims=True, dtype=np.float32)
        if self.layer_param.mvn_param.normalize_variance:
            y = self._rows(top[0].data)
            mean_dy_y = (dy * y).mean(axis=1, keepdims=True, dtype=np.float32)
            dx = (dy - mean_dy - y * mean_dy_y) / self.sigma
        else:
            dx = dy - mean_dy
        self._rows(bottom[0].diff)[...] = dx

    # -- GPU ---------------------------------------------------------------------
    def forward_gpu(self, bottom, top):
        p = self.layer_param.mvn_param
        cp = _cupy()
        x = self._rows(bottom[0].gpu_data)
        y = x - x.mean(axis=1, keepdims=True, dtype=cp.float32)
        if p.normalize_variance:
            var = (y * y).mean(axis=1, keepdims=True, dtype=cp.float32)
            self._gpu_sigma = cp.sqrt(var) + np.float32(p.eps)
            y /= self._gpu_sigma
        self._rows(top[0].gpu_data)[...] = y

    def backward_gpu(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        cp = _cupy()
        dy = self._rows(top[0].gpu_diff)
        mean_dy = dy.mean(axis=1, keepdims=True, dtype=cp.float32)
        if self.layer_param.mvn_param.normalize_variance:
            y = self._rows(top[0].gpu_data)
            mean_dy_y = (dy * y).mean(axis=1, keepdims=True, dtype=cp.float32)
            dx = (dy - mean_dy - y * mean_dy_y) / self._gpu_sigma
        else:
            dx = dy - mean_dy
        self._rows(bottom[0].gpu_diff)[...] = dx
