"""Winograd F(2x2, 3x3) and F(4x4, 3x3) convolution (Lavin & Gray, 2015) for 3x3,
and F(2x2, 5x5) for 5x5, stride-1, dilation-1 2-D convolutions with groups:
forward, data gradient, weight gradient.  Written below for F(2x2,3x3); F(4x4)
(the Tiling F4) is the same with 4x4 output tiles, 6x6 patches at (4i, 4j), 36
points and the 6x6 / 6x3 / 4x6 matrices of Lavin & Gray (points 0, +-1, +-2):
36 multiplies per 16 outputs, 4x fewer than im2col's, but less accurate (G has
1/6 and 1/24, A^T and B^T entries up to 8 and 5: the rounding errors grow
10-25x; see tests/test_winograd.py for the measured errors).  F(2x2,5x5)
(F2_5x5: CaffeNet's conv2) has 2x2 output tiles of 6x6 patches at (2i, 2j), the
same 36 points and B^T as F(4x4,3x3), G 6x5 and A^T 2x6: 36 multiplies per 4
outputs instead of 100.  In general alpha = m + r - 1 for an r x r kernel.

The output is cut into 2x2 tiles; tile (i, j) reads the 4x4 input patch at
(2i, 2j) of the zero-padded input.  With

    B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
    G   = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]
    A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]

forward:  U = G g G^T (per filter, 4x4), V = B^T d B (per patch, 4x4),
          M[t] = U[t] @ V[t] for each of the 16 points t (one GEMM over
          channels per point and group: (K/G, C/G) @ (C/G, tiles)),
          y_tile = A^T M A (2x2).
These are exactly the products im2col + GEMM forms, in another basis: 16
multiplies per 2x2 outputs instead of 36, so the GEMMs do 2.25x fewer FLOPs.
The backward products are the exact adjoints of the forward map (so they are
the gradients of what forward computes, tile by tile):

data gradient:    D = A dy_tile A^T (4x4, from the 2x2 top-gradient tile),
                  dV[t] = U[t]^T @ D[t],  dd = B dV B^T summed over the
                  overlapping 4x4 patches into the padded input, then cropped;
weight gradient:  dU[t] = D[t] @ V[t]^T (summed over tiles by the GEMM),
                  dg = G^T dU G.

Shapes: x (N, C, H, W), g (K, C/G, r, r), y (N, K, Ho, Wo) with
Ho = H + 2 pad_h - r + 1 (likewise W); tiles th = ceil(Ho/m), tw = ceil(Wo/m);
V and D are laid out (alpha^2, G, N*th*tw, channels/G), alpha = m + r - 1,
channels innermost: the
transforms then run over long contiguous rows (CaffeNet's 13x13 maps would
give numpy 7-element inner loops otherwise) and each point's GEMM reads
contiguous matrices.  Rounding differs from Caffe's im2col sums (a different
summation order), well inside the conformance tolerance; the engine CAFFE
(ConvolutionParameter.engine) keeps Caffe's own order.

The element-wise transforms run over blocks of images split across the
worker threads (im2col.parallel_for); each image's numbers are computed the
same way whatever the split, so results do not depend on the thread count.
"""
import os

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .blas import gemm, gemm_accumulate
from .im2col import ELEMENTWISE_BLOCK, in_blocks, parallel_for, workspace
from .threads import run_chunks

_f = np.float32


class Tiling(object):
    """Winograd F(m x m, r x r): output tiles of m x m from input patches of
    alpha x alpha (alpha = m + r - 1), with the transform matrices B^T (alpha x
    alpha), G (alpha x r) and A^T (m x alpha).  Each 2-D transform X M X^T is
    two batched products over a chunk of images, by rows then by columns
    (_rows_then_columns): one pass over memory each, whatever the number of
    non-zero coefficients; the weights' transform is one product with the
    Kronecker matrix G (x) G (weight_kron)."""

    def __init__(self, m, BT, G, AT):
        self.G = np.array(G, np.float64)
        self.m, self.r = m, self.G.shape[1]
        self.alpha = m + self.r - 1
        self.points = self.alpha ** 2
        self.BT = np.array(BT, np.float64)
        self.AT = np.array(AT, np.float64)
        for name in ('BT', 'AT'):       # small integers: exact in float32
            setattr(self, name + '32', getattr(self, name).astype(_f))
        self.B32 = np.ascontiguousarray(self.BT32.T)
        self.A32 = np.ascontiguousarray(self.AT32.T)
        # the weight transform as one matrix over the r x r taps, U[(u, v)] =
        # sum_(a, b) G[u, a] G[v, b] g[a, b] (row-major points and taps), formed
        # in float64 and rounded once per entry (F(4x4)'s 1/6 and 1/24 are not
        # exact in float32)
        self.weight_kron = np.kron(self.G, self.G).astype(_f)

    def __repr__(self):
        return 'F(%dx%d,%dx%d)' % (self.m, self.m, self.r, self.r)

    def tiles(self, out_sp):
        m = self.m
        return (out_sp[0] + m - 1) // m, (out_sp[1] + m - 1) // m


