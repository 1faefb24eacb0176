"""Vision layers built on im2col: Convolution, Deconvolution, Im2col, Crop.

Convolution and Deconvolution follow Caffe's BaseConvolutionLayer: the spatial
axes are those after ``axis`` (default 1, the channel axis), every axis before
it is a batch axis; ``kernel_size``/``pad``/``stride``/``dilation`` are given
once or once per spatial axis (``kernel_h``/``kernel_w`` etc. for 2-D only).
Where one image's product is large (``per_image``, see _per_image: the conv1/
conv2 sizes) the columns are Caffe's own buffer per image, ``(N, group,
C/group * prod(k), prod(out))``, built a few images at a time so that they are
still in the CPU cache when the GEMMs read them, and every GEMM is Caffe's own
call per image and group (forward bit-for-bit Caffe's rounding on one BLAS
thread, where blas.gemm does not cut the product into blocks).  Smaller
products (LeNet, 13x13 maps) cover the whole batch in one matrix product per
group, on columns laid out ``(group, C/group * prod(k), N * prod(out))``, ordered
(output position, image) where that makes im2col/col2im faster
(``batch_inner``: the columns outnumber the outputs); in Caffe's order otherwise
(engine CAFFE), while the DEFAULT engine runs those layers ``stacked``: per-image
columns and one np.matmul per block of images (LeNet's conv1).  A 1x1 kernel
with stride 1 and no padding skips im2col (the input is the column matrix), as
in Caffe.

Caffe recomputes im2col in the weight-gradient pass; in TRAIN phase the
columns built by forward are kept for it instead (they are the same numbers
as long as the bottom data is not rewritten between forward and backward,
which a well-formed net never does: a blob read by two layers is split).
Batches whose columns exceed COL_CHUNK_BYTES are processed a few images at a
time and never cached.
"""
import itertools

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .. import fillers, winograd
from ..blas import (GEMM_MAX_CHUNKS, gemm, gemm_accumulate, gemm_blocks, gemm_k_blocks,
                    gemm_summed_over_k, gemm_tasks)
from ..blob import DTYPE
from ..protoio import pb
from ..im2col import (_padding, col2im, conv_out_size, copy_split, deconv_out_size,
                      parallel_for, windows, workspace)
from ..threads import alternate, num_threads, run_calls, run_chunks, run_ranges
from .base import Layer, register_layer

_f = DTYPE

# Column buffers above this many bytes are built a few images at a time.
COL_CHUNK_BYTES = 256 << 20
# Per-image layers (see _per_image) build this many bytes of columns at a time.
COL_CACHE_CHUNK_BYTES = 16 << 20
# In TRAIN phase a layer keeps its forward columns for backward up to this size
# (rebuilding them costs a pass as long as forward's im2col; the LRCN activity
# net's conv1 columns, 32 frames of 227x227, are 232 MB).
COL_CACHE_BYTES = 256 << 20
# The data gradient of a batch_inner layer forms its columns in blocks of input
# channels of about this many bytes, each summed into the image while in the
# CPU's cache.  Each block is a GEMM of its own that packs all of dY again, and
# pays 25 numpy calls of col2im for a 5x5 kernel: on LeNet's conv2 (1 thread, CPU
# time, loaded machine) blocks of 1 MB took 4.9-6.2 ms, 2 MB 4.3, 4 MB 3.7-3.8
# (two blocks: one per core on 2), the whole 8 MB product 4.1-4.5.
COL2IM_BLOCK_BYTES = 4 << 20
# A stacked layer's backward (DEFAULT, small per-image products:
# _backward_stacked) keeps the per-image weight-gradient products of at most this
# many elements at a time before summing them.
STACKED_PART_ELEMS = 1 << 22
# On the GPU the columns of this many bytes of images are built at once.
COL_GPU_BYTES = 1 << 30


def _prod(xs):
    p = 1
    for x in xs:
        p *= int(x)
    return p


def _canonical_axis(layer, blob, axis, what='axis'):
    n = blob.num_axes()
    layer.check(-n <= axis < max(n, 1), '%s %d is out of range for a bottom of shape %s'
                % (what, axis, blob.shape))
    return axis + n if axis < 0 else axis


def parse_conv_geometry(layer, cp, bottom0, min_spatial_axes=0):
    """Caffe's kernel/stride/pad/dilation parsing (BaseConvolutionLayer::LayerSetUp).

    Returns (channel_axis, kernel, stride, pad, dilation), tuples with one
    entry per spatial axis (the axes after channel_axis)."""
    channel_axis = _canonical_axis(layer, bottom0, cp.axis)
    nsp = bottom0.num_axes() - channel_axis - 1
    layer.check(nsp >= min_spatial_axes,
                'needs at least %d spatial axis after axis %d; bottom shape is %s'
                % (min_spatial_axes, channel_axis, bottom0.shape))

    def per_axis(name, values, default):
        n = len(values)
        if n == 0 and default is not None:
            return (default,) * nsp
        layer.check(n == 1 or n == nsp,
                    '%s must be specified once, or once per spatial dimension (%s specified'
                    ' %d times; %d spatial dims)' % (name, name, n, nsp))
        return tuple(int(values[0 if n == 1 else i]) for i in range(nsp))

    def hw(name, h, w, repeated, default):
        if cp.HasField(h) or cp.HasField(w):
            layer.check(nsp == 2, '%s & %s can only be used for 2D convolution (this one has %d'
                        ' spatial axes)' % (h, w, nsp))
            layer.check(len(repeated) == 0, 'Either %s or %s/%s should be specified; not both'
                        % (name, h, w[-1]))
            return (int(getattr(cp, h)), int(getattr(cp, w)))
        return per_axis(name, repeated, default)

    kernel = hw('kernel_size', 'kernel_h', 'kernel_w', cp.kernel_size, None)
    layer.check(all(k > 0 for k in kernel), 'Filter dimensions must be nonzero (kernel %s)'
                % (kernel,))
    stride = hw('stride', 'stride_h', 'stride_w', cp.stride, 1)
    layer.check(all(s > 0 for s in stride), 'Stride dimensions must be nonzero (stride %s)'
                % (stride,))
    pad = hw('pad', 'pad_h', 'pad_w', cp.pad, 0)
    # (dilation 0 is accepted, as Caffe does: every tap of the kernel reads the same input)
    dilation = per_axis('dilation', cp.dilation, 1)
    return channel_axis, kernel, stride, pad, dilation


# Per-image GEMMs (Caffe's calls, bit-for-bit its rounding) when one image's
# product is large: at least this many output positions and multiply-adds.
# Smaller ones are batched into one GEMM: there per-call overhead and BLAS's
# poor efficiency on thin matrices dominate (LeNet's conv2: 64 positions).
PER_IMAGE_MIN_POSITIONS = 256
PER_IMAGE_MIN_MACS = 1 << 19


def _per_image(m, k, p):
    """Whether an (m x k) @ (k x p) product per image gets its own GEMM."""
    return p >= PER_IMAGE_MIN_POSITIONS and m * k * p >= PER_IMAGE_MIN_MACS


