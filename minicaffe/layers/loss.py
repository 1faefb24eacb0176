"""Loss layers and Accuracy, computing what BVLC Caffe's loss layers compute.

Every loss layer (Caffe's LossLayer) has a scalar top of shape () holding the
loss; the Net gives top 0 a default loss weight of 1 and seeds the top's diff
with that weight, which each backward multiplies in (``top[0].diff``), as Caffe
does.  Bottom 0 and bottom 1 must agree in their first dimension.  Label
inputs cannot be backpropagated to (``allow_force_backward`` is False for
them), and are read as Caffe reads them: ``static_cast<int>`` of the float,
i.e. truncated towards zero.  A label outside ``[0, C)`` that is not the
``ignore_label`` raises an error naming the layer (Caffe only DCHECKs it and
reads out of bounds in a release build).

Normalisation (LossParameter.normalization; the loss and its gradient are
divided by ``max(1, n)``):  FULL n = outer*inner; VALID n = number of
non-ignored labels; BATCH_SIZE n = outer; NONE n = 1.  The legacy
``normalize`` bool is used only when ``normalization`` is not set:
true -> VALID, false -> BATCH_SIZE.

GPU mode (forward_gpu/backward_gpu): SoftmaxWithLoss (kernels/softmax.cu),
EuclideanLoss, SigmoidCrossEntropyLoss and Accuracy (forward only) compute on
the blobs' device arrays.  The Net reads the loss from ``top[0].gpu_data`` and
seeds ``top[0].gpu_diff`` with the loss weight, so backward_gpu takes the weight
from the device (no host round trip), scaled as the CPU path scales it.  Labels
are checked on the device; a bad one raises the same error as on the CPU.
"""
import numpy as np

from .. import cmath
from ..blob import DTYPE
from ..errors import DataSourceError, MinicaffeError, layer_context
from ..protoio import pb
from .base import Layer, register_layer
from .common import softmax

FLT_MIN = np.float32(np.finfo(np.float32).tiny)   # C's FLT_MIN, 1.175494e-38
LOG_THRESHOLD = np.float32(1e-20)                  # Caffe's kLOG_THRESHOLD

_NORM = pb.LossParameter


def _scalar(arr):
    return float(np.asarray(arr).reshape(-1)[0])


def _per_item(total, num):
    """total / num in floating point, as Caffe's Dtype division by the batch size:
    an empty batch (num = 0; Caffe's Blob allows it) gives NaN or inf, not an
    exception."""
    with np.errstate(divide='ignore', invalid='ignore'):
        return np.float64(total) / np.float64(num)


def _cupy():
    from ..gpu.backend import cupy_module
    return cupy_module()


def _gpu_scale(cp, top, divisor, sign=1.0):
    """DTYPE(sign * w / divisor) as a 0-d device array, with w the loss weight read
    from the top's device diff: rounded exactly as the CPU paths round it."""
    return (top[0].gpu_diff.astype(cp.float64) * sign / divisor).astype(DTYPE)


def read_labels(layer, values, num_classes, ignore_label=None, axis_note=''):
    """Labels as Caffe reads them (truncated to int).

    Returns (labels, valid): ``labels`` int64 with ignored entries set to 0,
    ``valid`` a bool mask of the non-ignored entries.  Raises when a
    non-ignored label is outside [0, num_classes).
    """
    t = np.trunc(np.asarray(values, np.float64))
    if ignore_label is not None:
        valid = t != ignore_label
    else:
        valid = np.ones(t.shape, bool)
    ok = (t >= 0) & (t < num_classes)
    bad = valid & ~ok
    if bad.any():
        pos = tuple(int(p) for p in np.argwhere(bad)[0])
        flat = int(np.ravel_multi_index(pos, t.shape)) if t.ndim else 0
        ign = (' and is not the ignore_label %d' % ignore_label) if ignore_label is not None else ''
        raise layer.error('label value %g (element %d of the label blob) is outside [0, %d), the'
                          ' number of classes%s%s'
                          % (float(np.asarray(values).reshape(-1)[flat]), flat, num_classes,
                             axis_note, ign))
    labels = np.where(valid & ok, t, 0).astype(np.int64)
    return labels, valid