# Lavin & Gray's matrices (points 0, +-1 and, for F(4x4), +-2, infinity).
F2 = Tiling(2,
            BT=[[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
            G=[[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]],
            AT=[[1, 1, 1, 0], [0, 1, -1, -1]])
F4 = Tiling(4,
            BT=[[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]],
            G=[[1 / 4., 0, 0], [-1 / 6., -1 / 6., -1 / 6.], [-1 / 6., 1 / 6., -1 / 6.],
               [1 / 24., 1 / 12., 1 / 6.], [1 / 24., -1 / 12., 1 / 6.], [0, 0, 1]],
            AT=[[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0],
                [0, 1, -1, 8, -8, 1]])
# F(2x2,5x5) on the same six points (the modified Toom-Cook construction Lavin &
# Gray use: G's row for point p is (1, p, .., p^4) / prod_{q != p} (p - q), A^T's
# columns are (1, p), the point at infinity picks the last tap / output): B^T,
# which depends on the points only, is F(4x4,3x3)'s.  36 multiplies per 4
# outputs instead of 100: 2.8x fewer, with A^T's entries at most 2.
F2_5x5 = Tiling(2,
                BT=F4.BT,
                G=[[1 / 4., 0, 0, 0, 0], [-1 / 6.] * 5, [-1 / 6., 1 / 6., -1 / 6., 1 / 6., -1 / 6.],
                   [1 / 24., 1 / 12., 1 / 6., 1 / 3., 2 / 3.],
                   [1 / 24., -1 / 12., 1 / 6., -1 / 3., 2 / 3.], [0, 0, 0, 0, 1]],
                AT=[[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 1]])
# F(3x3,4x4) on the same points, for the 4x4 phases of a 7x7 or 8x8 kernel at
# stride 2 (Phases): 36 multiplies per 9 outputs instead of 144.
F3_4x4 = Tiling(3,
                BT=F4.BT,
                G=[[1 / 4., 0, 0, 0], [-1 / 6.] * 4, [-1 / 6., 1 / 6., -1 / 6., 1 / 6.],
                   [1 / 24., 1 / 12., 1 / 6., 1 / 3.], [1 / 24., -1 / 12., 1 / 6., -1 / 3.],
                   [0, 0, 0, 1]],
                AT=[[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 1]])
# the one tile for each kernel size other than 3x3
SINGLE_TILE = {(5, 5): F2_5x5, (4, 4): F3_4x4}
# MINICAFFE_CONV_ENGINE: 'winograd' uses Winograd wherever applicable (the tile
# chosen by shape, choose_tiling), 'winograd2' / 'winograd4' with that tile,
# 'caffe' never; unset, the DEFAULT engine picks by shape (prefer_winograd,
# choose_tiling).  The tests set FORCE to run the conformance cases under each.
FORCE = os.environ.get('MINICAFFE_CONV_ENGINE', '').strip().lower() or None
FORCE_VALUES = ('winograd', 'winograd2', 'winograd4', 'caffe')

# Below these channel counts per group the GEMMs are too thin for the saved
# multiplies to pay for the transforms' memory passes (measured on CaffeNet
# conv3-5, see benchmarks/bench_winograd.py).
MIN_CHANNELS = 32
MIN_OUTPUTS = 32

# Whether the DEFAULT engine also runs backward by Winograd (else by im2col +
# GEMM, the exact gradients of the same convolution).  With minicaffe's thread
# pool and the one-thread BLAS, benchmarks/bench_winograd.py measured both passes
# faster on CaffeNet conv3-5 (forward 1.15-1.23x, backward 1.29-1.34x); with
# OpenBLAS's own threads under load the backward had lost.
DEFAULT_BACKWARD = True


def sub_kernel(kernel, stride):
    """The kernel of each polyphase component of a strided convolution: per axis
    ceil(k / s) taps (see Phases)."""
    return tuple(-(-int(k) // int(s)) for k, s in zip(kernel, stride))


def applicable(kernel, stride, dilation, pad):
    """Whether a convolution's geometry has a Winograd form here: no dilation, pad
    below the kernel, and a 3x3 or 5x5 kernel at stride 1 (F(m x m,3x3),
    F(2x2,5x5)), or a strided kernel whose polyphase components are 3x3 or 5x5
    (Phases: 11x11 stride 4, 5x5 or 6x6 stride 2, ...) or 4x4 (7x7 stride
    2: F(3x3,4x4))."""
    if len(kernel) != 2 or tuple(dilation) != (1, 1):
        return False
    if not all(0 <= p < k for p, k in zip(pad, kernel)):
        return False
    if tuple(stride) == (1, 1):
        return tuple(kernel) in ((3, 3), (5, 5))
    return sub_kernel(kernel, stride) in ((3, 3), (4, 4), (5, 5))


# -- a kernel as one stride-1 convolution of stacked inputs ------------------
# Phases (strided kernels): y[i, j] = sum_{u, v} w[u, v] xp[s i + u, s j + v]
# (xp: the zero-padded input).  Writing u = s u' + a (0 <= a < s, likewise
# v = s v' + b), this is sum_{a, b} sum_{u', v'} w_ab[u', v'] X_ab[i + u', j + v']
# with the phase images X_ab[i, j] = xp[s i + a, s j + b] and sub-kernels
# w_ab[u', v'] = w[s u' + a, s v' + b] (zero past the kernel): a stride-1
# convolution with r = ceil(k / s) taps of the s^2 phases stacked as channels.
# Winograd then does 36 multiplies per 16 outputs and stacked channel
# (F(4x4,3x3)) where im2col does k^2 per output and channel: CaffeNet's conv1
# (11x11 stride 4) 16 x 36 / 16 = 36 vs 121, the LRCN activity net's conv2 (5x5
# stride 2) 4 x 36 / 16 = 9 vs 25.
# Blocks (a 5x5 kernel at stride 1): u = 3 q + u' cuts the kernel into 2 x 2
# blocks of 3 x 3 (zero past the kernel), X_q[i, j] = xp[i + 3 q_h, j + 3 q_w]:
# F(4x4,3x3) on the 4 stacked shifts does F(2x2,5x5)'s 36 multiplies per 4
# outputs, with 4x smaller products to transform back (2.25x the output where
# F(2x2,5x5)'s are 9x).

class Stacking(object):
    """A kernel computed as the stride-1, unpadded r x r convolution of copies of
    the input stacked as channels (per group: (copy, channel)), the weights cut
    to match.  Subclasses give `counts` (copies per axis), `padded_size` (the
    zero-padded input the copies are views of), `_copy_views` (per copy, its
    view of that input), `overlapping` (whether copies share input values:
    their gradients then add), and the kernel's tap layout: `_tap_shape`,
    `_taps` and its inverse `_untaps`."""

    def __init__(self, kernel, stride, r):
        self.kernel, self.stride, self.r = tuple(kernel), tuple(stride), tuple(r)

    @property
    def copies(self):
        return self.counts[0] * self.counts[1]

    def input_size(self, out_sp):
        return tuple(o + r - 1 for o, r in zip(out_sp, self.r))

    def padded_size(self, out_sp):
        raise NotImplementedError

    def stack_input(self, x, pad, out_sp, group):
        """x (N, C, H, W) -> (N, G copies C/G, *input_size(out_sp))."""
        N, C, H, W = x.shape
        hp, wp = self.padded_size(out_sp)
        ph, pw = pad
        # every tap of every window lies inside xp, and input rows past it are
        # read by no window
        xp = _scratch('stack_xp', (N, C, hp, wp), zero=True)
        h, w = min(H, hp - ph), min(W, wp - pw)
        Cg = C // group
        views = self._copy_views(xp.reshape(N, group, Cg, hp, wp), out_sp)
        out = _scratch('stacked', (N, group) + self.counts + (Cg,) + self.input_size(out_sp))

        def part(lo, hi):
            xp[lo:hi, :, ph:ph + h, pw:pw + w] = x[lo:hi, :, :h, :w]
            for (qh, qw), view in views:
                out[lo:hi, :, qh, qw] = view[lo:hi]
        parallel_for(N, part, out.size)
        return out.reshape((N, -1) + self.input_size(out_sp))

    def unstack_input_grad(self, dxs, pad, dx, group):
        """The adjoint of stack_input: dxs -> written into dx (N, C, H, W) (input
        values no window reads get 0)."""
        N, C, H, W = dx.shape
        out_sp = tuple(n - r + 1 for n, r in zip(dxs.shape[2:], self.r))
        hp, wp = self.padded_size(out_sp)
        ph, pw = pad
        Cg = C // group
        dxp = _scratch('stack_dxp', (N, C, hp, wp))
        views = self._copy_views(dxp.reshape(N, group, Cg, hp, wp), out_sp)
        src = dxs.reshape((N, group) + self.counts + (Cg,) + dxs.shape[2:])
        h, w = min(H, hp - ph), min(W, wp - pw)

        def part(lo, hi):
            if self.overlapping:
                dxp[lo:hi] = 0
            for (qh, qw), view in views:        # (copies in order: a fixed sum)
                if self.overlapping:
                    view[lo:hi] += src[lo:hi, :, qh, qw]
                else:
                    view[lo:hi] = src[lo:hi, :, qh, qw]
            dx[lo:hi, :, :h, :w] = dxp[lo:hi, :, ph:ph + h, pw:pw + w]
            dx[lo:hi, :, h:] = 0
            dx[lo:hi, :, :, w:] = 0
        parallel_for(N, part, dxp.size)
        return dx

    def stack_weights(self, w):
        """w (K, C/G, k_h, k_w) -> the copies' r x r kernels (K, copies C/G, r_h, r_w)
        (zero past the kernel), in stack_input's channel order."""
        K, Cg = w.shape[:2]
        full = np.zeros((K, Cg) + tuple(c * r for c, r in zip(self.counts, self.r)), _f)
        full[:, :, :self.kernel[0], :self.kernel[1]] = w
        t = self._taps(full.reshape((K, Cg) + self._tap_shape()))
        return np.ascontiguousarray(t).reshape((K, self.copies * Cg) + self.r)

    def unstack_weight_grad(self, dws):
        """The adjoint of stack_weights: (K, copies C/G, r_h, r_w) -> (K, C/G, k_h, k_w)."""
        K = dws.shape[0]
        Cg = dws.shape[1] // self.copies
        full = self._untaps(dws.reshape((K,) + self.counts + (Cg,) + self.r))
        full = full.reshape((K, Cg) + tuple(c * r for c, r in zip(self.counts, self.r)))
        return np.ascontiguousarray(full[:, :, :self.kernel[0], :self.kernel[1]])


class Phases(Stacking):
    """A strided kernel: s_h s_w phase images, sub-kernels of ceil(k / s) taps."""
    overlapping = False

    def __init__(self, kernel, stride):
        Stacking.__init__(self, kernel, stride, sub_kernel(kernel, stride))
        self.counts = tuple(stride)

    def padded_size(self, out_sp):
        return tuple(s * n for s, n in zip(self.stride, self.input_size(out_sp)))

    def _copy_views(self, xp5, out_sp):
        """[((a, b), xp5[..., a::s_h, b::s_w])] over (N, G, C/G, *input_size)."""
        (sh, sw) = self.stride
        return [((a, b), xp5[..., a::sh, b::sw]) for a in range(sh) for b in range(sw)]

    def _tap_shape(self):      # u = s u' + a: (u', a) per axis
        return (self.r[0], self.stride[0], self.r[1], self.stride[1])

    @staticmethod
    def _taps(w6):             # (K, Cg, u', a, v', b) -> (K, a, b, Cg, u', v')
        return w6.transpose(0, 3, 5, 1, 2, 4)

    @staticmethod
    def _untaps(d6):           # (K, a, b, Cg, u', v') -> (K, Cg, u', a, v', b)
        return d6.transpose(0, 3, 4, 1, 5, 2)


class Blocks(Stacking):
    """A large kernel at stride 1: blocks of r x r taps, each a shifted copy."""
    overlapping = True

    def __init__(self, kernel, r=(3, 3)):
        Stacking.__init__(self, kernel, (1, 1), r)
        self.counts = tuple(-(-k // b) for k, b in zip(kernel, r))

    def padded_size(self, out_sp):
        return tuple(o - 1 + c * r for o, c, r in zip(out_sp, self.counts, self.r))

    def _copy_views(self, xp5, out_sp):
        """[((q_h, q_w), the input shifted by (r_h q_h, r_w q_w))]."""
        hh, ww = self.input_size(out_sp)
        (rh, rw) = self.r
        return [((qh, qw), xp5[..., rh * qh:rh * qh + hh, rw * qw:rw * qw + ww])
                for qh in range(self.counts[0]) for qw in range(self.counts[1])]

    def _tap_shape(self):      # u = r q + u': (q, u') per axis
        return (self.counts[0], self.r[0], self.counts[1], self.r[1])

    @staticmethod
    def _taps(w6):             # (K, Cg, q_h, u', q_w, v') -> (K, q_h, q_w, Cg, u', v')
        return w6.transpose(0, 2, 4, 1, 3, 5)

    @staticmethod
    def _untaps(d6):           # (K, q_h, q_w, Cg, u', v') -> (K, Cg, q_h, u', q_w, v')
        return d6.transpose(0, 3, 1, 4, 2, 5)


def plan(kernel, stride, out_sp):
    """(stacking, tiling) for an applicable geometry: a strided kernel by its
    Phases; a 5x5 kernel by Blocks under F(4x4,3x3) where that tile is taken
    for the map (a forced 'winograd4' included), else by F(2x2,5x5); 3x3 kernels
    directly (stacking None)."""
    kernel, stride = tuple(kernel), tuple(stride)
    if stride != (1, 1):
        phases = Phases(kernel, stride)
        return phases, choose_tiling(out_sp, phases.r)
    if kernel == (5, 5) and choose_tiling(out_sp) is F4:
        return Blocks(kernel), F4
    return None, choose_tiling(out_sp, kernel)


def prefer_winograd(channels_per_group, outputs_per_group, out_sp):
    """DEFAULT engine's choice for an applicable shape: Winograd where the GEMMs
    dominate (enough channels on both sides) and the maps are not tiny."""
    return (channels_per_group >= MIN_CHANNELS and outputs_per_group >= MIN_OUTPUTS
            and min(out_sp) >= 4)


def tile_points(tiling, out_sp):
    """Multiplies per (input, output) channel pair and image: tiles x alpha^2."""
    th, tw = tiling.tiles(out_sp)
    return th * tw * tiling.points


# F(4x4) is taken where its GEMMs do at most this fraction of F(2x2)'s multiplies
# (tiles that overhang the map waste some of its 2.25x fewer multiplies per output:
# CaffeNet's 13x13 maps give 576 vs 784, 0.73).  Its transforms (then two small
# GEMMs each, over copied-out patches) took about as long as F(2x2)'s on
# CaffeNet's conv3, and benchmarks/bench_winograd.py had F(4x4) ahead on conv3-5
# in most of three runs on the loaded 2-core machine (README, CPU speed).
F4_MAX_POINTS_RATIO = 0.8


def choose_tiling(out_sp, kernel=(3, 3)):
    """A 5x5 kernel: F(2x2,5x5), a 4x4 one (a strided kernel's phases, see
    Phases): F(3x3,4x4), the one tile for each (also under a forced
    'winograd2' / 'winograd4').  A 3x3 kernel: F(4x4) where its GEMMs save enough multiplies
    over F(2x2) (see F4_MAX_POINTS_RATIO), else F(2x2); a forced
    'winograd2'/'winograd4' wins."""
    if tuple(kernel) in SINGLE_TILE:
        return SINGLE_TILE[tuple(kernel)]
    if FORCE == 'winograd2':
        return F2
    if FORCE == 'winograd4':
        return F4
    if tile_points(F4, out_sp) <= F4_MAX_POINTS_RATIO * tile_points(F2, out_sp):
        return F4
    return F2


def transform_weights(w, group, tiling=F2, out=None):
    """U = G g G^T: w (K, C/G, r, r) -> (alpha^2, G, K/G, C/G) float32: per point
    and group, the (K/G, C/G) matrix the point's products use (forward takes its
    transpose, a BLAS flag, not a copy).  One GEMM of tiling.weight_kron (alpha^2
    x r^2) with the weights' taps as rows: the weights are read once, in their
    own order, and the output written once -- into out (a contiguous float32
    array of U's size) if given: a fresh U of CaffeNet conv3's 14 MB cost its
    page faults, as long as the product."""
    K, Cg = w.shape[:2]
    taps = np.ascontiguousarray(np.reshape(w, (K * Cg, -1)).astype(_f, copy=False).T)
    U = np.empty((tiling.points, K * Cg), _f) if out is None else out.reshape(tiling.points, -1)
    # (inner dimension r^2: MKL's short-k kernels where blas.SHORT_K applies,
    # 1.56 -> 1.18 ms on conv3's weights, 2 threads)
    gemm(tiling.weight_kron, taps, U, any_blas=True)
    return U.reshape(tiling.points, group, K // group, Cg)


def weight_gradient_from(du, tiling=F2):
    """dg = G^T dU G: du (alpha^2, G, K/G, C/G) -> (K, C/G, r, r) (a transposed
    view of the one GEMM's (r^2, K C/G) result: add it into the weights' diff)."""
    _, G, Kg, Cg = du.shape
    r = tiling.r
    taps = np.empty((r * r, G * Kg * Cg), _f)
    gemm(tiling.weight_kron, du.reshape(tiling.points, -1), taps, trans_a=True)
    return taps.T.reshape(G * Kg, Cg, r, r)


def _over_images(n, per_image, part):
    parallel_for(n, in_blocks(part, per_image, ELEMENTWISE_BLOCK), n * per_image)


def _tile_view(a, group, count, size, step):
    """a (N, H', W', C) channels-last -> writable view [u, v, g, n, i, j, c]
    = a[n, step i + u, step j + v, g C/G + c], u, v < size, i, j < count."""
    N, _, _, C = a.shape
    sN, sH, sW, sC = a.strides
    return np.lib.stride_tricks.as_strided(
        a, (size, size, group, N) + count + (C // group,),
        (sH, sW, sC * (C // group), sN, step * sH, step * sW, sC))


def _scratch(key, shape, zero=False):
    """A reused float32 work array (im2col.workspace): the transforms' arrays are
    up to 9x the size of their input or output (72 MB on CaffeNet's conv2), and a
    fresh array of that size costs the kernel's zeroing of its pages on every
    call -- as long as a pass over it."""
    a = workspace('winograd_' + key, shape)
    if zero:
        a.fill(0)
    return a


def _channels_last(x, shape, offset=(0, 0), key='x'):
    """Zero array (N, *shape, C) holding x (N, C, H, W) at offset, transposed (a
    work array named key, valid until the next call with that key)."""
    N, C, H, W = x.shape
    out = _scratch(key, (N,) + tuple(shape) + (C,), zero=True)

    def part(lo, hi):
        out[lo:hi, offset[0]:offset[0] + H, offset[1]:offset[1] + W] = \
            x[lo:hi].transpose(0, 2, 3, 1)
    parallel_for(N, part, x.size)
    return out


def _rows_then_columns(src, M, step, out):
    """out[u', v', g, n, i, j, c] = sum_(u, v) M[u', u] M[v', v]
    src[n, step i + u, step j + v, g C/G + c] (u, v < M.shape[1]): the 2-D
    transform of every patch of a channels-last src (n, H, W, C), written into
    out (alpha, alpha, G, n, th, tw, C/G) (a view).

    Two batched products, each one pass: over the rows of all patches at once
    (a row of patches is a (k, W C) matrix of src itself: no patch is copied
    out), then over each patch row's columns, written straight into out's
    strided layout.  The rows' result is a block of 1.5-2x the input, for one
    chunk of images on one thread."""
    n, H, W, C = src.shape
    a, k = M.shape
    _, _, G, _, th, tw, Cg = out.shape
    sN, sH = src.strides[:2]
    rows = as_strided(src, (n, th, k, W * C), (sN, step * sH, sH, src.strides[3]))
    T = np.matmul(M, rows).reshape(n, th, a, W, G, Cg)    # T[n, i, u', w, g, c]
    t = T.strides
    for g in range(G):
        cols = as_strided(T[:, :, :, :, g], (n, th, a, tw, k, Cg),
                          (t[0], t[1], t[2], step * t[3], t[3], t[5]))
        np.matmul(M, cols, out=out[:, :, g].transpose(2, 3, 0, 4, 1, 5))


def input_transform(x, pad, out_sp, group, out=None, tiling=F2):
    """V = B^T d B for every alpha x alpha patch: x (N, C, H, W) ->
    (alpha^2, G, N*th*tw, C/G)."""
    N, C, H, W = x.shape
    m, a = tiling.m, tiling.alpha
    th, tw = tiling.tiles(out_sp)
    # (m th + r - 1 >= H + 2 pad: the padded patch grid covers the whole image)
    xp = _channels_last(x, (m * th + a - m, m * tw + a - m), pad)
    Cg = C // group
    shape = (a, a, group, N, th, tw, Cg)
    V = np.empty(shape, _f) if out is None else out.reshape(shape)

    def part(lo, hi):
        _rows_then_columns(xp[lo:hi], tiling.BT32, m, V[:, :, :, lo:hi])
    _over_images(N, tiling.points * th * tw * C, part)
    return V.reshape(tiling.points, group, N * th * tw, Cg)


def output_transform(M, y, bias=None, tiling=F2):
    """y = A^T M A (+ bias): M (alpha^2, G, N*th*tw, K/G), contiguous (forward's
    work array) -> written into y (N, K, Ho, Wo).  By rows, then columns, as
    _rows_then_columns: the m x m output tiles do not overlap, so the second
    product is written straight into the channels-last output tiles."""
    N, K, Ho, Wo = y.shape
    _, G, _, Kg = M.shape
    m, a = tiling.m, tiling.alpha
    th, tw = tiling.tiles((Ho, Wo))
    M = np.ascontiguousarray(M).reshape(a, a, G, N, th, tw, Kg)   # (rows of (j, k) merged below)
    yl = _scratch('y', (N, m * th, m * tw, K))
    yv = _tile_view(yl, G, (th, tw), m, m)             # [u, v, g, n, i, j, k]
    b = None if bias is None else bias.reshape(G, 1, 1, 1, Kg)
    AT = tiling.AT32

    def part(lo, hi):
        n = hi - lo
        s = M.strides
        # rows: T[g, n, i, v, u, j, k] = sum_u' A^T[u, u'] M[u', v, g, n, i, j, k]
        src = as_strided(M[:, :, :, lo:hi], (G, n, th, a, a, tw * Kg),
                         (s[2], s[3], s[4], s[1], s[0], s[6]))
        T = np.matmul(AT, src).reshape(G, n, th, a, m, tw, Kg)
        # columns: y[n, m i + u, m j + v', g Kg + k] = sum_v A^T[v', v] T[g, n, i, v, u, j, k]
        cols = T.transpose(0, 1, 2, 4, 5, 3, 6)           # (g, n, i, u, j, v, k)
        dst = yv[:, :, :, lo:hi].transpose(2, 3, 4, 0, 5, 1, 6)
        np.matmul(AT, cols, out=dst)
        if b is not None:
            yv[:, :, :, lo:hi] += b
        y[lo:hi] = yl[lo:hi, :Ho, :Wo].transpose(0, 3, 1, 2)
    _over_images(N, tiling.points * th * tw * K, part)
    return y


def grad_output_transform(dy, group, tiling=F2):
    """D = A dy_tile A^T: dy (N, K, Ho, Wo) -> (alpha^2, G, N*th*tw, K/G) (zeros
    past the edge)."""
    N, K, Ho, Wo = dy.shape
    m, a = tiling.m, tiling.alpha
    th, tw = tiling.tiles((Ho, Wo))
    dyl = _channels_last(dy, (m * th, m * tw), key='dy')
    Kg = K // group
    D = _scratch('D', (a, a, group, N, th, tw, Kg))

    def part(lo, hi):
        _rows_then_columns(dyl[lo:hi], tiling.A32, m, D[:, :, :, lo:hi])
    _over_images(N, tiling.points * th * tw * K, part)
    return D.reshape(tiling.points, group, N * th * tw, Kg)


def _overlapping_product(M, src, dst, axis):
    """dst[..., i, u, :] (for u < m: row m i + u of the unblocked dst) = the
    sum over the patches p of M[u + m (i - p), :] @ src[..., p, :, :] -- the
    products M @ src of patches m apart, each alpha = M.shape[0] rows long,
    overlap-added.  src (..., count, k, cols) and dst (..., J, m, cols) have
    their patch / block axis at `axis` and the same other batch axes; J >=
    count + ceil(alpha / m) - 1.  The first m rows of every patch are written
    straight into dst, the rest added in patch order (the same sums on any
    thread count)."""
    a, m, count = M.shape[0], dst.shape[-2], src.shape[axis]

    def blocks(lo, hi):
        return dst[(slice(None),) * axis + (slice(lo, hi),)]
    np.matmul(M[:m], src, out=blocks(0, count))
    blocks(count, None)[...] = 0
    for q in range(1, -(-a // m)):
        r = min(m, a - m * q)
        blocks(q, q + count)[..., :r, :] += np.matmul(M[m * q:m * q + r], src)


def input_transform_adjoint(dV, pad, out_sp, dx, tiling=F2):
    """dx = the adjoint of input_transform applied to dV (alpha^2, G, N*th*tw, C/G):
    dd = B dV B^T per patch, overlapping patches summed, padding cropped.  The
    adjoint of _rows_then_columns: over the columns of each patch row (summed
    into rows of the padded width), then over the rows."""
    N, C, H, W = dx.shape
    _, G, _, Cg = dV.shape
    m, a = tiling.m, tiling.alpha
    th, tw = tiling.tiles(out_sp)
    ph, pw = pad
    dV = dV.reshape(a, a, G, N, th, tw, Cg)
    B = tiling.B32
    # a patch spans `reach` blocks of m rows (F(4x4,3x3): 2, F(2x2,5x5): 3)
    reach = (a + m - 1) // m
    Hp, Wp = m * (th + reach - 1), m * (tw + reach - 1)
    xp = _scratch('dx', (N, Hp, Wp, C))

    def part(lo, hi):
        n = hi - lo
        s = dV.strides
        # columns: T[n, i, u', m j + v, g, c] += sum_v' B[v, v'] dV[u', v', g, n, i, j, c]
        src = as_strided(dV[:, :, :, lo:hi], (n, th, a, tw, G, a, Cg),
                         (s[3], s[4], s[0], s[5], s[2], s[1], s[6]))
        T = np.empty((n, th, a, Wp // m, m, G, Cg), _f)
        _overlapping_product(B, src, T.transpose(0, 1, 2, 3, 5, 4, 6), 3)
        # rows: xp[n, m i + u, w C] += sum_u' B[u, u'] T[n, i, u', w C]
        _overlapping_product(B, T.reshape(n, th, a, Wp * C),
                             xp[lo:hi].reshape(n, Hp // m, m, Wp * C), 1)
        dx[lo:hi] = xp[lo:hi, ph:ph + H, pw:pw + W].transpose(0, 3, 1, 2)
    _over_images(N, tiling.points * th * tw * C, part)
    return dx


def forward(x, U, pad, out_sp, y, bias=None, V=None, tiling=F2):
    """y = conv(x, g) (+ bias) with U = transform_weights(g, G, tiling); returns V
    (kept for the weight gradient).  x (N, C, H, W), y (N, K, Ho, Wo)."""
    _, G, Kg, Cg = U.shape
    V = input_transform(x, pad, out_sp, G, out=V, tiling=tiling)
    M = _scratch('M', V.shape[:3] + (Kg,))            # (alpha^2, G, tiles, Kg)
    _point_gemms(tiling, G, lambda t, g: np.dot(V[t, g], U[t, g].T, out=M[t, g]))
    output_transform(M, y, bias, tiling=tiling)
    return V


def _point_gemms(tiling, G, fn):
    """fn(t, g) for the alpha^2 points and G groups, spread over minicaffe's
    threads (each product whole on one thread with the one-thread BLAS: the same
    numbers whatever the thread count)."""
    run_chunks(tiling.points * G, lambda i: fn(i // G, i % G))


def backward(dy, U, V, pad, dx=None, du=None, tiling=F2):
    """Gradients of forward: dx (written into dx, if given) and du += dU (the
    per-point weight gradient, if du is given; turn it into dg with
    weight_gradient_from).  V is forward's input transform of x."""
    _, G, Kg, Cg = U.shape
    D = grad_output_transform(dy, G, tiling=tiling)
    if du is not None:
        _point_gemms(tiling, G, lambda t, g: gemm_accumulate(D[t, g], V[t, g], du[t, g],
                                                             trans_a=True))
    if dx is not None:
        dV = _scratch('dV', D.shape[:3] + (Cg,))
        _point_gemms(tiling, G, lambda t, g: np.dot(D[t, g], U[t, g], out=dV[t, g]))
        input_transform_adjoint(dV, pad, dy.shape[2:], dx, tiling=tiling)
    return dx
