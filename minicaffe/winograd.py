"""Winograd F(2x2, 3x3) convolution (Lavin & Gray, 2015) for 3x3, stride-1,
dilation-1 2-D convolutions with groups: forward, data gradient, weight gradient.

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

Shapes: x (N, C, H, W), g (K, C/G, 3, 3), y (N, K, Ho, Wo) with
Ho = H + 2 pad_h - 2 (likewise W); tiles th = ceil(Ho/2), tw = ceil(Wo/2);
V and D are laid out (16, channels, N*th*tw) so each point's GEMM reads
contiguous matrices.  Rounding differs from Caffe's im2col sums (a different
summation order), well inside the conformance tolerance; the engine CAFFE
(ConvolutionParameter.engine) keeps Caffe's own order.

The element-wise transforms run over blocks of channels split across the
worker threads (im2col.parallel_for); each channel's numbers are computed the
same way whatever the split, so results do not depend on the thread count.
"""
import os

import numpy as np

from .blas import gemm_accumulate
from .im2col import ELEMENTWISE_BLOCK, in_blocks, parallel_for

_f = np.float32
_G = np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]], _f)

# MINICAFFE_CONV_ENGINE: 'winograd' uses it wherever applicable, 'caffe' never;
# unset, the DEFAULT engine picks by shape (prefer_winograd).  The tests set
# FORCE to run the conformance cases under both algorithms.
FORCE = os.environ.get('MINICAFFE_CONV_ENGINE', '').strip().lower() or None

# Below these channel counts per group the GEMMs are too thin for the saved
# multiplies to pay for the transforms' memory passes (measured on CaffeNet
# conv3-5, see benchmarks/bench_winograd.py).
MIN_CHANNELS = 32
MIN_OUTPUTS = 32


def applicable(kernel, stride, dilation, pad):
    """Whether a convolution's geometry has a Winograd F(2x2,3x3) form here."""
    return (len(kernel) == 2 and tuple(kernel) == (3, 3) and tuple(stride) == (1, 1)
            and tuple(dilation) == (1, 1) and all(0 <= p <= 2 for p in pad))


def prefer_winograd(channels_per_group, outputs_per_group, out_sp):
    """DEFAULT engine's choice for an applicable shape: Winograd where the GEMMs
    dominate (enough channels on both sides) and the maps are not tiny."""
    return (channels_per_group >= MIN_CHANNELS and outputs_per_group >= MIN_OUTPUTS
            and min(out_sp) >= 4)


def tiles(out_sp):
    return (out_sp[0] + 1) // 2, (out_sp[1] + 1) // 2