class _LossBase(Layer):
    """Caffe's LossLayer: two bottoms (predictions, labels), one scalar top."""
    exact_num_bottom = 2
    exact_num_top = 1
    is_loss = True
    auto_top_blobs = True
    static_reshape = True

    def allow_force_backward(self, bottom_index):
        return bottom_index != 1

    def check_first_dims(self, bottom):
        for i in (0, 1):
            self.check(bottom[i].num_axes() >= 1,
                       'bottom %d must have at least one axis, got shape %s' % (i, bottom[i].shape))
        self.check(bottom[0].shape[0] == bottom[1].shape[0],
                   'the data and label should have the same first dimension; got shapes %s and %s'
                   % (bottom[0].shape, bottom[1].shape))

    def reshape(self, bottom, top):
        self.check_first_dims(bottom)
        top[0].reshape(())

    def canonical_axis(self, blob, axis, what='axis'):
        try:
            return blob.canonical_axis(axis)
        except ValueError:
            raise self.error('%s %d is out of range for bottom of shape %s (%d axes)'
                             % (what, axis, blob.shape, blob.num_axes())) from None

    def legacy(self, blob, which, index):
        try:
            return getattr(blob, which)
        except ValueError:
            raise self.error('bottom %d has %d axes; this layer takes blobs of at most 4 axes'
                             % (index, blob.num_axes())) from None

    def refuse_label_backward(self, propagate_down, indices=(1,)):
        for i in indices:
            if i < len(propagate_down) and propagate_down[i]:
                raise self.error('cannot backpropagate to label inputs (bottom %d)' % i)

    def read_normalization(self, default=None):
        """Caffe's rule: ``normalization`` if set, else legacy ``normalize``, else default."""
        lp = self.layer_param.loss_param
        if lp.HasField('normalization'):
            return lp.normalization
        if lp.HasField('normalize'):
            return _NORM.VALID if lp.normalize else _NORM.BATCH_SIZE
        return lp.normalization if default is None else default

    @staticmethod
    def normalizer(mode, outer, inner, valid_count):
        if mode == _NORM.FULL:
            n = outer * inner
        elif mode == _NORM.VALID:
            n = outer * inner if valid_count == -1 else valid_count
        elif mode == _NORM.BATCH_SIZE:
            n = outer
        elif mode == _NORM.NONE:
            n = 1
        else:
            raise MinicaffeError('unknown normalization mode %r' % (mode,))
        return max(1.0, float(np.float32(n)))


