"""Local response normalization (Caffe's LRNLayer)."""
import numpy as np

from .. import cmath
from ..blob import DTYPE
from ..im2col import in_blocks, parallel_for, workspace
from ..protoio import pb
from .base import Layer, register_layer
from .pooling import (PoolGeometry, ave_pool_backward, ave_pool_forward, padded_input_workspace,
                      pooled_shape)

_f = DTYPE


_SAXPY_BLOCK = 32

# Images are normalized in blocks of about this many values: large enough that
# the per-channel loop's numpy calls are few (13x13 maps), small enough that the
# temporaries -- 12 bytes a value -- stay in the last-level cache (55x55 maps).
BLOCK_ELEMS = 1 << 20


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
    supports_in_place = True
    static_reshape = True
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
            out = pooled_shape(s[2:], (n, n), (1, 1), (p, p))
            self.geom = PoolGeometry(s[2:], (n, n), (1, 1), (p, p), out)
            self._geom_key = s[2:]
        if top[0] is not bottom[0]:
            top[0].reshape(s)

    def workspace_shapes(self, bottom, top):
        s = bottom[0].shape
        if self.region == pb.LRNParameter.WITHIN_CHANNEL:
            return [padded_input_workspace(s, self.geom, 'the zero-padded squares (local_size %d)'
                                           % self.size)]
        # the squares in channels zero-padded by local_size - 1, in float64 (_across_forward)
        return [('the channel-padded squares (local_size %d)' % self.size,
                 (s[0], s[1] + self.size - 1, s[2] * s[3]), np.float64)]

    # ---------------------------------------------------------------- across
    def _across_forward(self, x, y, scale, powed):
        # Caffe's exact order: scale starts at k, the first channel adds the
        # window's squares one by one (caffe_axpy with alpha/size), each next
        # channel copies the previous one, adds the square entering the window
        # and subtracts the one leaving it.  OpenBLAS's saxpy uses fused
        # multiply-adds on blocks of 32 elements of each H*W plane and a plain
        # multiply then add on the rest (see _saxpy).  Summed any other way the
        # last bit differs, and nets with huge activations (LRCN without mean
        # subtraction) amplify that into visible differences.
        # Here every term a x^2 is formed up front as saxpy rounds it -- the
        # exact product (a double) on the fused head, the float product on the
        # tail -- so each saxpy is one double add rounded to float, the same
        # numbers as _saxpy's, done for all images at once per channel.
        N, C = x.shape[:2]
        hw = int(np.prod(x.shape[2:], dtype=np.int64))
        size, pre = self.size, self.pre_pad
        a = _f(self.alpha / size)
        n1 = (hw // _SAXPY_BLOCK) * _SAXPY_BLOCK
        sq = x.reshape(N, C, hw) * x.reshape(N, C, hw)
        q = np.zeros((N, C + size - 1, hw), np.float64)  # term entering at channel c - pre
        np.multiply(sq[..., :n1], np.float64(a), out=q[:, pre:pre + C, :n1])
        np.multiply(sq[..., n1:], a, out=q[:, pre:pre + C, n1:])   # float product
        sc = scale.reshape(N, C, hw)
        acc = sc[:, 0]
        acc[...] = _f(self.k)
        for c in range(size):
            np.add(acc, q[:, c], out=acc)                # double add, rounded to float
        for c in range(1, C):
            cur = sc[:, c]
            np.add(sc[:, c - 1], q[:, c + size - 1], out=cur)
            np.subtract(cur, q[:, c - 1], out=cur)
        cmath.powf(scale, -self.beta, out=powed)   # Caffe: caffe_powx (powf)
        np.multiply(x, powed, out=y)

    def _across_backward(self, x, y, dy, scale, powed, dx):
        # Caffe's order: ratio = dy y / s (caffe_mul, caffe_div) in zero-padded
        # channels; a running window sum over channels that adds the ratio entering
        # the window and subtracts the one leaving it (saxpy with +-1: exact float
        # adds); dx = dy s^-beta, then dx -= 2 alpha beta / n * x * window sum
        # (Caffe: saxpy, whose fused multiply-add on blocks of 32 rounds the product
        # once less than this float multiply-add: emulating it as the forward does
        # would double the time for a last-bit difference that nothing amplifies
        # here).  A direct window sum rounds differently, and with huge or infinite
        # ratios the running sum's cancellations (inf - inf = NaN in later channels)
        # are what Caffe computes.
        N, C = x.shape[:2]
        hw = int(np.prod(x.shape[2:], dtype=np.int64))
        size, pre = self.size, self.pre_pad
        padded = workspace('lrn_ratio', (N, C + size - 1, hw))
        padded[:, :pre] = 0
        padded[:, pre + C:] = 0
        ratio = padded[:, pre:pre + C]
        np.multiply(dy.reshape(N, C, hw), y.reshape(N, C, hw), out=ratio)
        ratio /= scale.reshape(N, C, hw)
        accum = workspace('lrn_accum', (N, hw))
        accum[...] = 0
        for c in range(size - 1):
            accum += padded[:, c]
        # the running sum alone runs channel by channel (two adds each), keeping
        # channel c's window sum; the products with x then run over all channels
        # at once -- the same float operations on each element as channel by channel
        window = workspace('lrn_window', (N, C, hw))
        with np.errstate(invalid='ignore', over='ignore'):
            for c in range(C):
                np.add(accum, padded[:, c + size - 1], out=window[:, c])
                np.subtract(window[:, c], padded[:, c], out=accum)
            d = dx.reshape(N, C, hw)
            np.multiply(dy.reshape(N, C, hw), powed.reshape(N, C, hw), out=d)   # dy s^-beta
            window *= x.reshape(N, C, hw)
            window *= _f(-2.0 * self.alpha * self.beta / self.size)
            d += window

    # ---------------------------------------------------------------- within
    def _within_forward(self, x, y, base, p):
        a = ave_pool_forward(x * x, self.geom)
        np.multiply(a, _f(self.alpha), out=base)
        base += _f(1)
        cmath.powf(base, -self.beta, out=p)
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
            self.kept_array('scale', x.shape)
            self.kept_array('powed', x.shape)

            def part(lo, hi):
                self._across_forward(x[lo:hi], y[lo:hi], self.scale[lo:hi], self.powed[lo:hi])
        else:
            self.kept_array('a_base', x.shape)
            self.kept_array('p', x.shape)

            def part(lo, hi):
                self._within_forward(x[lo:hi], y[lo:hi], self.a_base[lo:hi], self.p[lo:hi])
        # images in cache-sized blocks: the temporaries (doubles among them) stay in cache
        parallel_for(N, in_blocks(part, int(np.prod(x.shape[1:])), BLOCK_ELEMS), x.size)

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
                                      self.powed[lo:hi], dx[lo:hi])
        else:
            def part(lo, hi):
                self._within_backward(x[lo:hi], dy[lo:hi], self.a_base[lo:hi], self.p[lo:hi],
                                      dx[lo:hi])
        parallel_for(N, in_blocks(part, int(np.prod(x.shape[1:])), BLOCK_ELEMS), x.size)

    # -- GPU: ACROSS_CHANNELS with Caffe's kernels (kernels/lrn.cu), WITHIN_CHANNEL
    #    as on the CPU with the average-pooling kernels ---------------------------
    def forward_gpu(self, bottom, top):
        from ..gpu.backend import cupy_module
        from ..gpu.kernels import launch
        cp = cupy_module()
        x = bottom[0].gpu_data
        if top[0] is bottom[0]:
            x = x.copy()                # backward needs the input
        self._gx = x
        y = top[0].gpu_data
        N, C, H, W = x.shape
        if self.region == pb.LRNParameter.ACROSS_CHANNELS:
            self._gscale = cp.empty(x.shape, dtype=_f)
            launch('lrn', 'lrn_fill_scale', N * H * W,
                   (N * H * W, x, N, C, H, W, self.size, self.alpha / self.size, self.k,
                    self._gscale))
            launch('lrn', 'lrn_compute_output', x.size, (x.size, x, self._gscale, -self.beta, y))
        else:
            a = cp.empty(x.shape, dtype=_f)
            launch('pooling', 'ave_pool_forward', a.size,
                   (a.size, x * x) + self._within_args(x) + (a,))
            a *= _f(self.alpha)
            a += _f(1)
            self._gbase = a
            self._gp = cp.power(a, _f(-self.beta))
            cp.multiply(x, self._gp, out=y)

    def _within_args(self, x):
        g, n, p = self.geom, self.size, self.pre_pad
        return (x.shape[1], g.H, g.W) + g.out + (n, n, 1, 1, p, p)

    def backward_gpu(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        from ..gpu.backend import cupy_module
        from ..gpu.kernels import launch
        cp = cupy_module()
        x, y = self._gx, top[0].gpu_data
        dy = top[0].gpu_diff
        if top[0] is bottom[0]:
            dy = dy.copy()              # the kernel reads dy ahead of writing dx
        dx = bottom[0].gpu_diff
        N, C, H, W = x.shape
        if self.region == pb.LRNParameter.ACROSS_CHANNELS:
            launch('lrn', 'lrn_compute_diff', N * H * W,
                   (N * H * W, x, y, self._gscale, dy, N, C, H, W, self.size, -self.beta,
                    2.0 * self.alpha * self.beta / self.size, dx))
        else:
            da = self._gp / self._gbase
            da *= _f(-self.beta * self.alpha)
            da *= x * dy
            dsq = cp.empty(x.shape, dtype=_f)
            launch('pooling', 'ave_pool_backward', dsq.size,
                   (dsq.size, da) + self._within_args(x) + (dsq,))
            dsq *= _f(2)
            dsq *= x
            cp.add(self._gp * dy, dsq, out=dx)