def transform_weights(w, group):
    """U = G g G^T: w (K, C/G, 3, 3) -> (16, G, K/G, C/G) float32."""
    K, Cg = w.shape[:2]
    u = np.matmul(np.matmul(_G, w.astype(_f, copy=False)), _G.T)      # (K, Cg, 4, 4)
    return np.ascontiguousarray(u.transpose(2, 3, 0, 1)).reshape(16, group, K // group, Cg)


def weight_gradient_from(du):
    """dg = G^T dU G: du (16, G, K/G, C/G) -> (K, C/G, 3, 3)."""
    _, G, Kg, Cg = du.shape
    d = du.reshape(4, 4, G * Kg, Cg).transpose(2, 3, 0, 1)            # (K, Cg, 4, 4)
    return np.matmul(np.matmul(_G.T, d), _G)


def _parallel_channels(n, per_channel, part):
    parallel_for(n, in_blocks(part, per_channel, ELEMENTWISE_BLOCK), n * per_channel)


def _btd(d, out):
    """out[a] = (B^T d)[a] along the first axis (d: 4 views of equal shape)."""
    np.subtract(d[0], d[2], out=out[0])
    np.add(d[1], d[2], out=out[1])
    np.subtract(d[2], d[1], out=out[2])
    np.subtract(d[1], d[3], out=out[3])


def input_transform(x, pad, out_sp, out=None):
    """V = B^T d B for every 4x4 patch: x (N, C, H, W) -> (16, C, N*th*tw)."""
    N, C, H, W = x.shape
    th, tw = tiles(out_sp)
    ph, pw = pad
    xp = np.zeros((N, C, 2 * th + 2, 2 * tw + 2), _f)
    # (2 th + 2 >= H + 2 pad: the padded patch grid covers the whole image)
    xp[:, :, ph:ph + H, pw:pw + W] = x
    sN, sC, sH, sW = xp.strides
    # d[u, v, c, n, i, j] = xp[n, c, 2i + u, 2j + v]
    d = np.lib.stride_tricks.as_strided(xp, (4, 4, C, N, th, tw),
                                        (sH, sW, sC, sN, 2 * sH, 2 * sW), writeable=False)
    V = np.empty((4, 4, C, N, th, tw), _f) if out is None else out.reshape(4, 4, C, N, th, tw)

    def part(lo, hi):
        t = np.empty((4, 4, hi - lo, N, th, tw), _f)
        _btd(d[:, :, lo:hi], t)
        _btd([t[:, v] for v in range(4)], [V[:, a, lo:hi] for a in range(4)])
    _parallel_channels(C, 16 * N * th * tw, part)
    return V.reshape(16, C, N * th * tw)


def output_transform(M, y, bias=None):
    """y = A^T M A (+ bias): M (16, K, N*th*tw) -> written into y (N, K, Ho, Wo)."""
    N, K, Ho, Wo = y.shape
    th, tw = tiles((Ho, Wo))
    M = M.reshape(4, 4, K, N, th, tw)
    exact = Ho == 2 * th and Wo == 2 * tw
    yp = y if exact else np.empty((N, K, 2 * th, 2 * tw), _f)
    # view yp[n, k, 2i + r, 2j + s] as [r, s, k, n, i, j]
    sN, sK, sH, sW = yp.strides
    yv = np.lib.stride_tricks.as_strided(yp, (2, 2, K, N, th, tw),
                                         (sH, sW, sK, sN, 2 * sH, 2 * sW))

    def at(m, o):
        np.add(m[0], m[1], out=o[0])
        o[0] += m[2]
        np.subtract(m[1], m[2], out=o[1])
        o[1] -= m[3]

    def part(lo, hi):
        s = np.empty((2, 4, hi - lo, N, th, tw), _f)
        at(M[:, :, lo:hi], s)
        at([s[:, b] for b in range(4)], [yv[:, r, lo:hi] for r in range(2)])
        if bias is not None:
            yv[:, :, lo:hi] += bias[lo:hi, None, None, None]
    _parallel_channels(K, 16 * N * th * tw, part)
    if not exact:
        y[...] = yp[:, :, :Ho, :Wo]
    return y


def grad_output_transform(dy, out=None):
    """D = A dy_tile A^T: dy (N, K, Ho, Wo) -> (16, K, N*th*tw) (zeros past the edge)."""
    N, K, Ho, Wo = dy.shape
    th, tw = tiles((Ho, Wo))
    if Ho != 2 * th or Wo != 2 * tw:
        p = np.zeros((N, K, 2 * th, 2 * tw), _f)
        p[:, :, :Ho, :Wo] = dy
        dy = p
    sN, sK, sH, sW = dy.strides
    g = np.lib.stride_tricks.as_strided(dy, (2, 2, K, N, th, tw),
                                        (sH, sW, sK, sN, 2 * sH, 2 * sW), writeable=False)
    D = np.empty((4, 4, K, N, th, tw), _f) if out is None else out.reshape(4, 4, K, N, th, tw)

    def a(m, o):       # o = A m along the first axis (A: 4x2)
        np.copyto(o[0], m[0])
        np.add(m[0], m[1], out=o[1])
        np.subtract(m[0], m[1], out=o[2])
        np.negative(m[1], out=o[3])

    def part(lo, hi):
        t = np.empty((4, 2, hi - lo, N, th, tw), _f)
        a(g[:, :, lo:hi], t)
        a([t[:, s] for s in range(2)], [D[:, b, lo:hi] for b in range(4)])
    _parallel_channels(K, 16 * N * th * tw, part)
    return D.reshape(16, K, N * th * tw)


def input_transform_adjoint(dV, x_shape, pad, out_sp, dx):
    """dx = the adjoint of input_transform applied to dV (16, C, N*th*tw):
    dd = B dV B^T per patch, overlapping patches summed, padding cropped."""
    N, C, H, W = x_shape
    th, tw = tiles(out_sp)
    ph, pw = pad
    dV = dV.reshape(4, 4, C, N, th, tw)
    xp = np.zeros((N, C, 2 * th + 2, 2 * tw + 2), _f)
    sN, sC, sH, sW = xp.strides
    # blocks[r, s, c, n, i, j] = xp[n, c, 2i + r, 2j + s], i < th + 1, j < tw + 1
    blocks = np.lib.stride_tricks.as_strided(xp, (2, 2, C, N, th + 1, tw + 1),
                                             (sH, sW, sC, sN, 2 * sH, 2 * sW))

    def b(m, o):       # o = B m along the first axis (adjoint of _btd)
        np.copyto(o[0], m[0])
        np.subtract(m[1], m[2], out=o[1])
        o[1] += m[3]
        np.add(m[1], m[2], out=o[2])
        o[2] -= m[0]
        np.negative(m[3], out=o[3])

    def part(lo, hi):
        t = np.empty((4, 4, hi - lo, N, th, tw), _f)
        b(dV[:, :, lo:hi], t)
        dd = np.empty_like(t)
        b([t[:, v] for v in range(4)], [dd[:, u] for u in range(4)])
        # patch row u = 2 qa + r lands in block row i + qa (likewise columns)
        for qa in (0, 1):
            for qb in (0, 1):
                blocks[:, :, lo:hi, :, qa:qa + th, qb:qb + tw] += \
                    dd[2 * qa:2 * qa + 2, 2 * qb:2 * qb + 2, :, :]
    _parallel_channels(C, 16 * N * th * tw, part)
    dx[...] = xp[:, :, ph:ph + H, pw:pw + W]
    return dx


def point_gemms(a, b, out, trans_a=False, trans_b=False):
    """out[t, g] = op(a[t, g]) @ op(b[t, g]) for the 16 points and every group
    (2-D BLAS calls: numpy's stacked matmul is slow on transposed views)."""
    for t in range(a.shape[0]):
        for g in range(a.shape[1]):
            np.dot(a[t, g].T if trans_a else a[t, g], b[t, g].T if trans_b else b[t, g],
                   out=out[t, g])
    return out


def forward(x, U, pad, out_sp, y, bias=None, V=None):
    """y = conv(x, g) (+ bias) with U = transform_weights(g); returns V (kept
    for the weight gradient).  x (N, C, H, W), y (N, K, Ho, Wo)."""
    _, G, Kg, Cg = U.shape
    V = input_transform(x, pad, out_sp, out=V)
    P = V.shape[2]
    M = np.empty((16, G, Kg, P), _f)
    point_gemms(U, V.reshape(16, G, Cg, P), M)
    output_transform(M.reshape(16, G * Kg, P), y, bias)
    return V


def backward(dy, U, V, pad, x_shape, dx=None, du=None):
    """Gradients of forward: dx (written into dx, if given) and du += dU (the
    16-point weight gradient, if du is given; turn it into dg with
    weight_gradient_from).  V is forward's input transform of x."""
    _, G, Kg, Cg = U.shape
    out_sp = dy.shape[2:]
    D = grad_output_transform(dy).reshape(16, G, Kg, -1)
    if du is not None:
        Vg = V.reshape(16, G, Cg, -1)
        for t in range(16):
            for g in range(G):
                gemm_accumulate(D[t, g], Vg[t, g], du[t, g], trans_b=True)
    if dx is not None:
        dV = np.empty((16, G, Cg, D.shape[3]), _f)
        point_gemms(U, D, dV, trans_a=True)
        input_transform_adjoint(dV.reshape(16, G * Cg, -1), x_shape, pad, out_sp, dx)
    return dx