def _thread_blocks(n):
    """Bounds of one block of range(n) per thread (at most n blocks)."""
    count = max(1, min(n, num_threads()))
    return [n * j // count for j in range(count + 1)]


def _accumulate_outer(dW, a, col):
    """dW[g] += a[g] @ col[g]^T for each group g (accumulating BLAS GEMMs)."""
    for g in range(dW.shape[0]):
        gemm_accumulate(a[g], col[g], dW[g], trans_b=True)


def _accumulate_outer_transposed(dW, a, col):
    """dW[g] += a[g] @ col[g]^T, formed as its transpose col[g] @ a[g]^T (then
    added transposed): the DEFAULT engine's weight gradient where the outputs
    per group are fewer than the kernel taps.  OpenBLAS runs that orientation
    faster on the batch-wide shapes (1 thread, LeNet's conv2 50 x 500 over k =
    4096: 2.5 ms against 3.4), and a product too short to cut by its output
    sides is cut over k (blas.gemm_summed_over_k) so that it uses every core.
    The sums are grouped differently from Caffe's (within the conformance
    tolerance)."""
    for g in range(dW.shape[0]):
        t = workspace('weight_grad_t', (col.shape[1], a.shape[1]))
        gemm_summed_over_k(col[g], a[g], t, trans_b=True, any_blas=True)
        dW[g] += t.T


def _outer_transposed_tasks(dW, a, col):
    """_accumulate_outer_transposed as (calls, finish) for running together with
    other independent work: the calls form col[g] @ a[g]^T in blocks
    (blas.gemm_tasks), finish() adds them into dW; None where a product would
    be cut over k (gemm_summed_over_k runs those)."""
    G, K, Mg = dW.shape[0], col.shape[1], a.shape[1]
    if len(gemm_k_blocks(K, Mg, col.shape[2])) > 2:
        return None
    t = workspace('weight_grad_t', (G, K, Mg))
    tasks = [task for g in range(G)
             for task in gemm_tasks(col[g], a[g], t[g], trans_b=True, any_blas=True)]

    def finish():
        for g in range(G):
            dW[g] += t[g].T
    return tasks, finish


def _group_gemm(a, b, trans_a=False, out=None, blocks=1, any_blas=False):
    """out[g] = op(a[g]) @ b[g] for each group, op = transpose if trans_a.

    The columns of b hold ``blocks`` images side by side.  Where an image's
    product is large (_per_image) each image is its own GEMM, the one Caffe
    makes per image, so OpenBLAS rounds every sum as in Caffe (2-D np.dot calls:
    numpy's stacked matmul falls back to a slow loop on transposed views); small
    per-image products and the transposed product (trans_a) are one GEMM over
    the batch.  Convolution's large products do not come here: they keep a
    per-image column layout of their own (BaseConvolutionLayer.per_image); this
    serves the batch-wide layouts and Deconvolution.  any_blas: the DEFAULT
    engine's products, which may run on another BLAS (blas.SHORT_K)."""
    G = a.shape[0]
    m = a.shape[2] if trans_a else a.shape[1]
    if out is None:
        out = np.empty((G, m, b.shape[2]), dtype=_f)
    step = b.shape[2] // blocks
    if trans_a or not _per_image(m, b.shape[1], step):
        # A small product per image (LeNet, 13x13 maps): one GEMM over the batch.
        for g in range(G):
            gemm(a[g], b[g], out[g], trans_a=trans_a, any_blas=any_blas)
        return out
    # Each image's columns are copied to a contiguous block first: BLAS reads a
    # block strided by the whole batch (leading dimension B*P) up to 3x slower.
    # Same shapes and transpose flags, so the sums are bit-identical.
    blk = workspace('gemm_block', (b.shape[1], step), b.dtype) if blocks > 1 and not trans_a else None
    for g in range(G):
        for i in range(0, b.shape[2], step):
            src = b[g][:, i:i + step]
            if blk is not None:
                np.copyto(blk, src)
                src = blk
            gemm(a[g], src, out[g][:, i:i + step])
    return out


class BaseConvolutionLayer(Layer):
    """Shared machinery of Convolution and Deconvolution (Caffe's BaseConvolutionLayer)."""
    min_num_bottom = 1
    min_num_top = 1
    equal_num_bottom_top = True
    reverse = False            # Deconvolution: the conv maps top -> bottom
    # (the engine's choice in reshape also reads winograd.FORCE: set it before the
    # net's first forward)
    static_reshape = True

    def setup(self, bottom, top):
        cp = self.layer_param.convolution_param
        (self.channel_axis, self.kernel, self.stride, self.pad,
         self.dilation) = parse_conv_geometry(self, cp, bottom[0])
        self.nsp = len(self.kernel)
        self.num_axes = bottom[0].num_axes()
        self.is_1x1 = all(k == 1 and s == 1 and p == 0
                          for k, s, p in zip(self.kernel, self.stride, self.pad))
        self.channels = bottom[0].shape[self.channel_axis]
        self.num_output = int(cp.num_output)
        self.check(self.num_output > 0, 'num_output must be positive (got %d)' % self.num_output)
        self.group = int(cp.group)
        self.check(self.group > 0, 'group must be positive')
        self.check(self.channels % self.group == 0,
                   'the number of input channels (%d) must be a multiple of group (%d)'
                   % (self.channels, self.group))
        self.check(self.num_output % self.group == 0,
                   'Number of output should be multiples of group (num_output %d, group %d)'
                   % (self.num_output, self.group))
        if self.reverse:
            self.conv_out_channels, self.conv_in_channels = self.channels, self.num_output
        else:
            self.conv_out_channels, self.conv_in_channels = self.num_output, self.channels
        wshape = (self.conv_out_channels, self.conv_in_channels // self.group) + self.kernel
        self.bias_term = bool(cp.bias_term)
        bshape = (self.num_output,)
        if len(self.blobs) > 0:
            self.check(len(self.blobs) == 1 + self.bias_term,
                       'Incorrect number of weight blobs (expected %d, got %d)'
                       % (1 + self.bias_term, len(self.blobs)))
            self.check(tuple(self.blobs[0].shape) == wshape,
                       'Incorrect weight shape: expected shape %s; instead, shape was %s'
                       % (wshape, tuple(self.blobs[0].shape)))
            if self.bias_term:
                self.check(tuple(self.blobs[1].shape) == bshape,
                           'Incorrect bias shape: expected shape %s; instead, shape was %s'
                           % (bshape, tuple(self.blobs[1].shape)))
        else:
            w = self.blobs.add_blob(*wshape)
            fillers.fill(w, cp.weight_filler, context=self.name)
            if self.bias_term:
                b = self.blobs.add_blob(*bshape)
                fillers.fill(b, cp.bias_filler, context=self.name)
        self.kernel_dim = _prod(self.blobs[0].shape[1:])
        self.param_propagate_down = [True] * len(self.blobs)
        self._cols = {}
        self._col_store = {}

    def compute_output_shape(self, in_spatial):
        raise NotImplementedError

    def reshape(self, bottom, top):
        ax = self.channel_axis
        shape = bottom[0].shape
        self.check(len(shape) == ax + 1 + self.nsp,
                   'bottom num_axes may not change (was %d, now shape %s)'
                   % (ax + 1 + self.nsp, shape))
        self.check(shape[ax] == self.channels,
                   'Input size incompatible with convolution kernel: %d channels expected,'
                   ' bottom shape %s' % (self.channels, shape))
        for b in bottom[1:]:
            self.check(b.shape == shape, 'All inputs must have the same shape (%s vs %s)'
                       % (shape, b.shape))
        in_sp = shape[ax + 1:]
        # A batch of 0 images runs (nothing to compute); 0 channels would make the
        # weights empty (Caffe's fillers refuse them) and an empty image has no
        # windows: both are refused here, before anything is sized from them.
        self.check(shape[ax] > 0 and all(d > 0 for d in in_sp),
                   'input shape %s has 0 channels or an empty spatial axis; only the batch'
                   ' (axis %d) may be 0' % (shape, ax - 1 if ax else 0))
        out_sp = self.compute_output_shape(in_sp)
        self.check(all(o > 0 for o in out_sp),
                   'output size %s is not positive for input %s (kernel %s, pad %s, stride %s,'
                   ' dilation %s)' % (out_sp, in_sp, self.kernel, self.pad, self.stride,
                                      self.dilation))
        self.num = _prod(shape[:ax])
        top_shape = shape[:ax] + (self.num_output,) + tuple(out_sp)
        for t in top:
            t.reshape(top_shape)
        # the convolution's own input/output spatial sizes (swapped for Deconvolution)
        if self.reverse:
            self.conv_in_sp, self.conv_out_sp = tuple(out_sp), tuple(in_sp)
        else:
            self.conv_in_sp, self.conv_out_sp = tuple(in_sp), tuple(out_sp)
        self.conv_out_dim = _prod(self.conv_out_sp)
        # Small per-image products (see _per_image) go in one GEMM over the batch;
        # their columns are then laid out with the image innermost, (C, *k, *out, B),
        # so that im2col's copy and col2im's strided adds run over long rows -- worth
        # it where the columns outnumber the outputs (the outputs' transposes to and
        # from that layout are the slower copies).
        mg = self.conv_out_channels // self.group
        self.batch_inner = (not self.reverse and not self.is_1x1 and self.num > 1
                            and self.kernel_dim >= 2 * mg
                            and not _per_image(mg, self.kernel_dim, self.conv_out_dim))
        # Large per-image products keep Caffe's own column buffer per image,
        # (B, G, K, P), and make Caffe's GEMM calls on it (see _per_image).
        self.per_image = not self.reverse and _per_image(mg, self.kernel_dim, self.conv_out_dim)
        self.col_bytes = self.kernel_dim * self.group * self.conv_out_dim * 4   # per image
        # Per image, a few images' columns at a time, sized to stay in the CPU's
        # last-level cache between im2col and the GEMMs that read them.
        budget = COL_CACHE_CHUNK_BYTES if self.per_image else COL_CHUNK_BYTES
        self.chunk = max(1, budget // max(self.col_bytes, 1))
        plan = None if self.reverse else self._winograd_plan()
        self.winograd = plan is not None
        # a strided or 5x5 kernel may run as the stride-1 3x3 convolution of copies
        # of its input stacked as channels (winograd.Phases, winograd.Blocks)
        self.stacking, self.tiling = plan or (None, None)
        self.winograd_backward = self.winograd and (winograd.FORCE in ('winograd', 'winograd2', 'winograd4')
                                                    or winograd.DEFAULT_BACKWARD)
        self.wino_channels = self.channels * (self.stacking.copies if self.stacking else 1)
        # im2col + GEMM with Caffe's own products (engine CAFFE, or forced), else
        # the DEFAULT engine may group the sums differently where that is faster
        engine = self.layer_param.convolution_param.engine
        self.caffe_sums = engine == pb.ConvolutionParameter.CAFFE or winograd.FORCE == 'caffe'
        # DEFAULT: the other small per-image products (Caffe's column layout:
        # LeNet's conv1) run stacked, per-image columns and one matmul per block
        # of images (_forward_stacked)
        self.stacked = not (self.caffe_sums or self.reverse or self.per_image
                            or self.batch_inner)
        # columns laid out per image, (B, G, K, P), and kept so
        self.image_cols = self.per_image or self.stacked
        if self.winograd:
            # images per chunk: the input transforms (channels) and the products
            # (outputs) of a chunk each within COL_CHUNK_BYTES
            self.chunk = max(1, COL_CHUNK_BYTES // (
                winograd.tile_points(self.tiling, self.conv_out_sp)
                * max(self.wino_channels, self.num_output) * 4))

    def _winograd_plan(self):
        """The algorithm, from ConvolutionParameter.engine: None for im2col + GEMM
        (engine CAFFE: Caffe's own sums), else Winograd's (stacking, tiling)
        (winograd.plan).  DEFAULT (and CUDNN, which has no CPU meaning) takes
        Winograd where the geometry allows and the shape favours it: F(4x4,3x3) or
        F(2x2,3x3), a 5x5 kernel in 3x3 blocks or by F(2x2,5x5), a strided kernel
        by its phases.  winograd.FORCE ('winograd', 'winograd2', 'winograd4' /
        'caffe', MINICAFFE_CONV_ENGINE) overrides DEFAULT's choice by shape."""
        cp = self.layer_param.convolution_param
        self.check(winograd.FORCE in (None,) + winograd.FORCE_VALUES,
                   'MINICAFFE_CONV_ENGINE must be one of %s, got %r'
                   % (', '.join(winograd.FORCE_VALUES), winograd.FORCE))
        if cp.engine == pb.ConvolutionParameter.CAFFE or not winograd.applicable(
                self.kernel, self.stride, self.dilation, self.pad):
            return None
        stacking, tiling = winograd.plan(self.kernel, self.stride, self.conv_out_sp)
        if winograd.FORCE in winograd.FORCE_VALUES:
            return (stacking, tiling) if winograd.FORCE != 'caffe' else None
        # a strided kernel's phases are the GEMMs' channels (CaffeNet's conv1: 3 x 16)
        copies = stacking.copies if isinstance(stacking, winograd.Phases) else 1
        if winograd.prefer_winograd(self.channels // self.group * copies,
                                    self.num_output // self.group, self.conv_out_sp):
            return stacking, tiling
        return None

    def workspace_shapes(self, bottom, top):
        # at least one image's columns and one zero-padded image (batches of them
        # where they fit the cache budgets)
        padded = tuple(n + 2 * p for n, p in zip(self.conv_in_sp, self.pad))
        shapes = [('the im2col columns of one image (kernel %s, dilation %s, pad %s)'
                   % (self.kernel, self.dilation, self.pad),
                   (self.group * self.kernel_dim, self.conv_out_dim), _f),
                  ('one zero-padded image (pad %s)' % (self.pad,),
                   (self.conv_in_channels,) + padded, _f)]
        if self.stacked and self.phase == pb.TRAIN:
            # backward's per-image weight-gradient products (_backward_stacked)
            images = min(max(self.num, 1), self._stacked_part_images())
            shapes.append(('the weight-gradient products of %d images' % images,
                           (images, self.num_output * self.kernel_dim), _f))
        if self.winograd:
            # the per-point products of a chunk of images (winograd.forward's M;
            # backward's D is the same size)
            images = min(self.chunk, max(self.num, 1))
            th, tw = self.tiling.tiles(self.conv_out_sp)
            shapes.append(('the %r products of %d images' % (self.tiling, images),
                           (self.tiling.points, images * th * tw, self.num_output), _f))
        return shapes

    # -- the column matrix of the whole batch: (G, K, B*P) ------------------
    def _chunks(self):
        for b0 in range(0, self.num, self.chunk):
            yield b0, min(self.num, b0 + self.chunk)

    def _im2col(self, x, out=None, scratch='col'):
        """x: (B, conv_in_channels, *conv_in_sp) -> contiguous (G, K, B*P), written
        into out if given, else into the workspace array named scratch.

        Rows (c, kernel offset), columns (image, output position): Caffe's
        per-image column buffers side by side (batch_inner: (output position,
        image), see _im2col_inner)."""
        src = self._im2col_source(x)
        if out is None:
            out = workspace(scratch, src.shape)
        col = copy_split(src, out=out.reshape(src.shape))
        return col.reshape(self.group, self.kernel_dim, x.shape[0] * self.conv_out_dim)

    def _im2col_source(self, x):
        """The view of x whose contiguous copy is its column matrix: rows (c,
        kernel offset), then the columns' axes, (C, *k, B, *out) (batch_inner:
        (C, *k, *out, B); a 1x1 kernel: (C, B, *sp))."""
        if self.batch_inner:
            return self._im2col_inner_source(x)
        nsp = self.nsp
        xt = x.transpose((1, 0) + tuple(range(2, 2 + nsp)))          # (C, B, *sp)
        if self.is_1x1:
            return xt
        win = windows(xt, self.kernel, self.stride, self.pad, self.dilation, self.conv_out_sp)
        order = (0,) + tuple(range(2, 2 + nsp)) + (1,) + tuple(range(2 + nsp, 2 + 2 * nsp))
        return win.transpose(order)

    def _col2im(self, col, B):
        """col: (G, K, B*P) -> (B, conv_in_channels, *conv_in_sp), a transposed view
        of a workspace array (valid until the next _col2im)."""
        if self.batch_inner:
            return self._col2im_inner(col, B)
        C = self.conv_in_channels
        nsp = self.nsp
        back = (1, 0) + tuple(range(2, 2 + nsp))
        if self.is_1x1:
            return col.reshape((C, B) + self.conv_in_sp).transpose(back)
        c = col.reshape((C,) + self.kernel + (B,) + self.conv_out_sp)
        order = (0, 1 + nsp) + tuple(range(1, 1 + nsp)) + tuple(range(2 + nsp, 2 + 2 * nsp))
        img = col2im(c.transpose(order), self.conv_in_sp, self.kernel, self.stride, self.pad,
                     self.dilation, self.conv_out_sp, scratch='col2im')   # (C, B, *sp)
        return img.transpose(back)

    # -- batch_inner layout: columns (output position, image) ----------------
    def _inner_padding(self):
        return _padding(self.conv_in_sp, self.kernel, self.stride, self.pad, self.dilation,
                        self.conv_out_sp)

    def _im2col_inner_source(self, x):
        """_im2col_source for batch_inner: x copied into the zero-padded workspace
        (C, *padded, B), and its windows (C, *k, *out, B)."""
        B, C, nsp = x.shape[0], x.shape[1], self.nsp
        padding = self._inner_padding()
        psize = tuple(n + l + r for n, (l, r) in zip(self.conv_in_sp, padding))
        xp = workspace('im2col_pad', (C,) + psize + (B,))       # (C, *padded, B)
        if any(l or r for l, r in padding):
            xp.fill(0)
        inside = ((slice(None),) + tuple(slice(l, l + n) for n, (l, r)
                                         in zip(self.conv_in_sp, padding)) + (slice(None),))
        copy_split(x.transpose(tuple(range(1, 2 + nsp)) + (0,)), out=xp[inside])
        st = xp.strides
        shape = (C,) + self.kernel + self.conv_out_sp + (B,)
        strides = ((st[0],) + tuple(st[1 + i] * self.dilation[i] for i in range(nsp))
                   + tuple(st[1 + i] * self.stride[i] for i in range(nsp)) + (st[-1],))
        return as_strided(xp, shape=shape, strides=strides, writeable=False)

    def _col2im_inner(self, col, B):
        """col: (G, K, P*B) -> (B, C, *sp), a transposed view of a workspace array.
        Kernel offsets are summed in Caffe's order, as col2im does."""
        C, nsp, out = self.conv_in_channels, self.nsp, self.conv_out_sp
        padding = self._inner_padding()
        psize = tuple(n + l + r for n, (l, r) in zip(self.conv_in_sp, padding))
        img = workspace('col2im', (C,) + psize + (B,))
        img.fill(0)
        c = col.reshape((C,) + self.kernel + out + (B,))
        pairs = []
        for offs in itertools.product(*[range(k) for k in self.kernel]):
            dst = (tuple(slice(o * d, o * d + s * (n - 1) + 1, s) for o, d, s, n
                         in zip(offs, self.dilation, self.stride, out)))
            pairs.append((dst, offs))

        def part(lo, hi):
            im, cl = img[lo:hi], c[lo:hi]
            for dst, offs in pairs:
                im[(slice(None),) + dst] += cl[(slice(None),) + offs]
        parallel_for(C, part, col.size)
        inside = ((slice(None),) + tuple(slice(l, l + n) for n, (l, r)
                                         in zip(self.conv_in_sp, padding)) + (slice(None),))
        return img[inside].transpose((1 + nsp,) + tuple(range(1 + nsp)))

    # -- per-image layout: Caffe's column buffer of each image, (B, G, K, P) --
    def _image_columns(self, x, out=None, scratch='col'):
        """x: (B, C, *sp) -> (cols, src): the per-image column array (B, G, K, P)
        -- out if given, else the workspace array named scratch -- and the
        window view (B, C, *k, *out) of x whose copy fills it, or (x itself,
        None) for a 1x1 kernel (the input is its own columns)."""
        B = x.shape[0]
        shape = (B, self.group, self.kernel_dim, self.conv_out_dim)
        if self.is_1x1:
            return x.reshape(shape), None
        src = windows(x, self.kernel, self.stride, self.pad, self.dilation, self.conv_out_sp)
        cols = workspace(scratch, shape) if out is None else out.reshape(shape)
        return cols, src

    def _im2col_images(self, x, out=None, scratch='col'):
        """x: (B, C, *sp) -> (B, G, K, P), written into out if given, else into the
        workspace array named scratch (a 1x1 kernel: a view of x itself)."""
        cols, src = self._image_columns(x, out, scratch)
        if src is not None:
            # (B*C, *k, *out): merging the two leading axes lets the copy split
            # over threads even for a single image
            flat = src.reshape((-1,) + src.shape[2:])
            copy_split(flat, out=cols.reshape(flat.shape))
        return cols

    def _col2im_images(self, dcol):
        """dcol: (B, G, K, P) -> (B, C, *sp), a view of a workspace array."""
        B, C = dcol.shape[0], self.conv_in_channels
        if self.is_1x1:
            return dcol.reshape((B, C) + self.conv_in_sp)
        c = dcol.reshape((B * C,) + self.kernel + self.conv_out_sp)
        img = col2im(c, self.conv_in_sp, self.kernel, self.stride, self.pad, self.dilation,
                     self.conv_out_sp, scratch='col2im')
        return img.reshape((B, C) + self.conv_in_sp)

    def _to_gmp(self, y, channels, scratch='gmp'):
        """(B, channels, *sp) -> contiguous (G, channels/G, B*P) (a workspace array;
        columns (position, image) in the batch_inner layout)."""
        B = y.shape[0]
        if self.batch_inner:
            src = y.reshape(B, channels, -1).transpose(1, 2, 0)
        else:
            src = y.reshape(B, channels, -1).transpose(1, 0, 2)
        t = copy_split(src, out=workspace(scratch, src.shape))
        return t.reshape(self.group, channels // self.group, -1)

    def _from_gmp(self, m, dst, bias=None):
        """m: (G, M/G, B*P) -> written into dst viewed (B, M, P), plus bias (M,)
        if given (added during the transposing copy: one pass over the top
        instead of two, the same float32 sums), split over images across the
        worker threads."""
        B, M = dst.shape[0], dst.shape[1]
        out = dst.reshape(B, M, -1)
        if self.batch_inner:
            src = m.reshape(M, -1, B).transpose(2, 0, 1)
        else:
            src = m.reshape(M, B, -1).transpose(1, 0, 2)
        b = None if bias is None else bias[None, :, None]

        def part(lo, hi):
            if b is None:
                out[lo:hi] = src[lo:hi]
            else:
                np.add(src[lo:hi], b, out=out[lo:hi])
        parallel_for(out.shape[0], part, out.size)

    def _weights(self):
        return self.blobs[0].data.reshape(self.group, -1, self.kernel_dim)

    def _weight_diff(self):
        return self.blobs[0].diff.reshape(self.group, -1, self.kernel_dim)

    def _batched(self, a):
        """View a blob array as (B, C, *spatial) (the batch axes flattened)."""
        return a.reshape((self.num,) + a.shape[self.channel_axis:])

    def _add_bias(self, t):
        if self.bias_term:
            v = t.reshape(self.num, self.num_output, -1)
            v += self.blobs[1].data[None, :, None]

    def _bias_backward(self, top):
        if self.bias_term and self.param_propagate_down[1]:
            for t in top:
                self.blobs[1].diff += t.diff.reshape(self.num, self.num_output, -1).sum(
                    axis=(0, 2), dtype=_f)


    # -- GPU (CuPy): whole batches (in chunks of COL_GPU_BYTES of columns) ---
    def _gpu_chunks(self):
        per_image = max(self.col_bytes, 1)
        step = max(1, COL_GPU_BYTES // per_image)
        for b0 in range(0, self.num, step):
            yield b0, min(self.num, b0 + step)

    def _gpu_geom(self, cp):
        """The N-D kernels' geometry array (input, output, kernel, pad, stride, dilation)."""
        key = (self.conv_in_sp, self.conv_out_sp)
        cached = getattr(self, '_gpu_geom_cache', None)
        if cached is None or cached[0] != key:
            g = np.array(self.conv_in_sp + self.conv_out_sp + self.kernel + self.pad
                         + self.stride + self.dilation, np.int32)
            cached = self._gpu_geom_cache = (key, cp.asarray(g))
        return cached[1]

    def _im2col_gpu(self, cp, x):
        """x: device (B, conv_in_channels, *conv_in_sp) -> columns (B, G, K, P)."""
        B = x.shape[0]
        shape = (B, self.group, self.kernel_dim, self.conv_out_dim)
        if self.is_1x1:
            return x.reshape(shape)
        from ..gpu.kernels import launch
        col = cp.empty(shape, dtype=_f)
        C = B * self.conv_in_channels           # the images' channels, one after another
        if self.nsp == 2:
            (H, W), (oh, ow) = self.conv_in_sp, self.conv_out_sp
            n = C * oh * ow
            launch('im2col', 'im2col_gpu_kernel', n,
                   (n, x, H, W) + self.kernel + self.pad + self.stride + self.dilation
                   + (oh, ow, col))
        else:
            self.check(self.nsp <= 8, 'the GPU im2col handles at most 8 spatial axes')
            n = C * self.conv_out_dim
            launch('im2col', 'im2col_nd_kernel', n, (n, self.nsp, x, self._gpu_geom(cp), col))
        return col

    def _col2im_gpu(self, cp, col, out):
        """col: device (B, G, K, P) -> written into out, device (B, C, *conv_in_sp)."""
        if self.is_1x1:
            out[...] = col.reshape(out.shape)
            return
        from ..gpu.kernels import launch
        col = cp.ascontiguousarray(col)
        n = out.size
        if self.nsp == 2:
            (H, W), (oh, ow) = self.conv_in_sp, self.conv_out_sp
            launch('im2col', 'col2im_gpu_kernel', n,
                   (n, col, H, W, out.shape[0] * self.conv_in_channels) + self.kernel
                   + self.pad + self.stride + self.dilation + (oh, ow, out))
        else:
            launch('im2col', 'col2im_nd_kernel', n, (n, self.nsp, col, self._gpu_geom(cp), out))

    def _add_bias_gpu(self, y):
        if self.bias_term:
            v = y.reshape(self.num, self.num_output, -1)
            v += self.blobs[1].gpu_data[None, :, None]

    def _bias_backward_gpu(self, top):
        if self.bias_term and self.param_propagate_down[1]:
            db = self.blobs[1].gpu_diff
            for t in top:
                db += t.gpu_diff.reshape(self.num, self.num_output, -1).sum(axis=(0, 2))

    @staticmethod
    def _outer_gpu(cp, a, col):
        """sum over images b of a[b, g] @ col[b, g]^T: (B, G, M, P), (B, G, K, P) -> (G, M, K)."""
        G, M, K = a.shape[1], a.shape[2], col.shape[2]
        a_t = cp.ascontiguousarray(a.transpose(1, 2, 0, 3)).reshape(G, M, -1)
        c_t = cp.ascontiguousarray(col.transpose(1, 2, 0, 3)).reshape(G, K, -1)
        return cp.matmul(a_t, c_t.transpose(0, 2, 1))


@register_layer('Convolution')
class ConvolutionLayer(BaseConvolutionLayer):
    """N-D convolution with groups, padding, stride and dilation (im2col + GEMM).

    forward:  y[n, m, p] = sum_{c in group(m), i} W[m, c', i] * x[n, c, p*s - pad + i*d] + b[m]
              (zero outside x); per group g: Y_g = W_g @ col_g (+ b)
    backward: dW_g += dY_g @ col_g^T;  db += sum over n, p of dy;
              dx = col2im(W_g^T @ dY_g)
    shapes:   x (N..., C, *in) -> y (N..., num_output, *out),
              out = floor((in + 2 pad - (d (k - 1) + 1)) / s) + 1;
              W (num_output, C/group, *k), b (num_output,)
    Several bottoms give as many tops, all with the same weights.
    Algorithm (``engine``, see _winograd_plan): im2col + GEMM as above, or for 3x3
    stride-1 kernels Winograd F(2x2,3x3) or F(4x4,3x3), for 5x5 ones F(2x2,5x5)
    (minicaffe/winograd.py, same products).
    """

    def compute_output_shape(self, in_sp):
        return conv_out_size(in_sp, self.kernel, self.stride, self.pad, self.dilation)

    def forward(self, bottom, top):
        if self.num == 0:       # an empty batch: Caffe's loop over the images runs 0 times
            return
        if self.winograd:
            return self._forward_winograd(bottom, top)
        W = self._weights()
        G, Mg = self.group, self.num_output // self.group
        self._cols = {}
        for i, (b, t) in enumerate(zip(bottom, top)):
            x = self._batched(b.data)
            y = self._batched(t.data)
            store = self._col_store_for(i)
            for b0, b1 in self._chunks():
                if self.per_image:
                    out = None if store is None else store[b0:b1]
                    col = self._im2col_images(x[b0:b1], out=out)
                    yv = y[b0:b1].reshape(b1 - b0, G, Mg, self.conv_out_dim)
                    for n in range(b1 - b0):
                        for g in range(G):
                            # Caffe's per-image call: row-major W_g @ col, bit-for-bit its sums
                            gemm(W[g], col[n, g], yv[n, g])
                        if self.bias_term:          # while the image is in cache
                            yv[n].reshape(self.num_output, -1)[...] += \
                                self.blobs[1].data[:, None]
                elif self.stacked:
                    self._forward_stacked(x[b0:b1], y[b0:b1],
                                          None if store is None else store[b0:b1])
                elif not self.caffe_sums:
                    col = self._forward_in_blocks(x[b0:b1], y[b0:b1], store)
                else:
                    col = self._im2col(x[b0:b1], out=store)
                    y_g = _group_gemm(W, col, out=workspace('gemm', (G, Mg, col.shape[2])),
                                      blocks=b1 - b0, any_blas=not self.caffe_sums)
                    self._from_gmp(y_g, y[b0:b1],
                                   self.blobs[1].data if self.bias_term else None)
            if store is not None:       # (G, K, B*P), or (B, G, K, P) per image
                self._cols[i] = (b.data, store if self.image_cols else col)

    def _forward_in_blocks(self, x, y, store):
        """DEFAULT's forward in the batch_inner layout: im2col and the GEMM block
        by block of output rows, each block one call on the worker threads, so
        that one block's copies (numpy, holding the GIL between calls) run beside
        another block's BLAS call instead of both threads copying, then both
        multiplying (LeNet's conv2 2.73 -> 2.58 ms inside iterations).  As many
        blocks as blas.gemm_blocks gives the whole product (a function of the
        shape: the same numbers on any thread count), at most one per output
        row, each block's product one BLAS call (split=False: conv2 2.76 ->
        2.63 ms).  The top is copied out afterwards, as one pass: per block, its
        short transposing copies measured no faster.  Returns the columns
        (G, K, P*B)."""
        src = self._im2col_source(x)        # (C, *k, *out, B)
        cols = workspace('col', src.shape) if store is None else store.reshape(src.shape)
        G, Mg, K = self.group, self.num_output // self.group, self.kernel_dim
        B, P = x.shape[0], self.conv_out_dim
        col = cols.reshape(G, K, B * P)
        rows = self.conv_out_sp[0]
        width = B * P // rows                                  # columns per output row
        count = min(rows, len(gemm_blocks(Mg, B * P, K)[1]) - 1)
        bounds = [rows * i // count for i in range(count + 1)]
        W = self._weights()
        y_g = workspace('gemm', (G, Mg, B * P))

        def block(j):
            r0, r1 = bounds[j], bounds[j + 1]
            cut = (slice(None),) * (1 + self.nsp) + (slice(r0, r1),)
            cols[cut] = src[cut]
            for g in range(G):
                gemm(W[g], col[g][:, r0 * width:r1 * width], y_g[g][:, r0 * width:r1 * width],
                     any_blas=True, split=False)
        run_chunks(count, block)
        self._from_gmp(y_g, y, self.blobs[1].data if self.bias_term else None)
        return col

    def _forward_stacked(self, x, y, store):
        """DEFAULT's forward of a stacked layer (self.stacked: small per-image
        products in Caffe's layout, LeNet's conv1): per image y_n,g = W_g @ col_n,g
        + b, the product Caffe makes, in one block of images per thread: each
        block copies its images' columns (B, G, K, P), makes one np.matmul per
        group -- numpy's loop of one BLAS call per image -- straight into the
        top, and adds the bias while the block is in cache.  OpenBLAS runs
        products this small without packing them, which one GEMM over the batch
        pays for the whole batch (LeNet's conv1, 1 thread: 0.36 ms against 0.71
        for that GEMM and its transposing copy into the top).  Each image's
        numbers are its own product's, whatever the blocks.  store: where the
        columns are kept for backward, or None."""
        B, G, Mg = x.shape[0], self.group, self.num_output // self.group
        W = self._weights()
        yv = y.reshape(B, G, Mg, self.conv_out_dim)
        bias = self.blobs[1].data.reshape(G, Mg, 1) if self.bias_term else None
        cols, src = self._image_columns(x, store)
        dst = None if src is None else cols.reshape(src.shape)

        def block(lo, hi):
            if src is not None:
                dst[lo:hi] = src[lo:hi]
            for g in range(G):
                np.matmul(W[g], cols[lo:hi, g], out=yv[lo:hi, g])
            if bias is not None:
                yv[lo:hi] += bias
        run_ranges(_thread_blocks(B), block)

    def _keeps_columns(self):
        """Whether forward keeps each bottom's columns for backward: in TRAIN
        phase, unless too large, a 1x1 kernel (no columns), or a batch-wide
        layout built in chunks."""
        return not (self.phase != pb.TRAIN or self.col_bytes * self.num > COL_CACHE_BYTES
                    or (self.image_cols and self.is_1x1)
                    or (not self.image_cols and self.chunk < self.num))

    def _keeps_winograd_input(self):
        """Whether Winograd forward keeps each bottom's input transform for the
        weight gradient (TRAIN phase, one chunk, backward by Winograd too)."""
        return self.phase == pb.TRAIN and self.chunk >= self.num and self.winograd_backward

    def kept_shapes(self, bottom, top):
        """The columns or input transforms kept for backward (per bottom), and
        under Winograd the weights' transform U with the copy of the weights it
        came from (_winograd_weights)."""
        shapes = []
        if self.winograd:
            shapes += [("the weights' %r transform" % self.tiling,
                        (self.tiling.points, self.num_output * self.wino_channels // self.group),
                        _f),
                       ('the copy of the weights it came from', tuple(self.blobs[0].shape), _f)]
            if self._keeps_winograd_input():
                n = self.wino_channels * self.num * winograd.tile_points(self.tiling,
                                                                          self.conv_out_sp)
                shapes += [('the input transform of bottom %d kept for backward' % i, (n,), _f)
                           for i in range(len(bottom))]
        elif self._keeps_columns():
            shapes += [('the im2col columns of bottom %d kept for backward' % i,
                        (self.group * self.kernel_dim, self.num * self.conv_out_dim), _f)
                       for i in range(len(bottom))]
        return shapes

    def _col_store_for(self, i):
        """In TRAIN phase, the array that keeps bottom i's columns for backward
        (reused across iterations), or None when they are not kept
        (_keeps_columns)."""
        if not self._keeps_columns():
            return None
        n = self.group * self.kernel_dim * self.num * self.conv_out_dim
        store = self._col_store.get(i)
        if store is None or store.size != n:
            store = self._col_store[i] = np.empty(n, _f)
        if self.image_cols:
            return store.reshape(self.num, self.group, self.kernel_dim, self.conv_out_dim)
        return store

    def forward_gpu(self, bottom, top):
        if self.num == 0:       # an empty batch: Caffe's loop over the images runs 0 times
            return
        from ..gpu.backend import cupy_module
        cp = cupy_module()
        G, Mg = self.group, self.num_output // self.group
        W = self.blobs[0].gpu_data.reshape(G, Mg, self.kernel_dim)
        for b, t in zip(bottom, top):
            x = self._batched(b.gpu_data)
            y = self._batched(t.gpu_data)
            for b0, b1 in self._gpu_chunks():
                col = self._im2col_gpu(cp, x[b0:b1])
                cp.matmul(W, col, out=y[b0:b1].reshape(b1 - b0, G, Mg, self.conv_out_dim))
            self._add_bias_gpu(y)

    def backward_gpu(self, top, propagate_down, bottom):
        if self.num == 0:       # an empty batch: Caffe's loop over the images runs 0 times
            return
        from ..gpu.backend import cupy_module
        cp = cupy_module()
        self._bias_backward_gpu(top)
        need_w = self.param_propagate_down[0]
        G, Mg, K, P = self.group, self.num_output // self.group, self.kernel_dim, self.conv_out_dim
        W = self.blobs[0].gpu_data.reshape(G, Mg, K)
        for i, (b, t) in enumerate(zip(bottom, top)):
            if not (need_w or propagate_down[i]):
                continue
            x = self._batched(b.gpu_data)
            dy_all = self._batched(t.gpu_diff)
            dx = self._batched(b.gpu_diff) if propagate_down[i] else None
            for b0, b1 in self._gpu_chunks():
                dy = dy_all[b0:b1].reshape(b1 - b0, G, Mg, P)
                if need_w:
                    dW = self.blobs[0].gpu_diff.reshape(G, Mg, K)
                    dW += self._outer_gpu(cp, dy, self._im2col_gpu(cp, x[b0:b1]))
                if dx is not None:
                    dcol = cp.matmul(W.transpose(0, 2, 1), dy)
                    self._col2im_gpu(cp, dcol, dx[b0:b1])

    def _col_for(self, i, b, b0, b1, x):
        """Bottom i's columns of images b0:b1: kept from forward, or rebuilt."""
        cached = self._cols.get(i)
        if cached is not None and cached[0] is b.data:
            if self.image_cols:
                return cached[1][b0:b1]
            if b1 - b0 == self.num:
                return cached[1]
        return self._im2col_images(x[b0:b1]) if self.image_cols else self._im2col(x[b0:b1])

    def _forward_winograd(self, bottom, top):
        """Forward by Winograd (minicaffe/winograd.py, self.tiling), a chunk of
        images at a time; in TRAIN phase the input transforms are kept for the
        weight gradient when one chunk covers the batch and backward runs by
        Winograd too (winograd_backward; else backward is im2col + GEMM, which
        rebuilds its columns: self._cols stays empty)."""
        U = self._winograd_weights()
        bias = self.blobs[1].data if self.bias_term else None
        keep = self._keeps_winograd_input()
        self._cols = {}
        for i, (b, t) in enumerate(zip(bottom, top)):
            x, y = self._batched(b.data), self._batched(t.data)
            for b0, b1 in self._chunks():
                store = self._col_store.get(('winograd', i)) if keep else None
                if store is not None and store.size != self.wino_channels * self.num * \
                        winograd.tile_points(self.tiling, self.conv_out_sp):
                    store = None
                xw, pad = self._winograd_input(x[b0:b1])
                V = winograd.forward(xw, U, pad, self.conv_out_sp,
                                     y[b0:b1], bias, V=store, tiling=self.tiling)
                if keep:
                    self._col_store[('winograd', i)] = V
                    self._cols[i] = (b.data, V)

    def _winograd_weights(self):
        """U of the weights (of the stacked copies' 3x3 kernels where stacking).
        Kept with a copy of the weights it was computed from and reused while
        they are bit for bit the same: backward then reuses forward's, and a
        net whose weights do not change between passes (testing, `time`)
        transforms them once.  The check is one compare pass over the weights
        (conv3 of CaffeNet: 0.9M values), the transform several passes over 4x
        as many; the weights can change through the pycaffe API at any time,
        so there is no cheaper sign that they did not."""
        w = self.blobs[0].data
        kept = getattr(self, '_winograd_kept', None)
        # the same layout (tiling, stacking, weight shape): U's and the copy's
        # buffers serve again, whatever the values
        layout = (kept is not None and kept[1] is self.tiling and kept[2] is self.stacking
                  and kept[0].shape == w.shape)
        if layout:
            a, b = kept[0].reshape(-1).view(np.int32), w.reshape(-1).view(np.int32)
            # (a solver changes every weight: the first few show it)
            if np.array_equal(a[:256], b[:256]) and np.array_equal(a, b):
                return kept[3]
        ws = self.stacking.stack_weights(w) if self.stacking else w
        U = winograd.transform_weights(ws, self.group, self.tiling,
                                       out=kept[3] if layout else None)
        copy = kept[0] if layout else np.empty_like(w)
        np.copyto(copy, w)
        self._winograd_kept = (copy, self.tiling, self.stacking, U)
        return U

    def _winograd_input(self, x):
        """(input, pad) of the stride-1 convolution Winograd computes: x itself, or
        its stacked copies (already padded)."""
        if not self.stacking:
            return x, self.pad
        return self.stacking.stack_input(x, self.pad, self.conv_out_sp, self.group), (0, 0)

    def _backward_winograd(self, top, propagate_down, bottom):
        """The exact adjoints of _forward_winograd: data and weight gradients."""
        self._bias_backward(top)
        need_w = self.param_propagate_down[0]
        U = self._winograd_weights()
        du = None
        if need_w:
            du = workspace('winograd_du', U.shape)
            du.fill(0)
        for i, (b, t) in enumerate(zip(bottom, top)):
            if not (need_w or propagate_down[i]):
                continue
            x, dy = self._batched(b.data), self._batched(t.diff)
            dx = self._batched(b.diff) if propagate_down[i] else None
            cached = self._cols.get(i)
            for b0, b1 in self._chunks():
                if cached is not None and cached[0] is b.data and b1 - b0 == self.num:
                    V = cached[1]
                elif need_w:
                    xw, pad = self._winograd_input(x[b0:b1])
                    V = winograd.input_transform(xw, pad, self.conv_out_sp,
                                                 self.group, tiling=self.tiling)
                else:
                    V = None
                pad = (0, 0) if self.stacking else self.pad
                dxw = None
                if dx is not None:
                    dxw = dx[b0:b1]
                    if self.stacking:       # the copies' gradient, then summed back
                        dxw = workspace('winograd_stacked_dx', (b1 - b0, self.wino_channels)
                                        + self.stacking.input_size(self.conv_out_sp))
                winograd.backward(dy[b0:b1], U, V, pad, dx=dxw, du=du, tiling=self.tiling)
                if dx is not None and self.stacking:
                    self.stacking.unstack_input_grad(dxw, self.pad, dx[b0:b1], self.group)
        if need_w:
            dw = winograd.weight_gradient_from(du, self.tiling)
            if self.stacking:
                dw = self.stacking.unstack_weight_grad(dw)
            self.blobs[0].diff += dw
        self._cols = {}

    def backward(self, top, propagate_down, bottom):
        if self.num == 0:       # an empty batch: Caffe's loop over the images runs 0 times
            return
        if self.winograd_backward:
            return self._backward_winograd(top, propagate_down, bottom)
        # per image (and stacked), the bias gradient is summed image by image;
        # batched, DEFAULT sums the rows of dY in the GEMM layout (contiguous)
        need_b = self.bias_term and self.param_propagate_down[1]
        if not self.per_image and self.caffe_sums:
            self._bias_backward(top)
            need_b = False
        need_w = self.param_propagate_down[0]
        W = self._weights()
        for i, (b, t) in enumerate(zip(bottom, top)):
            if not (need_w or need_b or propagate_down[i]):
                continue
            x = self._batched(b.data)
            dy_all = self._batched(t.diff)
            dx = self._batched(b.diff) if propagate_down[i] else None
            for b0, b1 in self._chunks():
                if self.per_image:
                    self._backward_per_image(i, b, x, dy_all, dx, b0, b1, need_w, need_b, W)
                    continue
                if self.stacked:
                    self._backward_stacked(i, b, x, dy_all, dx, b0, b1, need_w, need_b, W)
                    continue
                dy = self._to_gmp(dy_all[b0:b1], self.num_output)
                if need_b:
                    self.blobs[1].diff += np.add.reduce(dy.reshape(self.num_output, -1), axis=1)
                transposed = not self.caffe_sums and dy.shape[1] <= self.kernel_dim
                if need_w and dx is not None and self.batch_inner and transposed:
                    # both gradients' blocks on the threads at once, alternating,
                    # so that the col2im of a data-gradient block (numpy, holding
                    # the GIL between its calls) runs beside a weight-gradient
                    # block's BLAS call rather than beside another col2im
                    col = self._col_for(i, b, b0, b1, x)
                    weight = _outer_transposed_tasks(self._weight_diff(), dy, col)
                    if weight is not None:
                        data, _ = self._data_gradient_tasks(W, dy, b1 - b0, out=dx[b0:b1])
                        run_calls(alternate(data, weight[0]))
                        weight[1]()
                        continue
                if need_w:
                    col = self._col_for(i, b, b0, b1, x)
                    if not transposed:
                        _accumulate_outer(self._weight_diff(), dy, col)
                    else:
                        _accumulate_outer_transposed(self._weight_diff(), dy, col)
                if dx is not None and self.batch_inner:
                    self._data_gradient_inner(W, dy, b1 - b0, out=dx[b0:b1])
                elif dx is not None:
                    # (the column workspace is free again: col was consumed above)
                    dcol = _group_gemm(W, dy, trans_a=True,
                                       out=workspace('col', (self.group, self.kernel_dim,
                                                             dy.shape[2])), blocks=b1 - b0,
                                       any_blas=not self.caffe_sums)
                    dx[b0:b1] = self._col2im(dcol, b1 - b0)
        self._cols = {}

    def _data_gradient_inner(self, W, dy, B, out=None):
        """col2im(W_g^T @ dY_g) in the batch_inner layout (_data_gradient_tasks
        run on the worker threads), written into out (B, C, *sp) if given.
        Returns a view (B, C, *sp) of the result."""
        tasks, view = self._data_gradient_tasks(W, dy, B, out)
        run_calls(tasks)
        return view

    def _data_gradient_tasks(self, W, dy, B, out=None):
        """col2im(W_g^T @ dY_g) in the batch_inner layout, a few input channels at
        a time: each block's columns (rows (c, kernel offset) of W_g^T @ dY_g) are
        summed into the image while still in the core's cache, instead of writing
        the whole column matrix (LeNet's conv2: 8 MB) and reading it back.  The
        blocks depend only on the shapes and each product row is the one the
        whole GEMM forms, so the numbers are those of _col2im_inner on the whole
        product, on any number of threads.  With out (B, C, *sp) each block also
        copies its channels there, while they are in cache and on its thread (a
        serial transposing pass otherwise).  Returns the blocks' calls
        (independent of each other) and the view (B, C, *sp) of the result."""
        C, nsp, osp = self.conv_in_channels, self.nsp, self.conv_out_sp
        Cg, kk = C // self.group, _prod(self.kernel)
        padding = self._inner_padding()
        psize = tuple(n + l + r for n, (l, r) in zip(self.conv_in_sp, padding))
        img = workspace('col2im', (C,) + psize + (B,))
        pairs = [(tuple(slice(o * d, o * d + s * (n - 1) + 1, s) for o, d, s, n
                        in zip(offs, self.dilation, self.stride, osp)), offs)
                 for offs in itertools.product(*[range(k) for k in self.kernel])]
        inside = ((slice(None),) + tuple(slice(l, l + n) for n, (l, r)
                                         in zip(self.conv_in_sp, padding)) + (slice(None),))
        view = img[inside].transpose((1 + nsp,) + tuple(range(1 + nsp)))
        step = max(1, COL2IM_BLOCK_BYTES // (kk * dy.shape[2] * 4))
        blocks = [(g, c0, min(Cg, c0 + step)) for g in range(self.group)
                  for c0 in range(0, Cg, step)]

        def block(g, c0, c1):
            dcol = workspace('dcol_block', ((c1 - c0) * kk, dy.shape[2]))
            gemm(W[g][:, c0 * kk:c1 * kk], dy[g], dcol, trans_a=True,
                 any_blas=not self.caffe_sums)
            c = dcol.reshape((c1 - c0,) + self.kernel + osp + (B,))
            ch = slice(g * Cg + c0, g * Cg + c1)
            im = img[ch]
            im.fill(0)
            for dst, offs in pairs:
                im[(slice(None),) + dst] += c[(slice(None),) + offs]
            if out is not None:
                out[:, ch] = view[:, ch]
        return [lambda blk=blk: block(*blk) for blk in blocks], view

    def _weight_gradient_parts(self, B):
        """Into how many parts of the images the per-image weight gradient is cut.
        Caffe sums image after image into dW, and so does engine CAFFE.  Where
        one image's product cannot be cut into blocks of its output (gemm_blocks:
        the LRCN activity net's conv1, dW 96 x 147 from k = 12321 positions) the
        sum would use one core only: DEFAULT then sums up to GEMM_MAX_CHUNKS runs
        of images into partial gradients on the worker threads, added in order
        (a function of the shapes only: the same numbers on any thread count)."""
        if B < 2 or self.caffe_sums:
            return 1
        Mg = self.num_output // self.group
        if len(gemm_blocks(Mg, self.kernel_dim, self.conv_out_dim)[1]) > 2:
            return 1
        return min(B, GEMM_MAX_CHUNKS)

    def _weight_gradient_per_image(self, dy, col):
        """dW_g += dY_g @ col_g^T for images n of dy (B, G, M/G, P) and col
        (B, G, K, P): image after image, or in parts (_weight_gradient_parts)."""
        B, G = dy.shape[:2]
        dW = self._weight_diff()
        parts = self._weight_gradient_parts(B)
        bounds = [B * p // parts for p in range(parts + 1)]
        partial = workspace('dw_parts', (parts - 1,) + dW.shape) if parts > 1 else None

        def part(p):
            out = dW
            if p:
                out = partial[p - 1]
                out.fill(0)
            for n in range(bounds[p], bounds[p + 1]):
                for g in range(G):
                    gemm_accumulate(dy[n, g], col[n, g], out[g], trans_b=True)
        run_chunks(parts, part)
        for p in range(1, parts):
            dW += partial[p - 1]

    def _stacked_part_images(self):
        """How many images' weight-gradient products _backward_stacked keeps
        before summing them (STACKED_PART_ELEMS elements, at least one image)."""
        return max(1, STACKED_PART_ELEMS // (self.num_output * self.kernel_dim))

    def _backward_stacked(self, i, b, x, dy_all, dx, b0, b1, need_w, need_b, W):
        """Images b0:b1 of a stacked layer's backward (_forward_stacked), a block
        of images per thread: each block sums its images' dY over the positions
        (the bias), forms their dY_n,g @ col_n,g^T (one np.matmul per group), and
        their dcol_n,g = W_g^T @ dY_n,g with its col2im into dx.  The per-image
        sums and products are then added image after image (in parts of the
        images of at most STACKED_PART_ELEMS products, a function of the shapes):
        the same numbers on any number of threads."""
        G, M = self.group, self.num_output
        Mg, K, P = M // G, self.kernel_dim, self.conv_out_dim
        dy = dy_all[b0:b1].reshape(b1 - b0, G, Mg, P)
        col = self._col_for(i, b, b0, b1, x) if need_w else None
        step = self._stacked_part_images()
        for p0 in range(0, b1 - b0, step):
            p1 = min(b1 - b0, p0 + step)
            per_w = workspace('dw_images', (p1 - p0, G, Mg, K)) if need_w else None
            per_b = workspace('db_images', (p1 - p0, M)) if need_b else None

            def block(lo, hi):
                d = dy[p0 + lo:p0 + hi]
                if need_b:
                    np.add.reduce(d.reshape(hi - lo, M, P), axis=2, out=per_b[lo:hi])
                if need_w:
                    c = col[p0 + lo:p0 + hi]
                    for g in range(G):
                        np.matmul(d[:, g], c[:, g].transpose(0, 2, 1), out=per_w[lo:hi, g])
                if dx is not None:
                    dcol = workspace('dcol_images', (hi - lo, G, K, P))
                    for g in range(G):
                        np.matmul(W[g].T, d[:, g], out=dcol[:, g])
                    dx[b0 + p0 + lo:b0 + p0 + hi] = self._col2im_images(dcol)
            run_ranges(_thread_blocks(p1 - p0), block)
            if need_w:
                self._weight_diff()[...] += np.add.reduce(per_w, axis=0)
            if need_b:
                self.blobs[1].diff[...] += np.add.reduce(per_b, axis=0)

    def _backward_per_image(self, i, b, x, dy_all, dx, b0, b1, need_w, need_b, W):
        """Images b0:b1 of backward, one GEMM per image and group as Caffe does:
        db += the image's dY summed over positions, dW_g += dY_g @ col_g^T (image by
        image), dcol_g = W_g^T @ dY_g, dx = col2im."""
        B, G, Mg = b1 - b0, self.group, self.num_output // self.group
        K, P = self.kernel_dim, self.conv_out_dim
        dy = dy_all[b0:b1].reshape(B, G, Mg, P)
        if need_b:
            db = self.blobs[1].diff
            for n in range(B):
                db += dy[n].reshape(self.num_output, P).sum(axis=1, dtype=_f)
        if need_w:
            self._weight_gradient_per_image(dy, self._col_for(i, b, b0, b1, x))
        if dx is not None:
            # (the column workspace is free again: col was consumed above)
            dcol = workspace('col', (B, G, K, P))
            for n in range(B):
                for g in range(G):
                    gemm(W[g], dy[n, g], dcol[n, g], trans_a=True)
            dx[b0:b1] = self._col2im_images(dcol)


@register_layer('Deconvolution')
class DeconvolutionLayer(BaseConvolutionLayer):
    """Transposed convolution: forward is the convolution's backward-data pass.

    forward:  per group g: y = col2im(W_g^T @ X_g) + b   (X_g: (C/G, N*in) input rows)
    backward: dW_g += X_g @ col(dy)_g^T;  db += sum of dy;  dx_g = W_g @ col(dy)_g
    shapes:   x (N..., C, *in) -> y (N..., num_output, *out),
              out = s (in - 1) + d (k - 1) + 1 - 2 pad;
              W (C, num_output/group, *k), b (num_output,)
    """
    reverse = True

    def compute_output_shape(self, in_sp):
        return deconv_out_size(in_sp, self.kernel, self.stride, self.pad, self.dilation)

    def forward(self, bottom, top):
        if self.num == 0:       # an empty batch: Caffe's loop over the images runs 0 times
            return
        W = self._weights()
        for b, t in zip(bottom, top):
            x = self._batched(b.data)
            y = self._batched(t.data)
            for b0, b1 in self._chunks():
                xg = self._to_gmp(x[b0:b1], self.channels)
                col = _group_gemm(W, xg, trans_a=True,
                                  out=workspace('col', (self.group, self.kernel_dim, xg.shape[2])),
                                  blocks=b1 - b0)
                y[b0:b1] = self._col2im(col, b1 - b0)
            self._add_bias(t.data)

    def backward(self, top, propagate_down, bottom):
        if self.num == 0:       # an empty batch: Caffe's loop over the images runs 0 times
            return
        self._bias_backward(top)
        need_w = self.param_propagate_down[0]
        W = self._weights()
        for i, (b, t) in enumerate(zip(bottom, top)):
            if not (need_w or propagate_down[i]):
                continue
            x = self._batched(b.data)
            dy = self._batched(t.diff)
            dx = self._batched(b.diff) if propagate_down[i] else None
            for b0, b1 in self._chunks():
                col = self._im2col(dy[b0:b1])
                if need_w:
                    xg = self._to_gmp(x[b0:b1], self.channels)
                    _accumulate_outer(self._weight_diff(), xg, col)
                if dx is not None:
                    G, Mg = self.group, self.channels // self.group
                    self._from_gmp(_group_gemm(W, col, out=workspace('gemm', (G, Mg, col.shape[2])),
                                                   blocks=b1 - b0), dx[b0:b1])


    def forward_gpu(self, bottom, top):
        if self.num == 0:       # an empty batch: Caffe's loop over the images runs 0 times
            return
        from ..gpu.backend import cupy_module
        cp = cupy_module()
        G, Cg, K, P = self.group, self.channels // self.group, self.kernel_dim, self.conv_out_dim
        Wt = self.blobs[0].gpu_data.reshape(G, Cg, K).transpose(0, 2, 1)
        for b, t in zip(bottom, top):
            x = self._batched(b.gpu_data)
            y = self._batched(t.gpu_data)
            for b0, b1 in self._gpu_chunks():
                xg = x[b0:b1].reshape(b1 - b0, G, Cg, P)
                self._col2im_gpu(cp, cp.matmul(Wt, xg), y[b0:b1])
            self._add_bias_gpu(y)

    def backward_gpu(self, top, propagate_down, bottom):
        if self.num == 0:       # an empty batch: Caffe's loop over the images runs 0 times
            return
        from ..gpu.backend import cupy_module
        cp = cupy_module()
        self._bias_backward_gpu(top)
        need_w = self.param_propagate_down[0]
        G, Cg, K, P = self.group, self.channels // self.group, self.kernel_dim, self.conv_out_dim
        W = self.blobs[0].gpu_data.reshape(G, Cg, K)
        for i, (b, t) in enumerate(zip(bottom, top)):
            if not (need_w or propagate_down[i]):
                continue
            x = self._batched(b.gpu_data)
            dy = self._batched(t.gpu_diff)
            dx = self._batched(b.gpu_diff) if propagate_down[i] else None
            for b0, b1 in self._gpu_chunks():
                col = self._im2col_gpu(cp, dy[b0:b1])
                if need_w:
                    dW = self.blobs[0].gpu_diff.reshape(G, Cg, K)
                    dW += self._outer_gpu(cp, x[b0:b1].reshape(b1 - b0, G, Cg, P), col)
                if dx is not None:
                    cp.matmul(W, col, out=dx[b0:b1].reshape(b1 - b0, G, Cg, P))


@register_layer('Im2col')
class Im2colLayer(Layer):
    """Caffe's Im2col layer: the column buffer of each image as a blob.

    forward:  y[n, (c, i...), p...] = x[n, c, p*s - pad + i*d] (0 outside x)
    backward: dx = col2im(dy) (sums the windows that overlap)
    shapes:   x (N..., C, *in) -> y (N..., C * prod(k), *out),
              out = floor((in + 2 pad - (d (k - 1) + 1)) / s) + 1
    """
    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom, top):
        cp = self.layer_param.convolution_param
        (self.channel_axis, self.kernel, self.stride, self.pad,
         self.dilation) = parse_conv_geometry(self, cp, bottom[0], min_spatial_axes=1)
        self.nsp = len(self.kernel)

    def reshape(self, bottom, top):
        ax = self.channel_axis
        shape = bottom[0].shape
        self.check(len(shape) == ax + 1 + self.nsp, 'bottom num_axes may not change')
        in_sp = shape[ax + 1:]
        out = conv_out_size(in_sp, self.kernel, self.stride, self.pad, self.dilation)
        self.check(all(o > 0 for o in out), 'output size %s is not positive for input %s'
                   % (out, in_sp))
        self.out = out
        self.num = _prod(shape[:ax])
        self.channels = shape[ax]
        top[0].reshape(shape[:ax] + (shape[ax] * _prod(self.kernel),) + tuple(out))

    def workspace_shapes(self, bottom, top):
        in_sp = bottom[0].shape[self.channel_axis + 1:]
        return [('the zero-padded input (pad %s)' % (self.pad,),
                 (self.num * self.channels,) + tuple(n + 2 * p for n, p in zip(in_sp, self.pad)), _f)]

    def _col_shape(self):
        return (self.num, self.channels) + self.kernel + tuple(self.out)

    def forward(self, bottom, top):
        if self.num == 0:       # an empty batch: Caffe's loop over the images runs 0 times
            return
        x = bottom[0].data.reshape((self.num,) + bottom[0].shape[self.channel_axis:])
        top[0].data.reshape(self._col_shape())[...] = windows(
            x, self.kernel, self.stride, self.pad, self.dilation, self.out)

    def backward(self, top, propagate_down, bottom):
        if self.num == 0:       # an empty batch: Caffe's loop over the images runs 0 times
            return
        if not propagate_down[0]:
            return
        col = top[0].diff.reshape(self._col_shape())
        in_sp = bottom[0].shape[self.channel_axis + 1:]
        bottom[0].diff[...] = col2im(col, in_sp, self.kernel, self.stride, self.pad,
                                     self.dilation, self.out).reshape(bottom[0].shape)


@register_layer('Crop')
class CropLayer(Layer):
    """Crop bottom[0] to the shape of bottom[1] on the axes from ``axis`` on.

    forward:  y = x[..., o_axis : o_axis + ref.shape[axis], ...]  (axes >= axis;
              offsets: none -> 0, one -> the same for every axis, else one per axis)
    backward: dx = 0 except the cropped window, which gets dy; bottom[1] gets nothing
    shapes:   x (d0, ..., dn), ref (r0, ..., rn) -> y (d0, .., d_{axis-1}, r_axis, ..., rn)
    """
    exact_num_bottom = 2
    exact_num_top = 1

    def setup(self, bottom, top):
        cp = self.layer_param.crop_param
        n = bottom[0].num_axes()
        self.check(bottom[1].num_axes() == n,
                   'both bottoms must have the same number of axes (shapes %s and %s)'
                   % (bottom[0].shape, bottom[1].shape))
        self.start = _canonical_axis(self, bottom[0], cp.axis)
        self.check(self.start < n, 'crop axis bigger than input dim')
        if len(cp.offset) > 1:
            self.check(self.start + len(cp.offset) == n,
                       'number of offset values specified must be equal to the number of'
                       ' dimensions following axis (%d offsets, axis %d, %d axes)'
                       % (len(cp.offset), self.start, n))

    def reshape(self, bottom, top):
        cp = self.layer_param.crop_param
        s0, s1 = bottom[0].shape, bottom[1].shape
        offsets, shape = [], []
        for i in range(len(s0)):
            off, size = 0, s0[i]
            if i >= self.start:
                size = s1[i]
                if len(cp.offset) == 1:
                    off = int(cp.offset[0])
                elif len(cp.offset) > 1:
                    off = int(cp.offset[i - self.start])
                self.check(s0[i] - off >= s1[i],
                           'the crop for dimension %d is out-of-bounds with size %d and offset %d'
                           ' (bottom shape %s)' % (i, s1[i], off, s0))
            offsets.append(off)
            shape.append(size)
        self.window = tuple(slice(o, o + n) for o, n in zip(offsets, shape))
        top[0].reshape(shape)

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data[self.window]

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            d = bottom[0].diff
            d[...] = 0
            d[self.window] = top[0].diff
