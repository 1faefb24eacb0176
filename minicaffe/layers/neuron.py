"""Neuron layers (Caffe's NeuronLayer family): one bottom, one top of the same
shape, elementwise; all but AbsVal may run in place (top named like bottom).

Each backward reads exactly the blobs Caffe's Backward_cpu reads (bottom data,
top data, top diff), so in-place use gives Caffe's numbers too.  PReLU keeps a
copy of its input when in place, as Caffe does.

ReLU, PReLU, ELU, Sigmoid, TanH, AbsVal, BNLL, Power, Exp, Log, Threshold,
Clip, Swish, Dropout.

GPU mode: every layer here has forward_gpu/backward_gpu (Threshold: forward
only, it has no gradient) evaluating the same expressions with CuPy on the
blobs' gpu_data/gpu_diff, so in-place use reads and writes the one device
buffer exactly as the CPU code does with the host one.  Dropout draws its TRAIN
mask on the device (minicaffe.rng.gpu_rng()): repeatable for a seed, but not
the CPU's mask.
"""
import numpy as np

from .. import cmath, fillers
from ..blob import Blob, DTYPE
from ..im2col import elementwise
from ..protoio import pb
from ..rng import gpu_rng, rng
from .base import Layer, register_layer

_f = DTYPE


def _cupy():
    """The cupy module (imported on first GPU use only)."""
    from ..gpu.backend import cupy_module
    return cupy_module()


class NeuronLayer(Layer):
    """Base of the elementwise layers: top has the bottom's shape."""
    exact_num_bottom = 1
    exact_num_top = 1
    supports_in_place = True      # as in Caffe (the Net refuses in-place use where False)
    static_reshape = True

    def setup(self, bottom, top):
        self.neuron_setup(bottom, top)

    def neuron_setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        if top[0] is not bottom[0]:
            top[0].reshape(bottom[0].shape)


@register_layer('ReLU')
class ReLULayer(NeuronLayer):
    """Rectified linear unit (leaky when negative_slope != 0).

    forward:  y = max(x, 0) + negative_slope * min(x, 0)
    backward: dx = dy * (1[x > 0] + negative_slope * 1[x <= 0])
              (x is the bottom data, i.e. y when in place, as in Caffe)
    shapes:   x (any) -> y (same)
    Non-finite inputs as Caffe's CPU expressions give them: y(NaN) = NaN,
    y(-inf) = NaN when negative_slope is 0 (0 * -inf), dx(NaN) = dy * 0.
    """

    def neuron_setup(self, bottom, top):
        self.slope = float(self.layer_param.relu_param.negative_slope)

    def forward(self, bottom, top):
        x, y = bottom[0].data.reshape(-1), top[0].data.reshape(-1)
        slope = _f(self.slope)

        def part(lo, hi):
            if slope == 0:
                xs = x[lo:hi]
                # (found before the maximum: in place it overwrites x)
                low = xs.min() if xs.size else 0          # NaN when a NaN is present
                neg_inf = (xs == -np.inf) if not low > -np.inf else None
                np.maximum(xs, 0, out=y[lo:hi])
                if neg_inf is not None:
                    y[lo:hi][neg_inf] = np.nan                 # Caffe: 0 + 0 * -inf
            else:
                y[lo:hi] = np.where(x[lo:hi] > 0, x[lo:hi], x[lo:hi] * slope)
        elementwise(part, x.size)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        x, dy, dx = bottom[0].data.reshape(-1), top[0].diff.reshape(-1), bottom[0].diff.reshape(-1)
        slope = _f(self.slope)

        def part(lo, hi):
            if slope == 0:
                np.multiply(dy[lo:hi], x[lo:hi] > 0, out=dx[lo:hi])
            else:       # NaN is neither > 0 nor <= 0: its factor is 0, as in Caffe
                factor = (x[lo:hi] > 0).astype(_f)
                factor += slope * (x[lo:hi] <= 0)
                np.multiply(dy[lo:hi], factor, out=dx[lo:hi])
        elementwise(part, x.size)

    # -- GPU: the same expressions on the device arrays -------------------------
    def forward_gpu(self, bottom, top):
        """As forward on gpu_data; in place (top is bottom) the max writes over x."""
        cp = _cupy()
        x, y = bottom[0].gpu_data, top[0].gpu_data
        # Caffe's kernel: x > 0 ? x : x * slope (so -inf * 0 is NaN here too)
        y[...] = cp.where(x > 0, x, x * _f(self.slope))

    def backward_gpu(self, top, propagate_down, bottom):
        """dx from the bottom data (y when in place: the same sign test, as Caffe)."""
        if not propagate_down[0]:
            return
        cp = _cupy()
        x, dy, dx = bottom[0].gpu_data, top[0].gpu_diff, bottom[0].gpu_diff
        if self.slope == 0:
            cp.multiply(dy, x > 0, out=dx)
        else:
            dx[...] = dy * ((x > 0) + _f(self.slope) * (x <= 0))