# --------------------------------------------------------------------------
@register_layer('SoftmaxWithLoss')
class SoftmaxWithLossLayer(_LossBase):
    """Softmax followed by the multinomial logistic loss.

    Bottoms: x (..., C, ...) with C along ``softmax_param.axis`` (default 1),
    outer = count before the axis, inner = count after it; labels with
    outer*inner values in {0..C-1} (or ``loss_param.ignore_label``).
    Tops: loss (); optional second top = the probabilities p (shape of x).

    Forward:  p = softmax(x) along the axis;
              loss = -sum_{non-ignored (i,j)} log(max(p[i, y_ij, j], FLT_MIN)) / norm.
    Backward: dx[i,c,j] = (p[i,c,j] - [c == y_ij]) * top.diff / norm, and 0 for
              ignored positions (norm per LossParameter.normalization, see module doc).
    """
    exact_num_top = -1
    min_num_top = 1
    max_num_top = 2

    def setup(self, bottom, top):
        lp = self.layer_param.loss_param
        self.ignore_label = lp.ignore_label if lp.HasField('ignore_label') else None
        self.normalization = self.read_normalization()

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        x = bottom[0]
        self.axis = self.canonical_axis(x, self.layer_param.softmax_param.axis, 'softmax_param.axis')
        self.outer = x.count_range(0, self.axis)
        self.inner = x.count_range(self.axis + 1)
        self.C = x.shape[self.axis]
        self.check(self.outer * self.inner == bottom[1].count,
                   'number of labels must match number of predictions; e.g., if softmax axis == 1'
                   ' and prediction shape is (N, C, H, W), label count (number of labels) must be'
                   ' N*H*W, with integer values in {0, 1, ..., C-1}; got prediction shape %s'
                   ' (axis %d: %d predictions) and label shape %s (%d labels)'
                   % (x.shape, self.axis, self.outer * self.inner, bottom[1].shape, bottom[1].count))
        self.check(self.C > 0 or bottom[1].count == 0, 'the softmax axis %d of prediction shape %s has'
                   ' no classes, so no label can be scored' % (self.axis, x.shape))
        if len(top) >= 2:
            top[1].reshape(x.shape)

    def forward(self, bottom, top):
        x = bottom[0].data.reshape(self.outer, self.C, self.inner)
        buf = self.kept_array('_prob_buf', x.shape)      # LSTM LMs have 70 MB here
        self.prob = softmax(x, 1, out=buf)
        labels, valid = read_labels(self, bottom[1].data.reshape(self.outer, self.inner),
                                    self.C, self.ignore_label,
                                    ' along softmax axis %d' % self.axis)
        self.labels, self.valid = labels, valid
        p_true = np.take_along_axis(self.prob, labels[:, None, :], axis=1)[:, 0, :]
        loss = -cmath.logf(np.maximum(p_true[valid], FLT_MIN)).sum(dtype=np.float64)
        self.count = int(valid.sum())
        norm = self.normalizer(self.normalization, self.outer, self.inner, self.count)
        top[0].data[...] = loss / norm
        if len(top) == 2:
            top[1].data[...] = self.prob.reshape(top[1].shape)

    def backward(self, top, propagate_down, bottom):
        self.refuse_label_backward(propagate_down)
        if not propagate_down[0]:
            return
        scale = DTYPE(_scalar(top[0].diff) / self.normalizer(self.normalization, self.outer,
                                                              self.inner, self.count))
        g = np.multiply(self.prob, scale, out=bottom[0].diff.reshape(self.prob.shape))
        o, j = np.nonzero(self.valid)
        g[o, self.labels[o, j], j] -= scale
        if self.count < self.valid.size:
            g *= self.valid[:, None, :]

    # -- GPU: kernels/softmax.cu (Caffe's softmax_loss_layer.cu) -------------------
    def forward_gpu(self, bottom, top):
        """Softmax into a device buffer, per-position loss and count in a kernel
        (count -1 marks a bad label), both summed on the device; one read of the
        sums to the host for the label check and the VALID normalizer."""
        from ..gpu.kernels import launch
        from .common import softmax_gpu
        cp = _cupy()
        shape = (self.outer, self.C, self.inner)
        prob = self.kept_array('_gpu_prob', shape, xp=cp)
        softmax_gpu(cp, bottom[0].gpu_data.reshape(shape), prob)
        n = self.outer * self.inner
        loss = cp.empty(n, dtype=DTYPE)
        counts = cp.empty(n, dtype=DTYPE)
        launch('softmax', 'softmax_loss_forward', n,
               (n, prob, bottom[1].gpu_data, loss, self.C, self.inner, *self._ignore_args(),
                counts))
        if n:
            sums = cp.stack((loss.sum(dtype=cp.float64), counts.sum(dtype=cp.float64),
                             counts.min().astype(cp.float64))).get()
        else:
            sums = (0.0, 0.0, 0.0)
        if sums[2] < 0:     # a bad label: the CPU check names it
            read_labels(self, bottom[1].data.reshape(self.outer, self.inner), self.C,
                        self.ignore_label, ' along softmax axis %d' % self.axis)
            raise AssertionError('unreachable: read_labels accepts a label the kernel refused')
        self.count = int(sums[1])
        norm = self.normalizer(self.normalization, self.outer, self.inner, self.count)
        top[0].gpu_data.fill(float(sums[0]) / norm)
        if len(top) == 2:
            top[1].gpu_data.reshape(shape)[...] = prob

    def _ignore_args(self):
        if self.ignore_label is None:
            return 0, 0
        return 1, int(self.ignore_label)

    def backward_gpu(self, top, propagate_down, bottom):
        """dx = (p - onehot(label)) * weight / norm, 0 at ignored positions."""
        self.refuse_label_backward(propagate_down)
        if not propagate_down[0]:
            return
        from ..gpu.kernels import launch
        cp = _cupy()
        shape = (self.outer, self.C, self.inner)
        dx = bottom[0].gpu_diff.reshape(shape)
        dx[...] = self._gpu_prob
        n = self.outer * self.inner
        counts = cp.empty(n, dtype=DTYPE)
        launch('softmax', 'softmax_loss_backward', n,
               (n, bottom[1].gpu_data, dx, self.C, self.inner, *self._ignore_args(), counts))
        norm = self.normalizer(self.normalization, self.outer, self.inner, self.count)
        dx *= _gpu_scale(cp, top, norm)


# --------------------------------------------------------------------------
@register_layer('EuclideanLoss')
class EuclideanLossLayer(_LossBase):
    """Euclidean (L2) loss between two inputs of the same count per item.

    Bottoms: a (N, ...), b (N, ...) with equal count(1).  Top: loss ().
    Forward:  loss = sum((a - b)^2) / N / 2.
    Backward: da = top.diff / N * (a - b);  db = -top.diff / N * (a - b).
    Both bottoms can be backpropagated to.
    """

    def allow_force_backward(self, bottom_index):
        return True

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        self.check(bottom[0].count_range(1) == bottom[1].count_range(1),
                   'inputs must have the same dimension: shapes %s and %s have %d and %d values'
                   ' per item' % (bottom[0].shape, bottom[1].shape,
                                  bottom[0].count_range(1), bottom[1].count_range(1)))

    def forward(self, bottom, top):
        self.diff = (bottom[0].data.reshape(-1) - bottom[1].data.reshape(-1)).astype(DTYPE)
        dot = np.dot(self.diff.astype(np.float64), self.diff.astype(np.float64))
        top[0].data[...] = _per_item(dot, bottom[0].shape[0]) / 2.0

    def backward(self, top, propagate_down, bottom):
        w = _scalar(top[0].diff)
        for i in (0, 1):
            if propagate_down[i]:
                sign = 1.0 if i == 0 else -1.0
                alpha = DTYPE(_per_item(sign * w, bottom[i].shape[0]))
                bottom[i].diff[...] = (alpha * self.diff).reshape(bottom[i].shape)

    # -- GPU -------------------------------------------------------------------------
    def forward_gpu(self, bottom, top):
        """d = a - b kept on the device; loss = d.d (float64) / N / 2 written on the
        device."""
        cp = _cupy()
        self._gpu_diff = cp.subtract(bottom[0].gpu_data.reshape(-1),
                                     bottom[1].gpu_data.reshape(-1))
        d64 = self._gpu_diff.astype(cp.float64)
        top[0].gpu_data[...] = cp.dot(d64, d64) / bottom[0].shape[0] / 2.0

    def backward_gpu(self, top, propagate_down, bottom):
        """da = w / N * d, db = -w / N * d (w = the loss weight on the device)."""
        cp = _cupy()
        for i in (0, 1):
            if propagate_down[i]:
                alpha = _gpu_scale(cp, top, bottom[i].shape[0], 1.0 if i == 0 else -1.0)
                cp.multiply(self._gpu_diff, alpha, out=bottom[i].gpu_diff.reshape(-1))


