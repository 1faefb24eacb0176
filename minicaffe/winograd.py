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
V and D are laid out (16, G, N*th*tw, channels/G), channels innermost: the
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

from .blas import gemm_accumulate
from .im2col import ELEMENTWISE_BLOCK, in_blocks, parallel_for
from .threads import run_chunks

_f = np.float32
_G = np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]], _f)
# G g G^T for every filter at once: (filters, 9) @ kron(G, G)^T -> (filters, 16)
# (one GEMM; a stack of 3x3 matmuls costs numpy ~50x more)
_GG = np.ascontiguousarray(np.kron(_G, _G).T)

# MINICAFFE_CONV_ENGINE: 'winograd' uses it wherever applicable, 'caffe' never;
# unset, the DEFAULT engine picks by shape (prefer_winograd).  The tests set
# FORCE to run the conformance cases under both algorithms.
FORCE = os.environ.get('MINICAFFE_CONV_ENGINE', '').strip().lower() or None

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
    """U = G g G^T: w (K, C/G, 3, 3) -> (16, G, C/G, K/G) float32 (transposed
    per point: the GEMMs run tiles x channels, channels innermost)."""
    K, Cg = w.shape[:2]
    u = np.dot(w.reshape(K * Cg, 9).astype(_f, copy=False), _GG)       # (K Cg, 16)
    u = u.reshape(group, K // group, Cg, 16).transpose(3, 0, 2, 1)     # (16, G, Cg, Kg)
    return np.ascontiguousarray(u)


def weight_gradient_from(du):
    """dg = G^T dU G: du (16, G, C/G, K/G) -> (K, C/G, 3, 3)."""
    _, G, Cg, Kg = du.shape
    d = np.ascontiguousarray(du.transpose(1, 3, 2, 0)).reshape(G * Kg * Cg, 16)
    return np.dot(d, _GG.T).reshape(G * Kg, Cg, 3, 3)


def _over_images(n, per_image, part):
    parallel_for(n, in_blocks(part, per_image, ELEMENTWISE_BLOCK), n * per_image)


def _tile_view(a, group, count, step=2):
    """a (N, H', W', C) channels-last -> writable view [u, v, g, n, i, j, c]
    = a[n, step i + u, step j + v, g C/G + c], u, v < 4 (or 2), i, j < count."""
    N, _, _, C = a.shape
    sN, sH, sW, sC = a.strides
    return np.lib.stride_tricks.as_strided(
        a, (4, 4, group, N) + count + (C // group,),
        (sH, sW, sC * (C // group), sN, step * sH, step * sW, sC))


def _btd(d, out):
    """out[a] = (B^T d)[a] along the first axis (d: 4 arrays of equal shape)."""
    np.subtract(d[0], d[2], out=out[0])
    np.add(d[1], d[2], out=out[1])
    np.subtract(d[2], d[1], out=out[2])
    np.subtract(d[1], d[3], out=out[3])


def _channels_last(x, shape, offset=(0, 0)):
    """Zero array (N, *shape, C) holding x (N, C, H, W) at offset, transposed."""
    N, C, H, W = x.shape
    out = np.zeros((N,) + tuple(shape) + (C,), _f)

    def part(lo, hi):
        out[lo:hi, offset[0]:offset[0] + H, offset[1]:offset[1] + W] = \
            x[lo:hi].transpose(0, 2, 3, 1)
    parallel_for(N, part, x.size)
    return out


def input_transform(x, pad, out_sp, group, out=None):
    """V = B^T d B for every 4x4 patch: x (N, C, H, W) -> (16, G, N*th*tw, C/G)."""
    N, C, H, W = x.shape
    th, tw = tiles(out_sp)
    # (2 th + 2 >= H + 2 pad: the padded patch grid covers the whole image)
    xp = _channels_last(x, (2 * th + 2, 2 * tw + 2), pad)
    d = _tile_view(xp, group, (th, tw))
    Cg = C // group
    shape = (4, 4, group, N, th, tw, Cg)
    V = np.empty(shape, _f) if out is None else out.reshape(shape)

    def part(lo, hi):
        t = np.empty((4, 4, group, hi - lo, th, tw, Cg), _f)
        _btd(d[:, :, :, lo:hi], t)
        _btd([t[:, v] for v in range(4)], [V[:, a, :, lo:hi] for a in range(4)])
    _over_images(N, 16 * th * tw * C, part)
    return V.reshape(16, group, N * th * tw, Cg)


def output_transform(M, y, bias=None):
    """y = A^T M A (+ bias): M (16, G, N*th*tw, K/G) -> written into y (N, K, Ho, Wo)."""
    N, K, Ho, Wo = y.shape
    _, G, _, Kg = M.shape
    th, tw = tiles((Ho, Wo))
    M = M.reshape(4, 4, G, N, th, tw, Kg)
    yl = np.empty((N, 2 * th, 2 * tw, K), _f)
    yv = _tile_view(yl, G, (th, tw))[:2, :2]
    b = None if bias is None else bias.reshape(G, 1, 1, 1, Kg)

    def at(m, o):
        np.add(m[0], m[1], out=o[0])
        o[0] += m[2]
        np.subtract(m[1], m[2], out=o[1])
        o[1] -= m[3]

    def part(lo, hi):
        s = np.empty((2, 4, G, hi - lo, th, tw, Kg), _f)
        at(M[:, :, :, lo:hi], s)
        o = [yv[:, r, :, lo:hi] for r in range(2)]
        at([s[:, c] for c in range(4)], o)
        if b is not None:
            yv[:, :, :, lo:hi] += b
        y[lo:hi] = yl[lo:hi, :Ho, :Wo].transpose(0, 3, 1, 2)
    _over_images(N, 16 * th * tw * K, part)
    return y


def grad_output_transform(dy, group):
    """D = A dy_tile A^T: dy (N, K, Ho, Wo) -> (16, G, N*th*tw, K/G) (zeros past the edge)."""
    N, K, Ho, Wo = dy.shape
    th, tw = tiles((Ho, Wo))
    g = _tile_view(_channels_last(dy, (2 * th, 2 * tw)), group, (th, tw))[:2, :2]
    Kg = K // group
    D = np.empty((4, 4, group, N, th, tw, Kg), _f)

    def a(m, o):       # o = A m along the first axis (A: 4x2)
        np.copyto(o[0], m[0])
        np.add(m[0], m[1], out=o[1])
        np.subtract(m[0], m[1], out=o[2])
        np.negative(m[1], out=o[3])

    def part(lo, hi):
        t = np.empty((4, 2, group, hi - lo, th, tw, Kg), _f)
        a(g[:, :, :, lo:hi], t)
        a([t[:, s] for s in range(2)], [D[:, c, :, lo:hi] for c in range(4)])
    _over_images(N, 16 * th * tw * K, part)
    return D.reshape(16, group, N * th * tw, Kg)


def input_transform_adjoint(dV, pad, out_sp, dx):
    """dx = the adjoint of input_transform applied to dV (16, G, N*th*tw, C/G):
    dd = B dV B^T per patch, overlapping patches summed, padding cropped."""
    N, C, H, W = dx.shape
    _, G, _, Cg = dV.shape
    th, tw = tiles(out_sp)
    ph, pw = pad
    dV = dV.reshape(4, 4, G, N, th, tw, Cg)
    xp = np.zeros((N, 2 * th + 2, 2 * tw + 2, C), _f)
    # blocks[r, s, g, n, i, j, c] = xp[n, 2i + r, 2j + s, g C/G + c], i < th + 1
    blocks = _tile_view(xp, G, (th + 1, tw + 1))[:2, :2]

    def b(m, o):       # o = B m along the first axis (adjoint of _btd)
        np.copyto(o[0], m[0])
        np.subtract(m[1], m[2], out=o[1])
        o[1] += m[3]
        np.add(m[1], m[2], out=o[2])
        o[2] -= m[0]
        np.negative(m[3], out=o[3])

    def part(lo, hi):
        t = np.empty((4, 4, G, hi - lo, th, tw, Cg), _f)
        b(dV[:, :, :, lo:hi], t)
        dd = np.empty_like(t)
        b([t[:, v] for v in range(4)], [dd[:, u] for u in range(4)])
        # patch row u = 2 qa + r lands in block row i + qa (likewise columns)
        for qa in (0, 1):
            for qb in (0, 1):
                blocks[:, :, :, lo:hi, qa:qa + th, qb:qb + tw] += \
                    dd[2 * qa:2 * qa + 2, 2 * qb:2 * qb + 2]
        dx[lo:hi] = xp[lo:hi, ph:ph + H, pw:pw + W].transpose(0, 3, 1, 2)
    _over_images(N, 16 * th * tw * C, part)
    return dx


def forward(x, U, pad, out_sp, y, bias=None, V=None):
    """y = conv(x, g) (+ bias) with U = transform_weights(g); returns V (kept
    for the weight gradient).  x (N, C, H, W), y (N, K, Ho, Wo)."""
    _, G, Cg, Kg = U.shape
    V = input_transform(x, pad, out_sp, G, out=V)
    M = np.empty(V.shape[:3] + (Kg,), _f)            # (16, G, tiles, Kg)
    _point_gemms(G, lambda t, g: np.dot(V[t, g], U[t, g], out=M[t, g]))
    output_transform(M, y, bias)
    return V


def _point_gemms(G, fn):
    """fn(t, g) for the 16 points and G groups, spread over minicaffe's threads
    (each product whole on one thread with the one-thread BLAS: the same
    numbers whatever the thread count)."""
    run_chunks(16 * G, lambda i: fn(i // G, i % G))


def backward(dy, U, V, pad, dx=None, du=None):
    """Gradients of forward: dx (written into dx, if given) and du += dU (the
    16-point weight gradient, if du is given; turn it into dg with
    weight_gradient_from).  V is forward's input transform of x."""
    _, G, Cg, Kg = U.shape
    D = grad_output_transform(dy, G)
    if du is not None:
        _point_gemms(G, lambda t, g: gemm_accumulate(V[t, g], D[t, g], du[t, g], trans_a=True))
    if dx is not None:
        dV = np.empty(D.shape[:3] + (Cg,), _f)
        _point_gemms(G, lambda t, g: np.dot(D[t, g], U[t, g].T, out=dV[t, g]))
        input_transform_adjoint(dV, pad, dy.shape[2:], dx)
    return dx