@register_layer('PReLU')
class PReLULayer(NeuronLayer):
    """Parametric ReLU with a learned slope per channel (axis 1) or one shared slope.

    forward:  y = max(x, 0) + a_c * min(x, 0)        (c = channel of the element)
    backward: da_c += sum over the elements of channel c of dy * x * 1[x <= 0]
              dx = dy * (1[x > 0] + a_c * 1[x <= 0])
    blobs:    a, shape (C,) or () with channel_shared; filler default constant 0.25
    shapes:   x (N, C, ...) with at least 2 axes -> y (same)
    In place, the input is copied before forward (Caffe's bottom_memory_).
    """

    def neuron_setup(self, bottom, top):
        p = self.layer_param.prelu_param
        x = bottom[0]
        self.check(x.num_axes() >= 2, 'bottom must have at least 2 axes (N, C, ...), got shape %s'
                   % (x.shape,))
        channels = x.shape[1]
        self.channel_shared = bool(p.channel_shared)
        if len(self.blobs) == 0:
            blob = Blob(() if self.channel_shared else (channels,))
            if p.HasField('filler'):
                fillers.fill(blob, p.filler, context=self.name)
            else:
                fp = pb.FillerParameter()
                fp.type = 'constant'
                fp.value = 0.25
                fillers.fill(blob, fp, context=self.name)
            self.blobs.append(blob)
        want = 1 if self.channel_shared else channels
        self.check(self.blobs[0].count == want,
                   'negative slope blob has %d values but %s needs %d'
                   % (self.blobs[0].count,
                      'channel_shared' if self.channel_shared else 'one per channel', want))
        self._saved = None

    def reshape(self, bottom, top):
        self.check(bottom[0].num_axes() >= 2, 'bottom must have at least 2 axes (N, C, ...), got'
                   ' shape %s' % (bottom[0].shape,))
        NeuronLayer.reshape(self, bottom, top)

    def _slope(self, x):
        a = self.blobs[0].data
        if self.channel_shared:
            return a.reshape(())
        return a.reshape((1, -1) + (1,) * (x.ndim - 2))

    def forward(self, bottom, top):
        x = bottom[0].data
        if top[0] is bottom[0]:
            self._saved = x.copy()
            x = self._saved
        a = self._slope(x)
        # Caffe: max(x, 0) + a * min(x, 0), with std::max/min (NaN in, NaN out)
        with np.errstate(invalid='ignore'):
            top[0].data[...] = np.where(x < 0, _f(0), x) + a * np.where(_f(0) < x, _f(0), x)

    def backward(self, top, propagate_down, bottom):
        x = self._saved if top[0] is bottom[0] else bottom[0].data
        dy = top[0].diff
        # parameter gradient first: in place, writing dx overwrites dy
        if self.param_propagate_down and self.param_propagate_down[0]:
            with np.errstate(invalid='ignore'):
                g = dy * x * (x <= 0)          # as Caffe: NaN or inf inputs give NaN
            if self.channel_shared:
                self.blobs[0].diff[...] += g.sum(dtype=np.float64).astype(_f)
            else:
                axes = (0,) + tuple(range(2, x.ndim))
                self.blobs[0].diff[...] += g.sum(axis=axes, dtype=np.float64).astype(_f)
        if propagate_down[0]:
            with np.errstate(invalid='ignore'):
                bottom[0].diff[...] = dy * ((x > 0) + self._slope(x) * (x <= 0))

    # -- GPU -------------------------------------------------------------------
    def _gpu_slope(self, x):
        a = self.blobs[0].gpu_data
        if self.channel_shared:
            return a.reshape(())
        return a.reshape((1, -1) + (1,) * (x.ndim - 2))

    def forward_gpu(self, bottom, top):
        """As forward; in place the input is copied on the device for backward."""
        cp = _cupy()
        x = bottom[0].gpu_data
        if top[0] is bottom[0]:
            x = self._gpu_saved = x.copy()
        top[0].gpu_data[...] = cp.where(x > 0, x, x * self._gpu_slope(x))

    def backward_gpu(self, top, propagate_down, bottom):
        """Slope gradient (summed in float64 as on the CPU) first, then dx."""
        cp = _cupy()
        x = self._gpu_saved if top[0] is bottom[0] else bottom[0].gpu_data
        dy = top[0].gpu_diff
        if self.param_propagate_down and self.param_propagate_down[0]:
            g = dy * x * (x <= 0)
            da = self.blobs[0].gpu_diff
            if self.channel_shared:
                da += g.sum(dtype=cp.float64).astype(_f)
            else:
                axes = (0,) + tuple(range(2, x.ndim))
                da += g.sum(axis=axes, dtype=cp.float64).astype(_f)
        if propagate_down[0]:
            bottom[0].gpu_diff[...] = dy * ((x > 0) + self._gpu_slope(x) * (x <= 0))