# --------------------------------------------------------------------------
@register_layer('SigmoidCrossEntropyLoss')
class SigmoidCrossEntropyLossLayer(_LossBase):
    """Cross-entropy loss of sigmoid(x) against targets t in [0, 1].

    Bottoms: x (N, ...), t (same count).  Top: loss ().
    Forward (Caffe's numerically stable form, over non-ignored elements):
      loss = -sum [ x (t - [x >= 0]) - log(1 + exp(x - 2 x [x >= 0])) ] / norm.
    Backward: dx = (sigmoid(x) - t) * top.diff / norm; 0 where int(t) == ignore_label.
    Normalisation: outer = N, inner = count / N; default BATCH_SIZE (unlike
    SoftmaxWithLoss) unless ``normalization`` or the legacy ``normalize`` is set.
    """

    def setup(self, bottom, top):
        lp = self.layer_param.loss_param
        self.ignore_label = lp.ignore_label if lp.HasField('ignore_label') else None
        self.normalization = self.read_normalization(default=_NORM.BATCH_SIZE)

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        self.outer = bottom[0].shape[0]
        self.inner = bottom[0].count_range(1)
        self.check(bottom[0].count == bottom[1].count,
                   'inputs must have the same count; got shapes %s (%d) and %s (%d)'
                   % (bottom[0].shape, bottom[0].count, bottom[1].shape, bottom[1].count))

    def forward(self, bottom, top):
        x = bottom[0].data.reshape(-1)
        t = bottom[1].data.reshape(-1)
        self.sig = cmath.sigmoid(x)          # Caffe's SigmoidLayer (in double)
        if self.ignore_label is not None:
            self.valid = np.trunc(t.astype(np.float64)) != self.ignore_label
        else:
            self.valid = None
        pos = (x >= 0).astype(DTYPE)
        # Caffe's expression, in float with expf and logf
        terms = x * (t - pos) - cmath.logf(DTYPE(1) + cmath.expf(x - DTYPE(2) * x * pos))
        if self.valid is not None:
            terms = terms[self.valid]
        loss = -terms.sum(dtype=np.float64)
        count = terms.size
        self.norm = self.normalizer(self.normalization, self.outer, self.inner, count)
        top[0].data[...] = loss / self.norm

    def backward(self, top, propagate_down, bottom):
        self.refuse_label_backward(propagate_down)
        if not propagate_down[0]:
            return
        g = self.sig - bottom[1].data.reshape(-1)
        if self.valid is not None:
            g = np.where(self.valid, g, DTYPE(0))
        scale = DTYPE(_scalar(top[0].diff) / self.norm)
        bottom[0].diff[...] = (g * scale).reshape(bottom[0].shape)

    # -- GPU -------------------------------------------------------------------------
    def forward_gpu(self, bottom, top):
        """The CPU formula on device arrays; the sum (float64) and the loss stay on
        the device, only VALID normalization with an ignore_label reads the count."""
        cp = _cupy()
        x = bottom[0].gpu_data.reshape(-1)
        t = bottom[1].gpu_data.reshape(-1)
        half = DTYPE(0.5)
        self._gpu_sig = half * cp.tanh(half * x) + half
        if self.ignore_label is not None:
            self._gpu_valid = cp.trunc(t.astype(cp.float64)) != self.ignore_label
        else:
            self._gpu_valid = None
        pos = (x >= 0).astype(DTYPE)
        terms = x * (t - pos) - cp.log(DTYPE(1) + cp.exp(x - DTYPE(2) * x * pos))
        if self._gpu_valid is not None:
            terms = cp.where(self._gpu_valid, terms, DTYPE(0))
        count = x.size
        if self._gpu_valid is not None and self.normalization == _NORM.VALID:
            count = int(self._gpu_valid.sum())
        self.norm = self.normalizer(self.normalization, self.outer, self.inner, count)
        top[0].gpu_data[...] = -terms.sum(dtype=cp.float64) / self.norm

    def backward_gpu(self, top, propagate_down, bottom):
        """dx = (sigmoid(x) - t) * w / norm, 0 at ignored positions."""
        self.refuse_label_backward(propagate_down)
        if not propagate_down[0]:
            return
        cp = _cupy()
        g = self._gpu_sig - bottom[1].gpu_data.reshape(-1)
        if self._gpu_valid is not None:
            g = cp.where(self._gpu_valid, g, DTYPE(0))
        cp.multiply(g, _gpu_scale(cp, top, self.norm), out=bottom[0].gpu_diff.reshape(-1))


