"""Local response normalization (Caffe's LRNLayer)."""
import numpy as np

from ..blob import DTYPE
from ..im2col import parallel_for
from ..protoio import pb
from .base import Layer, register_layer
from .pooling import PoolGeometry, ave_pool_backward, ave_pool_forward, pooled_size

_f = DTYPE


_SAXPY_BLOCK = 32


def _saxpy(a, x, y):
    """y += a * x along the last axis, rounded as OpenBLAS's saxpy: a fused
    multiply-add (exact product, one rounding) on the first multiple of 32
    elements, a float multiply then add on the tail."""
    n1 = (x.shape[-1] // _SAXPY_BLOCK) * _SAXPY_BLOCK
    if n1:
        fused = np.float64(a) * x[..., :n1].astype(np.float64)
        fused += y[..., :n1]
        y[..., :n1] = fused
    if n1 < x.shape[-1]:
        y[..., n1:] += a * x[..., n1:]


@register_layer('LRN')
class LRNLayer(Layer):
    """Local response normalization over a 4-D blob (N, C, H, W).

    ACROSS_CHANNELS (default), n = local_size (odd), channels zero-padded:
      forward:  s_c = k + alpha/n * sum_{c' = c-(n-1)/2}^{c+(n-1)/2} x_{c'}^2;  y = x s^-beta
      backward: dx_c = dy_c s_c^-beta
                       - 2 alpha beta / n * x_c * sum_{c' in window(c)} dy_{c'} y_{c'} / s_{c'}
    WITHIN_CHANNEL (Caffe's internal Split/Power/Pooling/Power/Eltwise net):
      forward:  a = AVE-pool(x^2; n x n window, pad (n-1)/2, stride 1)
                  (the divisor is always n^2: padding counts),
                p = (1 + alpha a)^-beta,  y = x p
      backward: dp = x dy,  da = -alpha beta p / (1 + alpha a) dp,
                dx = p dy + 2 x AVE-pool-backward(da)
    shapes:   x (N, C, H, W) -> y (N, C, H, W)
    """
    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom, top):
        lp = self.layer_param.lrn_param
        self.size = int(lp.local_size)
        self.check(self.size % 2 == 1, 'LRN only supports odd values for local_size (got %d)'
                   % self.size)
        self.pre_pad = (self.size - 1) // 2
        self.alpha = float(lp.alpha)
        self.beta = float(lp.beta)
        self.k = float(lp.k)
        self.region = lp.norm_region
        self.check(self.region in (pb.LRNParameter.ACROSS_CHANNELS,
                                   pb.LRNParameter.WITHIN_CHANNEL),
                   'Unknown normalization region.')
        self._geom_key = None

    def reshape(self, bottom, top):
        s = bottom[0].shape
        self.check(len(s) == 4, 'Input must have 4 axes, corresponding to (num, channels,'
                   ' height, width); got shape %s' % (s,))
        if self.region == pb.LRNParameter.WITHIN_CHANNEL and s[2:] != self._geom_key:
            n, p = self.size, self.pre_pad
            out = tuple(pooled_size(d, n, 1, p) for d in s[2:])
            self.geom = PoolGeometry(s[2:], (n, n), (1, 1), (p, p), out)
            self._geom_key = s[2:]
        if top[0] is not bottom[0]:
            top[0].reshape(s)

    # ---------------------------------------------------------------- across
    def _window_sum(self, a):
        """sum over the channel window of a (N, C, H, W), zero-padded channels."""
        N, C = a.shape[:2]
        padded = np.zeros((N, C + self.size - 1) + a.shape[2:], _f)
        padded[:, self.pre_pad:self.pre_pad + C] = a
        acc = padded[:, 0:C].copy()
        for j in range(1, self.size):
            acc += padded[:, j:j + C]
        return acc

    def _across_forward(self, x, y, scale):
        # Caffe's exact order: scale starts at k, the first channel adds the
        # window's squares one by one (caffe_axpy with alpha/size), each next
        # channel copies the previous one, adds the square entering the window
        # and subtracts the one leaving it.  OpenBLAS's saxpy uses fused
        # multiply-adds on blocks of 32 elements of each H*W plane and a plain
        # multiply then add on the rest; _saxpy rounds the same way.  Summed any
        # other way the last bit differs, and nets with huge activations (LRCN
        # without mean subtraction) amplify that into visible differences.
        N, C = x.shape[:2]
        hw = int(np.prod(x.shape[2:], dtype=np.int64))
        pre = self.pre_pad
        a = _f(self.alpha / self.size)
        sq = np.zeros((N, C + self.size - 1, hw), _f)
        np.multiply(x, x, out=sq[:, pre:pre + C].reshape(x.shape))
        acc = np.full((N, hw), _f(self.k), _f)
        sc = scale.reshape(N, C, hw)
        for c in range(self.size):
            _saxpy(a, sq[:, c], acc)
        sc[:, 0] = acc
        for c in range(1, C):
            _saxpy(a, sq[:, c + self.size - 1], acc)
            _saxpy(-a, sq[:, c - 1], acc)
            sc[:, c] = acc
        np.multiply(x, np.power(scale, _f(-self.beta)), out=y)

    def _across_backward(self, x, y, dy, scale, dx):
        ratio = dy * y
        ratio /= scale
        accum = self._window_sum(ratio)
        accum *= x
        accum *= _f(2.0 * self.alpha * self.beta / self.size)
        d = dy * np.power(scale, _f(-self.beta))
        np.subtract(d, accum, out=dx)

    # ---------------------------------------------------------------- within
    def _within_forward(self, x, y, base, p):
        a = ave_pool_forward(x * x, self.geom)
        np.multiply(a, _f(self.alpha), out=base)
        base += _f(1)
        np.power(base, _f(-self.beta), out=p)
        np.multiply(x, p, out=y)

    def _within_backward(self, x, dy, base, p, dx):
        dp = x * dy                                   # power output's gradient
        da = p / base
        da *= _f(-self.beta * self.alpha)
        da *= dp                                      # pooled squares' gradient
        dsq = ave_pool_backward(da, self.geom)
        dsq *= _f(2)
        dsq *= x
        d = p * dy                                    # product input's gradient
        np.add(d, dsq, out=dx)

    def forward(self, bottom, top):
        x = bottom[0].data
        self.x = x.copy() if top[0] is bottom[0] else None
        x = self.x if self.x is not None else x
        y = top[0].data
        N = x.shape[0]
        if self.region == pb.LRNParameter.ACROSS_CHANNELS:
            self.scale = np.empty(x.shape, _f)

            def part(lo, hi):
                self._across_forward(x[lo:hi], y[lo:hi], self.scale[lo:hi])
        else:
            self.a_base = np.empty(x.shape, _f)
            self.p = np.empty(x.shape, _f)

            def part(lo, hi):
                self._within_forward(x[lo:hi], y[lo:hi], self.a_base[lo:hi], self.p[lo:hi])
        parallel_for(N, part, x.size)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        x = self.x if self.x is not None else bottom[0].data
        dy = top[0].diff
        y = top[0].data
        dx = bottom[0].diff
        N = x.shape[0]
        if self.region == pb.LRNParameter.ACROSS_CHANNELS:
            def part(lo, hi):
                self._across_backward(x[lo:hi], y[lo:hi], dy[lo:hi], self.scale[lo:hi],
                                      dx[lo:hi])
        else:
            def part(lo, hi):
                self._within_backward(x[lo:hi], dy[lo:hi], self.a_base[lo:hi], self.p[lo:hi],
                                      dx[lo:hi])
        parallel_for(N, part, x.size)