@register_layer('ELU')
class ELULayer(NeuronLayer):
    """Exponential linear unit.

    forward:  y = x if x > 0 else alpha * (exp(x) - 1)
    backward: dx = dy if x > 0 else dy * (y + alpha)
    shapes:   x (any) -> y (same)
    """

    def neuron_setup(self, bottom, top):
        self.alpha = _f(self.layer_param.elu_param.alpha)

    def forward(self, bottom, top):
        x = bottom[0].data
        neg = self.alpha * (cmath.expf(np.minimum(x, 0)) - 1)
        top[0].data[...] = np.maximum(x, 0) + neg

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        x = bottom[0].data
        dy = top[0].diff
        # Caffe's CPU expression: dy * (1[x > 0] + (alpha + y) * 1[x <= 0]), so that
        # x = +inf gives NaN ((alpha + inf) * 0) and x = NaN gives NaN
        with np.errstate(invalid='ignore'):
            bottom[0].diff[...] = dy * ((x > 0) + (top[0].data + self.alpha) * (x <= 0))

    def forward_gpu(self, bottom, top):
        cp = _cupy()
        x = bottom[0].gpu_data
        neg = self.alpha * (cp.exp(cp.minimum(x, _f(0))) - _f(1))
        top[0].gpu_data[...] = cp.maximum(x, _f(0)) + neg

    def backward_gpu(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        cp = _cupy()
        x, dy = bottom[0].gpu_data, top[0].gpu_diff
        bottom[0].gpu_diff[...] = cp.where(x > 0, dy, dy * (top[0].gpu_data + self.alpha))


@register_layer('Sigmoid')
class SigmoidLayer(NeuronLayer):
    """Logistic sigmoid.

    forward:  y = 1 / (1 + exp(-x))  (computed as 0.5 * tanh(0.5 x) + 0.5 in double, as
              Caffe's C++ does: its literals are doubles)
    backward: dx = dy * y * (1 - y)  (the last factor in double, as Caffe's 1. - y)
    shapes:   x (any) -> y (same)
    """

    def forward(self, bottom, top):
        cmath.sigmoid(bottom[0].data, out=top[0].data)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            y = top[0].data
            dyy = top[0].diff * y
            bottom[0].diff[...] = dyy * (1.0 - y.astype(np.float64))

    def forward_gpu(self, bottom, top):
        cp = _cupy()
        t = cp.tanh(bottom[0].gpu_data * _f(0.5))
        t *= _f(0.5)
        t += _f(0.5)
        top[0].gpu_data[...] = t

    def backward_gpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            y = top[0].gpu_data
            bottom[0].gpu_diff[...] = top[0].gpu_diff * y * (_f(1) - y)


@register_layer('TanH')
class TanHLayer(NeuronLayer):
    """Hyperbolic tangent.

    forward:  y = tanh(x)
    backward: dx = dy * (1 - y^2)
    shapes:   x (any) -> y (same)
    """

    def forward(self, bottom, top):
        cmath.tanhf(bottom[0].data, out=top[0].data)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            y = top[0].data
            bottom[0].diff[...] = top[0].diff * (1 - y * y)

    def forward_gpu(self, bottom, top):
        _cupy().tanh(bottom[0].gpu_data, out=top[0].gpu_data)

    def backward_gpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            y = top[0].gpu_data
            bottom[0].gpu_diff[...] = top[0].gpu_diff * (_f(1) - y * y)


@register_layer('AbsVal')
class AbsValLayer(NeuronLayer):
    """Absolute value (not in place).

    forward:  y = |x|
    backward: dx = sign(x) * dy   (sign(0) = 0)
    shapes:   x (any) -> y (same)
    """
    supports_in_place = False

    def forward(self, bottom, top):
        np.abs(bottom[0].data, out=top[0].data)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            x = bottom[0].data
            sign = (x > 0).astype(_f)          # Caffe's caffe_cpu_sign: (0 < x) - (x < 0),
            sign -= x < 0                      # so sign(NaN) = 0 (np.sign gives NaN)
            np.multiply(sign, top[0].diff, out=bottom[0].diff)

    def forward_gpu(self, bottom, top):
        _cupy().abs(bottom[0].gpu_data, out=top[0].gpu_data)

    def backward_gpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            cp = _cupy()
            x = bottom[0].gpu_data
            sign = (x > 0).astype(_f) - (x < 0)      # caffe_gpu_sign: sign(NaN) = 0
            cp.multiply(sign, top[0].gpu_diff, out=bottom[0].gpu_diff)


_BNLL_THRESHOLD = 50.0


@register_layer('BNLL')
class BNLLLayer(NeuronLayer):
    """Binomial normal log likelihood (softplus).

    forward:  y = x + log(1 + exp(-x)) if x > 0 else log(1 + exp(x))
    backward: dx = dy * e / (e + 1), e = exp(min(x, 50))
    shapes:   x (any) -> y (same)
    As Caffe's C++: exp of a float (expf), then ``1. +``, the log and the division
    in double, rounded to float at the end.
    """

    def forward(self, bottom, top):
        x = bottom[0].data
        v = np.log(1.0 + cmath.expf(-np.abs(x)).astype(np.float64))
        top[0].data[...] = np.where(x > 0, x + v, v)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            e = cmath.expf(np.minimum(bottom[0].data, _f(_BNLL_THRESHOLD)))
            bottom[0].diff[...] = (top[0].diff * e) / (e.astype(np.float64) + 1.0)

    def forward_gpu(self, bottom, top):
        cp = _cupy()
        x = bottom[0].gpu_data
        top[0].gpu_data[...] = cp.maximum(x, _f(0)) + cp.log1p(cp.exp(-cp.abs(x)))

    def backward_gpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            cp = _cupy()
            e = cp.exp(cp.minimum(bottom[0].gpu_data, _f(_BNLL_THRESHOLD)))
            bottom[0].gpu_diff[...] = top[0].gpu_diff * e / (e + _f(1))


@register_layer('Power')
class PowerLayer(NeuronLayer):
    """Power function.

    forward:  y = (shift + scale * x)^power
              (power * scale == 0: y = 1 if power == 0 else shift^power)
    backward: dx = dy * power * scale * (shift + scale * x)^(power - 1), computed as Caffe:
              power * scale == 0 -> 0;  power == 1 -> dy * scale;
              power == 2 -> dy * (2 scale^2 x + 2 scale shift);
              shift == 0 -> dy * power * y / x;  else dy * power * scale * y / (shift + scale x)
    shapes:   x (any) -> y (same)
    """

    def neuron_setup(self, bottom, top):
        p = self.layer_param.power_param
        self.power = _f(p.power)
        self.scale = _f(p.scale)
        self.shift = _f(p.shift)
        self.diff_scale = _f(self.power * self.scale)

    def forward(self, bottom, top):
        if self.diff_scale == 0:
            value = _f(1) if self.power == 0 else np.power(self.shift, self.power)
            top[0].data[...] = value
            return
        v = bottom[0].data
        if self.scale != 1:
            v = v * self.scale
        if self.shift != 0:
            v = v + self.shift
        if self.power != 1:
            v = cmath.powf(v, self.power)               # Caffe's caffe_powx: powf
        top[0].data[...] = v

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        if self.diff_scale == 0:
            bottom[0].diff[...] = 0
            return
        dy = top[0].diff
        if self.power == 1:
            bottom[0].diff[...] = dy * self.diff_scale
            return
        x = bottom[0].data
        with np.errstate(invalid='ignore', divide='ignore'):
            if self.power == 2:
                g = x * _f(self.diff_scale * self.scale)
                if self.shift != 0:
                    g += _f(self.diff_scale * self.shift)
            elif self.shift == 0:
                g = top[0].data / x
                g *= self.power
            else:
                d = x * self.scale if self.scale != 1 else x.copy()
                if self.shift != 0:
                    d += self.shift
                g = top[0].data / d
                if self.diff_scale != 1:
                    g *= self.diff_scale
            bottom[0].diff[...] = dy * g

    # -- GPU: the same cases as forward/backward, on the device ------------------
    def forward_gpu(self, bottom, top):
        cp = _cupy()
        if self.diff_scale == 0:
            value = _f(1) if self.power == 0 else np.power(self.shift, self.power)
            top[0].gpu_data.fill(value)
            return
        v = bottom[0].gpu_data
        if self.scale != 1:
            v = v * self.scale
        if self.shift != 0:
            v = v + self.shift
        if self.power != 1:
            v = cp.power(v, self.power)
        top[0].gpu_data[...] = v

    def backward_gpu(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        if self.diff_scale == 0:
            bottom[0].gpu_diff.fill(0)
            return
        dy = top[0].gpu_diff
        if self.power == 1:
            bottom[0].gpu_diff[...] = dy * self.diff_scale
            return
        x = bottom[0].gpu_data
        if self.power == 2:
            g = x * _f(self.diff_scale * self.scale)
            if self.shift != 0:
                g += _f(self.diff_scale * self.shift)
        elif self.shift == 0:
            g = top[0].gpu_data / x
            g *= self.power
        else:
            d = x * self.scale if self.scale != 1 else x.copy()
            if self.shift != 0:
                d += self.shift
            g = top[0].gpu_data / d
            if self.diff_scale != 1:
                g *= self.diff_scale
        bottom[0].gpu_diff[...] = dy * g


def _log_base(layer, base):
    if base != -1:
        layer.check(base > 0, 'base must be strictly positive (or -1 for e), got %g' % base)
    log_base = 1.0 if base == -1 else float(np.log(_f(base)))
    layer.check(np.isfinite(log_base), 'log(base) = log(%g) is not finite' % base)
    return log_base


@register_layer('Exp')
class ExpLayer(NeuronLayer):
    """Exponential.

    forward:  y = base^(shift + scale * x)   (base -1 means e)
              = outer * exp(inner * x), inner = ln(base) * scale, outer = base^shift
    backward: dx = dy * y * inner
    shapes:   x (any) -> y (same)
    """

    def neuron_setup(self, bottom, top):
        p = self.layer_param.exp_param
        base = float(_f(p.base))
        log_base = _log_base(self, base)
        self.inner_scale = _f(log_base * _f(p.scale))
        shift = _f(p.shift)
        if shift == 0:
            self.outer_scale = _f(1)
        elif base != -1:
            self.outer_scale = _f(np.power(np.float64(base), np.float64(shift)))
        else:
            self.outer_scale = _f(np.exp(np.float64(shift)))

    def forward(self, bottom, top):
        x = bottom[0].data
        y = cmath.expf(x if self.inner_scale == 1 else x * self.inner_scale)
        if self.outer_scale != 1:
            y *= self.outer_scale
        top[0].data[...] = y

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        g = top[0].data * top[0].diff
        if self.inner_scale != 1:
            g *= self.inner_scale
        bottom[0].diff[...] = g

    def forward_gpu(self, bottom, top):
        cp = _cupy()
        x = bottom[0].gpu_data
        y = cp.exp(x if self.inner_scale == 1 else x * self.inner_scale)
        if self.outer_scale != 1:
            y *= self.outer_scale
        top[0].gpu_data[...] = y

    def backward_gpu(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        g = top[0].gpu_data * top[0].gpu_diff
        if self.inner_scale != 1:
            g *= self.inner_scale
        bottom[0].gpu_diff[...] = g


@register_layer('Log')
class LogLayer(NeuronLayer):
    """Logarithm.

    forward:  y = log_base(shift + scale * x)   (base -1 means e)
    backward: dx = dy * scale / (ln(base) * (shift + scale * x))
    shapes:   x (any) -> y (same)
    """

    def neuron_setup(self, bottom, top):
        p = self.layer_param.log_param
        base = float(_f(p.base))
        log_base = _log_base(self, base)
        self.check(log_base != 0, 'base must not be 1 (1/log(base) is infinite)')
        self.base_scale = _f(1.0 / _f(log_base))
        self.scale = _f(p.scale)
        self.shift = _f(p.shift)
        self.backward_num_scale = _f(self.scale / _f(log_base))

    def _inner(self, x):
        v = x * self.scale if self.scale != 1 else x
        if self.shift != 0:
            v = v + self.shift
        return v

    def forward(self, bottom, top):
        with np.errstate(invalid='ignore', divide='ignore'):
            y = cmath.logf(self._inner(bottom[0].data))
        if self.base_scale != 1:
            y *= self.base_scale
        top[0].data[...] = y

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        with np.errstate(invalid='ignore', divide='ignore'):
            g = _f(1) / self._inner(bottom[0].data)
        if self.backward_num_scale != 1:
            g *= self.backward_num_scale
        bottom[0].diff[...] = top[0].diff * g

    def forward_gpu(self, bottom, top):
        y = _cupy().log(self._inner(bottom[0].gpu_data))
        if self.base_scale != 1:
            y *= self.base_scale
        top[0].gpu_data[...] = y

    def backward_gpu(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        g = _f(1) / self._inner(bottom[0].gpu_data)
        if self.backward_num_scale != 1:
            g *= self.backward_num_scale
        bottom[0].gpu_diff[...] = top[0].gpu_diff * g


@register_layer('Threshold')
class ThresholdLayer(NeuronLayer):
    """Step function (no backward).

    forward:  y = 1 if x > threshold else 0
    shapes:   x (any) -> y (same)
    """

    def neuron_setup(self, bottom, top):
        self.threshold = _f(self.layer_param.threshold_param.threshold)

    def forward(self, bottom, top):
        np.greater(bottom[0].data, self.threshold, out=top[0].data, casting='unsafe')

    def forward_gpu(self, bottom, top):
        """No backward_gpu: Threshold has no gradient (the CPU backward refuses)."""
        top[0].gpu_data[...] = (bottom[0].gpu_data > self.threshold).astype(_f)


@register_layer('Clip')
class ClipLayer(NeuronLayer):
    """Clip values to [min, max].

    forward:  y = max(min, min(x, max))
    backward: dx = dy * 1[min <= x <= max]
    shapes:   x (any) -> y (same)
    """

    def neuron_setup(self, bottom, top):
        p = self.layer_param.clip_param
        self.check(self.layer_param.HasField('clip_param') and p.HasField('min') and p.HasField('max'),
                   'clip_param { min: ... max: ... } is required')
        self.lo = _f(p.min)
        self.hi = _f(p.max)

    def forward(self, bottom, top):
        # std::max(min, std::min(x, max)): std::min(NaN, max) is NaN, and
        # std::max(min, NaN) is min -- Caffe's CPU clips NaN to min
        x = bottom[0].data
        m = np.where(self.hi < x, self.hi, x)
        top[0].data[...] = np.where(self.lo < m, m, self.lo)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            x = bottom[0].data
            np.multiply(top[0].diff, (x >= self.lo) & (x <= self.hi), out=bottom[0].diff)

    def forward_gpu(self, bottom, top):
        cp = _cupy()
        # Caffe's kernel: fmaxf(min, fminf(x, max)) -- NaN becomes max on the GPU
        top[0].gpu_data[...] = cp.fmax(self.lo, cp.fmin(bottom[0].gpu_data, self.hi))

    def backward_gpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            cp = _cupy()
            x = bottom[0].gpu_data
            cp.multiply(top[0].gpu_diff, (x >= self.lo) & (x <= self.hi), out=bottom[0].gpu_diff)


@register_layer('Swish')
class SwishLayer(NeuronLayer):
    """Swish.

    forward:  s = sigmoid(beta * x), y = x * s
    backward: dx = dy * (beta * y + s * (1 - beta * y))
    shapes:   x (any) -> y (same)
    """

    def neuron_setup(self, bottom, top):
        self.beta = _f(self.layer_param.swish_param.beta)
        self._sig = None

    def forward(self, bottom, top):
        x = bottom[0].data
        s = cmath.sigmoid(x * self.beta)           # Caffe's SigmoidLayer on beta x
        self._sig = s
        top[0].data[...] = x * s

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            by = self.beta * top[0].data
            bottom[0].diff[...] = top[0].diff * (by + self._sig * (1 - by))

    def forward_gpu(self, bottom, top):
        """Keeps sigmoid(beta x) on the device for backward (x may be overwritten)."""
        cp = _cupy()
        x = bottom[0].gpu_data
        s = cp.tanh(x * (self.beta * _f(0.5)))
        s *= _f(0.5)
        s += _f(0.5)
        self._gpu_sig = s
        top[0].gpu_data[...] = x * s

    def backward_gpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            by = self.beta * top[0].gpu_data
            bottom[0].gpu_diff[...] = top[0].gpu_diff * (by + self._gpu_sig * (_f(1) - by))


@register_layer('Dropout')
class DropoutLayer(NeuronLayer):
    """Dropout (inverted: scaled at train time).

    TRAIN forward:  m ~ Bernoulli(1 - p) per element (drawn from minicaffe.rng),
                    y = x * m / (1 - p)
    TRAIN backward: dx = dy * m / (1 - p)
    TEST:           y = x, dx = dy
    p = dropout_ratio (default 0.5), 0 <= p < 1.
    shapes:   x (any) -> y (same)
    """

    def neuron_setup(self, bottom, top):
        self.ratio = float(self.layer_param.dropout_param.dropout_ratio)
        self.check(0.0 <= self.ratio < 1.0,
                   'dropout_ratio must be in [0, 1), got %g' % self.ratio)
        self.scale = _f(1.0 / (1.0 - self.ratio))
        self._mask = None

    def forward(self, bottom, top):
        if self.phase == pb.TRAIN:
            x = bottom[0].data
            keep = rng().random(x.shape, dtype=np.float32) < np.float32(1.0 - self.ratio)
            self._mask = keep.astype(_f) * self.scale
            np.multiply(x, self._mask, out=top[0].data)
        elif top[0] is not bottom[0]:
            top[0].data[...] = bottom[0].data

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        if self.phase == pb.TRAIN:
            np.multiply(top[0].diff, self._mask, out=bottom[0].diff)
        elif top[0] is not bottom[0]:
            bottom[0].diff[...] = top[0].diff

    # -- GPU ---------------------------------------------------------------------
    # The mask is drawn on the device from minicaffe.rng.gpu_rng() (seeded by
    # set_random_seed, so repeatable), with the CPU's rule and scale; the draws
    # themselves differ from the CPU generator's, as Caffe's curand masks differ
    # from its CPU masks.
    def forward_gpu(self, bottom, top):
        """TRAIN: y = x * m / (1 - p), m ~ Bernoulli(1 - p) drawn on the device; TEST: y = x."""
        if self.phase == pb.TRAIN:
            cp = _cupy()
            x = bottom[0].gpu_data
            keep = gpu_rng().random_sample(x.shape, dtype=cp.float32) < _f(1.0 - self.ratio)
            self._gpu_mask = keep.astype(_f) * self.scale
            cp.multiply(x, self._gpu_mask, out=top[0].gpu_data)
        elif top[0] is not bottom[0]:
            top[0].gpu_data[...] = bottom[0].gpu_data

    def backward_gpu(self, top, propagate_down, bottom):
        """TRAIN: dx = dy * (the forward's mask) / (1 - p); TEST: dx = dy."""
        if not propagate_down[0]:
            return
        if self.phase == pb.TRAIN:
            _cupy().multiply(top[0].gpu_diff, self._gpu_mask, out=bottom[0].gpu_diff)
        elif top[0] is not bottom[0]:
            bottom[0].gpu_diff[...] = top[0].gpu_diff