# --------------------------------------------------------------------------
@register_layer('HingeLoss')
class HingeLossLayer(_LossBase):
    """One-vs-all hinge loss (hinge_loss_param.norm L1 (default) or L2).

    Bottoms: x (N, ...) with D = count / N scores per item; labels (N values in [0, D)).
    Top: loss ().
    Forward: m[n,k] = max(0, 1 + s[n,k] x[n,k]) with s = -1 at k = label, +1 elsewhere;
             L1: loss = sum(m) / N;  L2: loss = sum(m^2) / N.
             As in Caffe, m is also written into x's diff during forward.
    Backward: L1: dx = s * sign(m) * top.diff / N;  L2: dx = 2 s m * top.diff / N.
    """

    def setup(self, bottom, top):
        self.norm = self.layer_param.hinge_loss_param.norm

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        self.num = bottom[0].shape[0]
        self.check(self.num > 0, 'bottom 0 has no items (shape %s)' % (bottom[0].shape,))
        self.dim = bottom[0].count // self.num
        self.check(bottom[1].count == self.num,
                   'needs one label per item: %d items but the label blob %s holds %d values'
                   % (self.num, bottom[1].shape, bottom[1].count))

    def forward(self, bottom, top):
        labels, _ = read_labels(self, bottom[1].data.reshape(-1), self.dim)
        self.labels = labels
        rows = np.arange(self.num)
        m = bottom[0].data.reshape(self.num, self.dim).copy()
        m[rows, labels] *= -1
        m = np.maximum(DTYPE(0), DTYPE(1) + m)
        self.margins = m
        bottom[0].diff[...] = m.reshape(bottom[0].shape)   # Caffe uses x's diff as scratch
        if self.norm == pb.HingeLossParameter.L2:
            loss = np.dot(m.reshape(-1).astype(np.float64), m.reshape(-1).astype(np.float64))
        else:
            loss = np.abs(m).sum(dtype=np.float64)
        top[0].data[...] = loss / self.num

    def backward(self, top, propagate_down, bottom):
        self.refuse_label_backward(propagate_down)
        if not propagate_down[0]:
            return
        g = self.margins.copy()
        g[np.arange(self.num), self.labels] *= -1
        w = _scalar(top[0].diff)
        if self.norm == pb.HingeLossParameter.L2:
            g = g * DTYPE(w * 2 / self.num)
        else:
            g = np.sign(g) * DTYPE(w / self.num)
        bottom[0].diff[...] = g.reshape(bottom[0].shape)


# --------------------------------------------------------------------------
@register_layer('ContrastiveLoss')
class ContrastiveLossLayer(_LossBase):
    """Contrastive loss for pairs (Hadsell, Chopra, LeCun 2006).

    Bottoms: a (N, C, 1, 1), b (N, C, 1, 1), sim (N values; int(sim) != 0 = similar).
    Top: loss ().  d = a - b, d2 = ||d||^2, m = contrastive_loss_param.margin.
    Forward:  loss = sum_n [ sim: d2 ;  else: max(m - sqrt(d2), 0)^2
                            (legacy_version: max(m - d2, 0)) ] / N / 2.
    Backward (alpha = +-top.diff / N for a / b):
      similar: alpha d;  dissimilar: beta d if mdist > 0 else 0, with
      mdist = m - sqrt(d2), beta = -alpha mdist / (sqrt(d2) + 1e-4)
      (legacy: mdist = m - d2, beta = -alpha).
    No gradient to sim.
    """
    exact_num_bottom = 3

    def allow_force_backward(self, bottom_index):
        return bottom_index != 2

    def setup(self, bottom, top):
        p = self.layer_param.contrastive_loss_param
        self.margin = DTYPE(p.margin)
        self.legacy_version = p.legacy_version

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        a, b, s = bottom
        self.check(self.legacy(a, 'channels', 0) == self.legacy(b, 'channels', 1),
                   'bottoms 0 and 1 must have the same channels; got shapes %s and %s'
                   % (a.shape, b.shape))
        for i, blob in ((0, a), (1, b)):
            self.check(self.legacy(blob, 'height', i) == 1 and self.legacy(blob, 'width', i) == 1,
                       'bottom %d must be (N, C, 1, 1); got shape %s' % (i, blob.shape))
        self.check(self.legacy(s, 'channels', 2) == 1 and self.legacy(s, 'height', 2) == 1
                   and self.legacy(s, 'width', 2) == 1,
                   'bottom 2 (the similarity labels) must be (N, 1, 1, 1); got shape %s' % (s.shape,))
        self.num = a.shape[0]
        self.check(s.count == self.num, 'needs one similarity label per pair: %d pairs but bottom 2'
                   ' holds %d values' % (self.num, s.count))
        self.channels = self.legacy(a, 'channels', 0)

    def forward(self, bottom, top):
        n, c = self.num, self.channels
        self.diff = (bottom[0].data.reshape(n, c) - bottom[1].data.reshape(n, c)).astype(DTYPE)
        self.dist_sq = np.einsum('ij,ij->i', self.diff, self.diff).astype(DTYPE)
        self.sim = np.trunc(bottom[2].data.reshape(-1).astype(np.float64)) != 0
        if self.legacy_version:
            dissim = np.maximum(self.margin - self.dist_sq, DTYPE(0))
        else:
            dist = np.maximum(self.margin - np.sqrt(self.dist_sq), DTYPE(0))
            dissim = dist * dist
        per = np.where(self.sim, self.dist_sq, dissim)
        top[0].data[...] = _per_item(per.sum(dtype=np.float64), n) / 2.0

    def backward(self, top, propagate_down, bottom):
        self.refuse_label_backward(propagate_down, (2,))
        w = _scalar(top[0].diff)
        for i in (0, 1):
            if not propagate_down[i]:
                continue
            alpha = DTYPE(_per_item((1.0 if i == 0 else -1.0) * w, bottom[i].shape[0]))
            if self.legacy_version:
                mdist = self.margin - self.dist_sq
                beta = np.full(self.num, -alpha, DTYPE)
            else:
                dist = np.sqrt(self.dist_sq)
                mdist = self.margin - dist
                beta = (-alpha * mdist / (dist + DTYPE(1e-4))).astype(DTYPE)
            coef = np.where(self.sim, alpha, np.where(mdist > 0, beta, DTYPE(0))).astype(DTYPE)
            bottom[i].diff[...] = (coef[:, None] * self.diff).reshape(bottom[i].shape)


# --------------------------------------------------------------------------
@register_layer('MultinomialLogisticLoss')
class MultinomialLogisticLossLayer(_LossBase):
    """Multinomial logistic loss on given probabilities.

    Bottoms: p (N, ...) with D = count / N probabilities per item; labels
    (N values in [0, D)).  Top: loss ().
    Forward:  loss = -sum_n log(max(p[n, y_n], 1e-20)) / N.
    Backward: dp[n, y_n] = -top.diff / N / max(p[n, y_n], 1e-20); 0 elsewhere.
    """

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        self.num = bottom[0].shape[0]
        self.check(self.num > 0, 'bottom 0 has no items (shape %s)' % (bottom[0].shape,))
        self.dim = bottom[0].count // self.num
        self.check(bottom[1].count == self.num,
                   'the label blob must be (N, 1, 1, 1), one label per item: %d items but label'
                   ' shape %s' % (self.num, bottom[1].shape))

    def forward(self, bottom, top):
        self.labels, _ = read_labels(self, bottom[1].data.reshape(-1), self.dim)
        p = bottom[0].data.reshape(self.num, self.dim)
        self.p_true = np.maximum(p[np.arange(self.num), self.labels], LOG_THRESHOLD)
        top[0].data[...] = -cmath.logf(self.p_true).sum(dtype=np.float64) / self.num

    def backward(self, top, propagate_down, bottom):
        self.refuse_label_backward(propagate_down)
        if not propagate_down[0]:
            return
        scale = DTYPE(-_scalar(top[0].diff) / self.num)
        g = np.zeros((self.num, self.dim), DTYPE)
        g[np.arange(self.num), self.labels] = scale / self.p_true
        bottom[0].diff[...] = g.reshape(bottom[0].shape)


# --------------------------------------------------------------------------
@register_layer('InfogainLoss')
class InfogainLossLayer(_LossBase):
    """Softmax followed by the infogain loss (Caffe master's InfogainLossLayer).

    Bottoms: x (..., C, ...) with C along ``infogain_loss_param.axis`` (default 1);
    labels (outer*inner values); optional H (C*C values) -- otherwise H is read
    from the BlobProto file ``infogain_loss_param.source``.
    Tops: loss (); optional second top = the softmax probabilities p.
    Forward:  p = softmax(x);
              loss = -sum_{non-ignored (i,j)} sum_l H[y_ij, l] log(max(p[i,l,j], 1e-20)) / norm.
    Backward: dx[i,l,j] = (p[i,l,j] * sum_k H[y_ij, k] - H[y_ij, l]) * top.diff / norm,
              0 at ignored positions.  norm per ``loss_param.normalization``
              (default VALID; the legacy ``normalize`` field is refused, as in Caffe).
    No gradient to the labels or H.
    """
    exact_num_bottom = -1
    min_num_bottom = 2
    max_num_bottom = 3
    exact_num_top = -1
    min_num_top = 1
    max_num_top = 2

    def allow_force_backward(self, bottom_index):
        return bottom_index == 0

    def setup(self, bottom, top):
        lp = self.layer_param.loss_param
        self.ignore_label = lp.ignore_label if lp.HasField('ignore_label') else None
        self.check(not lp.HasField('normalize'),
                   'loss_param.normalize is deprecated for InfogainLoss; use "normalization"')
        self.normalization = lp.normalization
        self.H_file = None
        if len(bottom) < 3:
            ip = self.layer_param.infogain_loss_param
            self.check(ip.HasField('source'), 'infogain matrix source must be specified'
                       ' (infogain_loss_param.source, or the matrix as a third bottom)')
            from .. import protoio
            try:
                bp = protoio.read_binary(ip.source, pb.BlobProto, 'infogain matrix (.binaryproto)')
                self.H_file = protoio.blob_proto_array(bp, ip.source)
            except MinicaffeError as e:
                raise DataSourceError('%s: infogain_loss_param.source: %s'
                                      % (layer_context(self.layer_param), e)) from None

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        x = bottom[0]
        self.axis = self.canonical_axis(x, self.layer_param.infogain_loss_param.axis,
                                        'infogain_loss_param.axis')
        self.outer = x.count_range(0, self.axis)
        self.inner = x.count_range(self.axis + 1)
        self.C = x.shape[self.axis]
        self.check(self.outer * self.inner == bottom[1].count,
                   'number of labels must match number of predictions; e.g., if infogain axis == 1'
                   ' and prediction shape is (N, C, H, W), label count (number of labels) must be'
                   ' N*H*W, with integer values in {0, 1, ..., C-1}; got prediction shape %s'
                   ' (axis %d) and label shape %s' % (x.shape, self.axis, bottom[1].shape))
        h_count = bottom[2].count if len(bottom) >= 3 else self.H_file.size
        self.check(h_count == self.C * self.C,
                   'the infogain matrix must be %dx%d (%d values), got %d values'
                   % (self.C, self.C, self.C * self.C, h_count))
        if len(top) >= 2:
            top[1].reshape(x.shape)

    def _H(self, bottom):
        h = bottom[2].data if len(bottom) >= 3 else self.H_file
        return np.asarray(h, DTYPE).reshape(self.C, self.C)

    def forward(self, bottom, top):
        x = bottom[0].data.reshape(self.outer, self.C, self.inner)
        self.prob = softmax(x, 1)
        self.labels, self.valid = read_labels(
            self, bottom[1].data.reshape(self.outer, self.inner), self.C, self.ignore_label,
            ' along infogain axis %d' % self.axis)
        H = self._H(bottom)
        logp = cmath.logf(np.maximum(self.prob, LOG_THRESHOLD))         # (outer, C, inner)
        rows = H[self.labels]                                            # (outer, inner, C)
        per = np.einsum('ojc,ocj->oj', rows.astype(np.float64), logp.astype(np.float64))
        loss = -per[self.valid].sum()
        self.count = int(self.valid.sum())
        top[0].data[...] = loss / self.normalizer(self.normalization, self.outer, self.inner,
                                                  self.count)
        if len(top) == 2:
            top[1].data[...] = self.prob.reshape(top[1].shape)

    def backward(self, top, propagate_down, bottom):
        self.refuse_label_backward(propagate_down, (1, 2))
        if not propagate_down[0]:
            return
        H = self._H(bottom)
        sum_rows = H.sum(axis=1, dtype=DTYPE)
        rows = H[self.labels].transpose(0, 2, 1)                         # (outer, C, inner)
        g = self.prob * sum_rows[self.labels][:, None, :] - rows
        g *= self.valid[:, None, :]
        scale = _scalar(top[0].diff) / self.normalizer(self.normalization, self.outer,
                                                        self.inner, self.count)
        bottom[0].diff[...] = (g * DTYPE(scale)).reshape(bottom[0].shape)


# --------------------------------------------------------------------------
@register_layer('Accuracy')
class AccuracyLayer(Layer):
    """Top-k classification accuracy (not a loss; no backward).

    Bottoms: scores s (..., C, ...) with C along ``accuracy_param.axis`` (default 1);
    labels (outer*inner values).  Tops: accuracy (); optional per-class accuracy (C,).
    An item with label y (not ``ignore_label``) is correct iff
    #{k != y : s_k >= s_y} < top_k (ties count against it).
    accuracy = correct / counted (0 when nothing is counted); per-class
    accuracy[c] = correct with label c / items with label c (0 when none).
    """
    exact_num_bottom = 2
    min_num_top = 1
    max_num_top = 2

    def allow_force_backward(self, bottom_index):
        return False

    def setup(self, bottom, top):
        p = self.layer_param.accuracy_param
        self.top_k = int(p.top_k)
        self.ignore_label = p.ignore_label if p.HasField('ignore_label') else None

    def reshape(self, bottom, top):
        x, lab = bottom
        self.check(lab.count > 0, 'the label blob is empty (shape %s)' % (lab.shape,))
        self.check(self.top_k <= x.count // lab.count,
                   'top_k (%d) must be less than or equal to the number of classes (%d)'
                   % (self.top_k, x.count // lab.count))
        try:
            self.axis = x.canonical_axis(self.layer_param.accuracy_param.axis)
        except ValueError:
            raise self.error('accuracy_param.axis %d is out of range for bottom of shape %s'
                             % (self.layer_param.accuracy_param.axis, x.shape)) from None
        self.outer = x.count_range(0, self.axis)
        self.inner = x.count_range(self.axis + 1)
        self.C = x.shape[self.axis]
        self.check(self.outer * self.inner == lab.count,
                   'number of labels must match number of predictions; e.g., if label axis == 1'
                   ' and prediction shape is (N, C, H, W), label count (number of labels) must be'
                   ' N*H*W, with integer values in {0, 1, ..., C-1}; got prediction shape %s'
                   ' (axis %d) and label shape %s' % (x.shape, self.axis, lab.shape))
        top[0].reshape(())
        if len(top) > 1:
            top[1].reshape((self.C,))

    def forward(self, bottom, top):
        s = bottom[0].data.reshape(self.outer, self.C, self.inner)
        labels, valid = read_labels(self, bottom[1].data.reshape(self.outer, self.inner),
                                    self.C, self.ignore_label,
                                    ' along accuracy axis %d' % self.axis)
        s_true = np.take_along_axis(s, labels[:, None, :], axis=1)          # (outer, 1, inner)
        # -1 because the true class counts itself (a NaN score counts nothing, as in Caffe)
        better = (s >= s_true).sum(axis=1) - 1
        correct = valid & (better < self.top_k)
        count = int(valid.sum())
        top[0].data[...] = (float(np.float32(correct.sum())) / count) if count else 0.0
        if len(top) > 1:
            nums = np.bincount(labels[valid], minlength=self.C)
            hits = np.bincount(labels[correct], minlength=self.C)
            per = np.where(nums == 0, 0.0, hits / np.maximum(nums, 1))
            top[1].data[...] = per

    # -- GPU (Caffe's Accuracy has a device forward; there is no backward) ------------
    def forward_gpu(self, bottom, top):
        """The CPU rule on device arrays: labels checked on the device (a bad one
        raises the CPU's error), counts and the accuracy computed there too."""
        cp = _cupy()
        s = bottom[0].gpu_data.reshape(self.outer, self.C, self.inner)
        raw = bottom[1].gpu_data.reshape(self.outer, self.inner)
        t = cp.trunc(raw.astype(cp.float64))
        if self.ignore_label is not None:
            valid = t != self.ignore_label
        else:
            valid = cp.ones(t.shape, dtype=bool)
        if bool((valid & ~((t >= 0) & (t < self.C))).any()):
            read_labels(self, bottom[1].data.reshape(self.outer, self.inner), self.C,
                        self.ignore_label, ' along accuracy axis %d' % self.axis)
            raise AssertionError('unreachable: read_labels accepts a label the device refused')
        labels = cp.where(valid, t, 0).astype(cp.int64)
        s_true = cp.take_along_axis(s, labels[:, None, :], axis=1)
        better = (s >= s_true).sum(axis=1) - 1
        correct = valid & (better < self.top_k)
        count = valid.sum()
        hits = correct.sum().astype(DTYPE).astype(cp.float64)
        top[0].gpu_data[...] = cp.where(count > 0, hits / cp.maximum(count, 1), 0.0)
        if len(top) > 1:
            flat = labels.reshape(-1)
            nums = cp.bincount(flat, weights=valid.reshape(-1).astype(cp.float64),
                               minlength=self.C)
            hits_c = cp.bincount(flat, weights=correct.reshape(-1).astype(cp.float64),
                                 minlength=self.C)
            top[1].gpu_data[...] = cp.where(nums == 0, 0.0, hits_c / cp.maximum(nums, 1))
