"""The CPU fast paths compute the numbers of the straightforward code: batched and
per-image convolution GEMMs, the batch-innermost column layout, LRN's precomputed
saxpy terms, the LSTM's skipped sequence-start GEMM and its gate functions, and
max pooling's scatter for windows that do not overlap and its view-only forward
for windows that tile the input."""
import numpy as np
import pytest

from minicaffe.commands import timing
from minicaffe.gradcheck import make_layer
from minicaffe.layers import lrn as lrn_mod
from minicaffe.layers import recurrent as rec
from minicaffe.layers import vision
from minicaffe.layers.pooling import (PoolGeometry, max_pool_backward, max_pool_forward,
                                      pooled_shape)
from minicaffe.im2col import im2col


def _conv(spec, shape, seed=3):
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    layer, bottom, top = make_layer('type: "Convolution" convolution_param { %s'
                                    ' weight_filler { type: "gaussian" std: 0.1 }'
                                    ' bias_filler { type: "gaussian" std: 0.1 } }' % spec,
                                    [x], phase='TRAIN')
    return layer, bottom, top


def _conv_reference(x, W, b, stride, pad, group):
    """Direct float64 convolution (N, C, H, W) -> (N, M, OH, OW)."""
    N, C, H, Wd = x.shape
    M, Cg, kh, kw = W.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh = (H + 2 * pad - kh) // stride + 1
    ow = (Wd + 2 * pad - kw) // stride + 1
    y = np.zeros((N, M, oh, ow))
    Mg = M // group
    for m in range(M):
        g = m // Mg
        for i in range(kh):
            for j in range(kw):
                patch = xp[:, g * Cg:(g + 1) * Cg, i:i + stride * oh:stride, j:j + stride * ow:stride]
                y[:, m] += np.einsum('nchw,c->nhw', patch, W[m, :, i, j])
    return y + b[None, :, None, None]


@pytest.mark.parametrize('spec,shape,per_image,inner', [
    ('num_output: 8 kernel_size: 5', (6, 4, 12, 12), False, True),          # LeNet-like
    ('num_output: 6 kernel_size: 3 pad: 1 group: 2', (3, 4, 7, 7), False, True),
    ('num_output: 12 kernel_size: 1', (3, 4, 5, 5), False, False),          # 1x1
    ('num_output: 16 kernel_size: 2', (2, 3, 30, 30), False, False),        # K < 2 M
    ('num_output: 8 kernel_size: 3 stride: 1', (2, 8, 40, 40), True, False),  # per image
    ('num_output: 32 kernel_size: 3 stride: 2 pad: 1 group: 2', (3, 16, 45, 45), True, False),
    ('num_output: 64 kernel_size: 1', (2, 64, 17, 17), True, False),         # per image, 1x1
])
@pytest.mark.parametrize('images_per_chunk', [None, 1])
def test_convolution_paths_match_a_direct_convolution(spec, shape, per_image, inner,
                                                      images_per_chunk, monkeypatch):
    if images_per_chunk is not None:       # per-image columns built one image at a time
        monkeypatch.setattr(vision, 'COL_CACHE_CHUNK_BYTES', 1)
        monkeypatch.setattr(vision, 'COL_CHUNK_BYTES', 1)
    layer, bottom, top = _conv(spec, shape)
    layer.reshape(bottom, top)
    mg = layer.num_output // layer.group
    assert vision._per_image(mg, layer.kernel_dim, layer.conv_out_dim) == per_image
    assert layer.batch_inner == inner
    assert layer.per_image == per_image
    assert images_per_chunk is None or layer.chunk == 1
    layer.forward(bottom, top)
    W, b = layer.blobs[0].data, layer.blobs[1].data
    cp = layer.layer_param.convolution_param
    stride = cp.stride[0] if len(cp.stride) else 1
    pad = cp.pad[0] if len(cp.pad) else 0
    want = _conv_reference(bottom[0].data, W, b, stride, pad, layer.group)
    np.testing.assert_allclose(top[0].data, want, rtol=1e-5, atol=1e-5)
    # backward: the adjoint identities <dy, conv(x)> = <dx, x> + <dW, W> pieces
    dy = np.random.default_rng(9).standard_normal(top[0].shape).astype(np.float32)
    top[0].diff[...] = dy
    for blob in layer.blobs:
        blob.diff[...] = 0
    layer.backward(top, [True], bottom)
    eps = 1e-2
    for arr, diff in ((bottom[0].data, bottom[0].diff), (W, layer.blobs[0].diff)):
        d = np.random.default_rng(11).standard_normal(arr.shape)
        saved = arr.copy()
        arr[...] = saved + eps * d
        plus = _conv_reference(bottom[0].data, W, b, stride, pad, layer.group)
        arr[...] = saved - eps * d
        minus = _conv_reference(bottom[0].data, W, b, stride, pad, layer.group)
        arr[...] = saved
        numeric = np.sum(dy * (plus - minus)) / (2 * eps)
        assert np.sum(diff * d) == pytest.approx(numeric, rel=1e-3, abs=1e-3)


@pytest.mark.parametrize('spec,shape', [
    ('num_output: 50 kernel_size: 5', (64, 20, 12, 12)),                  # LeNet's conv2
    ('num_output: 6 kernel_size: 3 pad: 1 group: 2 stride: 2', (3, 8, 9, 7)),
    ('num_output: 4 kernel_h: 2 kernel_w: 3 dilation: 2', (5, 3, 9, 10))])
@pytest.mark.parametrize('threads_', [1, 3])
def test_blocked_data_gradient_equals_the_whole_column_matrix_route(spec, shape, threads_,
                                                                     set_threads, monkeypatch):
    """_data_gradient_inner (columns a few channels at a time, summed while in
    cache) gives the bits of col2im over the whole product W^T dY, for blocks
    of one channel up to all of them and any thread count."""
    layer, bottom, top = _conv(spec, shape)
    layer.reshape(bottom, top)
    assert layer.batch_inner
    set_threads(threads_, split_small=True)
    W = layer.blobs[0].data.reshape(layer.group, -1, layer.kernel_dim)
    dy = layer._to_gmp(np.random.default_rng(5).standard_normal(top[0].shape)
                       .astype(np.float32), layer.num_output).copy()
    B = shape[0]
    want = layer._col2im(vision._group_gemm(W, dy, trans_a=True, blocks=B), B).copy()
    for block_bytes in (1, 1 << 16, 1 << 30):
        monkeypatch.setattr(vision, 'COL2IM_BLOCK_BYTES', block_bytes)
        got = layer._data_gradient_inner(W, dy, B)
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize('spec,shape', [
    ('num_output: 50 kernel_size: 5', (64, 20, 12, 12)),                  # LeNet's conv2
    ('num_output: 6 kernel_size: 3 pad: 1 group: 2', (3, 4, 7, 7))])
def test_default_engine_weight_gradient_is_the_transposed_product(spec, shape, set_threads,
                                                                  monkeypatch):
    """DEFAULT forms a batch_inner layer's weight gradient as col dY^T and its
    bias gradient from dY's rows in the GEMM layout: within float32 rounding of
    Caffe's dY col^T and sum, which engine CAFFE keeps bit for bit, and the
    same bits on 1 and 3 threads."""
    grads, routes = {}, []
    transposed = vision._accumulate_outer_transposed
    monkeypatch.setattr(vision, '_accumulate_outer_transposed',
                        lambda *a: routes.append(engine) or transposed(*a))
    for engine in ('DEFAULT', 'CAFFE'):
        for t in (1, 3):
            set_threads(t)
            layer, bottom, top = _conv(spec + ' engine: %s' % engine, shape)
            layer.reshape(bottom, top)
            assert not layer.per_image and layer.caffe_sums == (engine == 'CAFFE')
            layer.forward(bottom, top)
            top[0].diff[...] = np.random.default_rng(5).standard_normal(top[0].shape)
            layer.blobs[0].diff[...] = 0.5
            layer.blobs[1].diff[...] = 0.25
            layer.backward(top, [False], bottom)
            grads[engine, t] = layer.blobs[0].diff.copy()
            grads['bias', engine, t] = layer.blobs[1].diff.copy()
    for key in ((), ('bias',)):
        assert np.array_equal(grads[key + ('DEFAULT', 1)], grads[key + ('DEFAULT', 3)])
        assert np.array_equal(grads[key + ('CAFFE', 1)], grads[key + ('CAFFE', 3)])
    # the bias: Caffe's sum over (images, positions) kept by CAFFE; DEFAULT sums
    # the rows of dY in the GEMM layout
    dy4 = top[0].diff.reshape(shape[0], layer.num_output, -1)
    assert np.array_equal(grads['bias', 'CAFFE', 1], 0.25 + dy4.sum(axis=(0, 2), dtype=np.float32))
    exact_b = 0.25 + dy4.astype(np.float64).sum(axis=(0, 2))
    assert np.abs(grads['bias', 'DEFAULT', 1] - exact_b).max() <= 1e-5 * np.abs(exact_b).max()
    W = layer.blobs[0].data.reshape(layer.group, -1, layer.kernel_dim)
    dy = layer._to_gmp(top[0].diff, layer.num_output).copy()
    col = layer._im2col(bottom[0].data).copy()
    want = np.full(W.shape, 0.5, np.float32)
    vision._accumulate_outer(want, dy, col)              # Caffe's orientation, one call
    assert np.array_equal(grads['CAFFE', 1], want.reshape(grads['CAFFE', 1].shape))
    exact = 0.5 + np.einsum('gmp,gkp->gmk', dy.astype(np.float64), col.astype(np.float64))
    got = grads['DEFAULT', 1].reshape(W.shape)
    assert np.abs(got - exact).max() <= 1e-5 * np.abs(exact).max()
    assert routes == ['DEFAULT', 'DEFAULT']


@pytest.mark.parametrize('spec,shape', [
    ('num_output: 50 kernel_size: 5', (64, 20, 12, 12)),                  # LeNet's conv2
    ('num_output: 6 kernel_size: 3 pad: 1 group: 2', (3, 4, 7, 7))])
@pytest.mark.parametrize('threads_', [1, 3])
def test_both_gradients_run_together_with_the_numbers_of_running_them_apart(
        spec, shape, threads_, set_threads, monkeypatch):
    """DEFAULT's batch_inner backward runs the weight-gradient GEMM blocks and the
    data-gradient blocks as one set of calls on the threads: the same bits as
    running them one after the other, on any thread count."""
    set_threads(threads_, split_small=True)
    merged = []
    real = vision._outer_transposed_tasks
    results = []
    layer, bottom, top = _conv(spec, shape)
    layer.reshape(bottom, top)
    assert layer.batch_inner and not layer.caffe_sums
    top[0].diff[...] = np.random.default_rng(5).standard_normal(top[0].shape)
    for together in (True, False):
        monkeypatch.setattr(vision, '_outer_transposed_tasks',
                            (lambda *a: merged.append(1) or real(*a)) if together
                            else (lambda *a: None))
        layer.forward(bottom, top)
        for p in layer.blobs:
            p.diff[...] = 0.5
        layer.backward(top, [True], bottom)
        results.append([bottom[0].diff.copy()] + [p.diff.copy() for p in layer.blobs])
    assert merged
    for a, b in zip(*results):
        assert np.array_equal(a.view(np.uint32), b.view(np.uint32))


BLOCKED_FORWARDS = [
    # batch_inner, blocks of output rows (at most one per row)
    ('num_output: 50 kernel_size: 5', (64, 20, 12, 12), 2),              # LeNet's conv2
    ('num_output: 50 kernel_size: 5', (64, 20, 12, 12), 4),
    ('num_output: 8 kernel_size: 3 group: 2 pad: 1', (16, 4, 6, 6), 4),
    ('num_output: 6 kernel_size: 3 stride: 2', (8, 3, 9, 7), 9)]


@pytest.mark.parametrize('spec,shape,blocks', BLOCKED_FORWARDS)
@pytest.mark.parametrize('threads_', [1, 3])
def test_blocked_forward_gives_the_numbers_of_the_whole_batch(spec, shape, blocks,
                                                              threads_, set_threads, monkeypatch):
    """DEFAULT's batch_inner forward runs im2col and the GEMM block by block of
    output rows: the top and the columns kept for backward are those of the
    whole-batch route, bit for bit, on any thread count."""
    set_threads(threads_, split_small=True)
    calls = []
    real = vision.ConvolutionLayer._forward_in_blocks
    monkeypatch.setattr(vision.ConvolutionLayer, '_forward_in_blocks',
                        lambda self, *a: calls.append(1) or real(self, *a))
    monkeypatch.setattr(vision, 'gemm_blocks', lambda m, n, k: (1, list(range(blocks)) + [n]))
    layer, bottom, top = _conv(spec, shape)
    layer.reshape(bottom, top)
    assert layer.batch_inner and not layer.caffe_sums
    layer.forward(bottom, top)
    assert calls
    W = layer.blobs[0].data.reshape(layer.group, -1, layer.kernel_dim)
    col = layer._im2col(bottom[0].data).copy()
    want = np.empty(top[0].shape, np.float32)
    layer._from_gmp(vision._group_gemm(W, col, blocks=shape[0], any_blas=True), want,
                    layer.blobs[1].data)
    assert np.array_equal(top[0].data.view(np.uint32), want.view(np.uint32))
    assert np.array_equal(layer._cols[0][1], col)


@pytest.mark.parametrize('spec,shape', [
    ('num_output: 50 kernel_size: 5', (64, 20, 12, 12)),                  # LeNet's conv2
    ('num_output: 6 kernel_size: 3 pad: 1 group: 2', (3, 4, 7, 7)),
    ('num_output: 20 kernel_size: 5 engine: CAFFE', (64, 1, 28, 28))])   # Caffe's layout
def test_batched_forward_adds_the_bias_in_the_transposing_copy_bit_for_bit(spec, shape):
    """The bias is added while the product is copied into the top: the same
    float32 sum as the product copied, then the bias added."""
    layer, bottom, top = _conv(spec, shape)
    layer.reshape(bottom, top)
    assert not layer.per_image and not layer.stacked
    layer.forward(bottom, top)
    W = layer.blobs[0].data.reshape(layer.group, -1, layer.kernel_dim)
    col = layer._im2col(bottom[0].data)
    want = np.empty(top[0].shape, np.float32)
    layer._from_gmp(vision._group_gemm(W, col, blocks=shape[0], any_blas=not layer.caffe_sums),
                    want)
    want += layer.blobs[1].data[None, :, None, None]
    assert np.array_equal(top[0].data.view(np.uint32), want.view(np.uint32))


STACKED = [
    ('num_output: 20 kernel_size: 5', [(64, 1, 28, 28)]),                 # LeNet's conv1
    ('num_output: 16 kernel_size: 2 group: 2', [(9, 4, 30, 30)]),
    ('num_output: 12 kernel_size: 1', [(3, 4, 5, 5)]),                    # 1x1: x is col
    ('num_output: 10 kernel_size: 3 stride: 2 pad: 2 dilation: 2', [(5, 2, 11, 9)]),
    ('num_output: 16 kernel_size: 3 pad: 1', [(4, 3, 10, 10), (4, 3, 10, 10)])]  # 2 bottoms


def _stacked_run(spec, shapes, threads_, set_threads):
    set_threads(threads_, split_small=True)
    rng = np.random.default_rng(3)
    xs = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    layer, bottom, top = make_layer('type: "Convolution" convolution_param { %s'
                                    ' weight_filler { type: "gaussian" std: 0.1 }'
                                    ' bias_filler { type: "gaussian" std: 0.1 } }' % spec,
                                    xs, phase="TRAIN", num_tops=len(xs))
    layer.reshape(bottom, top)
    assert layer.stacked and not layer.per_image and not layer.batch_inner
    for blob in layer.blobs:                     # the same weights in every run
        blob.data[...] = 0.1 * rng.standard_normal(blob.shape)
    layer.forward(bottom, top)
    kept = [layer._cols[i][1].copy() for i in layer._cols]
    for t in top:
        t.diff[...] = rng.standard_normal(t.shape)
    layer.blobs[0].diff[...] = 0.5               # gradients accumulate
    layer.blobs[1].diff[...] = 0.25
    layer.backward(top, [True] * len(bottom), bottom)
    return layer, bottom, top, kept


@pytest.mark.parametrize('spec,shapes', STACKED)
def test_stacked_layers_compute_each_images_products_on_any_thread_count(spec, shapes,
                                                                          set_threads):
    """DEFAULT runs a layer of small per-image products in Caffe's layout
    (LeNet's conv1) stacked: per image W_g @ col_n,g + b in one np.matmul per
    block of images, and backward's per-image dY_n,g col_n,g^T, dY sums and
    col2im(W_g^T dY_n,g).  The top is the per-image products bit for bit, the
    numbers are the same on 1 and 3 threads, and all agree with a float64
    direct convolution and its gradients."""
    runs = [_stacked_run(spec, shapes, n, set_threads) for n in (1, 3)]
    for (l1, b1, t1, k1), (l3, b3, t3, k3) in [runs]:
        for a, b in zip([t.data for t in t1] + [b.diff for b in b1] + [p.diff for p in l1.blobs]
                        + k1,
                        [t.data for t in t3] + [b.diff for b in b3] + [p.diff for p in l3.blobs]
                        + k3):
            assert np.array_equal(a.view(np.uint32), b.view(np.uint32))
    layer, bottom, top, kept = runs[0]
    assert timing.conv_algorithm(layer) == 'stacked'        # as time --layers names it
    G, K, P = layer.group, layer.kernel_dim, layer.conv_out_dim
    W, bias = layer.blobs[0].data.reshape(G, -1, K), layer.blobs[1].data
    cp = layer.layer_param.convolution_param
    stride, pad = (cp.stride[0] if cp.stride else 1), (cp.pad[0] if cp.pad else 0)
    dW = np.full(W.shape, 0.5)
    db = np.full(bias.shape, 0.25)
    for i, (b, t) in enumerate(zip(bottom, top)):
        col = im2col(b.data, layer.kernel, layer.stride, layer.pad,
                     layer.dilation).reshape(b.shape[0], G, K, P)
        if not layer.is_1x1:
            assert np.array_equal(kept[i], col)      # the columns kept for backward
        want = np.stack([np.matmul(W[g], col[:, g]) for g in range(G)], axis=1)
        want += bias.reshape(G, -1, 1)
        assert np.array_equal(t.data.reshape(want.shape).view(np.uint32), want.view(np.uint32))
        dil = layer.dilation[0]
        if dil == 1:
            np.testing.assert_allclose(t.data, _conv_reference(b.data, layer.blobs[0].data, bias,
                                                               stride, pad, G),
                                       rtol=1e-5, atol=1e-5)
        dy = t.diff.astype(np.float64).reshape(b.shape[0], G, -1, P)
        dW += np.einsum('ngmp,ngkp->gmk', dy, col.astype(np.float64))
        db += dy.sum(axis=(0, 3)).reshape(-1)
        dcol = np.einsum('gmk,ngmp->ngkp', W.astype(np.float64), dy)
        from minicaffe.im2col import col2im
        dx = col2im(dcol.reshape((b.shape[0], b.shape[1]) + layer.kernel + layer.conv_out_sp),
                    b.shape[2:], layer.kernel, layer.stride, layer.pad, layer.dilation,
                    dtype=np.float64)
        np.testing.assert_allclose(b.diff, dx, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(layer.blobs[0].diff.reshape(W.shape), dW, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(layer.blobs[1].diff, db, rtol=1e-4, atol=1e-4)


def test_stacked_weight_gradient_in_parts_of_the_images(set_threads, monkeypatch):
    """Where a block's per-image weight-gradient products would be too many
    (STACKED_PART_ELEMS), they are summed in parts of the images: the same
    gradients up to float32 rounding."""
    spec, shapes = STACKED[0]
    whole = _stacked_run(spec, shapes, 2, set_threads)[0]
    monkeypatch.setattr(vision, 'STACKED_PART_ELEMS', 1)
    parts = _stacked_run(spec, shapes, 2, set_threads)[0]
    for a, b in zip(whole.blobs, parts.blobs):
        np.testing.assert_allclose(a.diff, b.diff, rtol=1e-5, atol=1e-5)
    assert not np.array_equal(whole.blobs[0].diff, parts.blobs[0].diff)   # summed otherwise


def test_per_image_forward_is_caffes_gemm_call_bit_for_bit():
    # Caffe: per image n and group g, row-major gemm W_g (M/G x K) @ col_n,g (K x P),
    # then the bias added in place.  Same call, same sums, same bits.
    layer, bottom, top = _conv('num_output: 32 kernel_size: 3 stride: 2 pad: 1 group: 2',
                               (3, 16, 45, 45))
    layer.reshape(bottom, top)
    assert layer.per_image
    layer.forward(bottom, top)
    G, K, P = layer.group, layer.kernel_dim, layer.conv_out_dim
    W = layer.blobs[0].data.reshape(G, -1, K)
    for n in range(3):
        col = im2col(bottom[0].data[n], layer.kernel, layer.stride, layer.pad,
                            layer.dilation).reshape(G, K, P)
        want = np.concatenate([np.dot(W[g], col[g]) for g in range(G)])
        want += layer.blobs[1].data[:, None]
        assert np.array_equal(top[0].data[n].reshape(-1, P), want)


def _per_image_weight_gradient(spec, shape, threads_n=None, dy_seed=5):
    from minicaffe import threads
    layer, bottom, top = _conv(spec, shape)
    layer.reshape(bottom, top)
    assert layer.per_image
    before = threads.get_num_threads()
    try:
        if threads_n:
            threads.set_num_threads(threads_n)
        layer.forward(bottom, top)
        top[0].diff[...] = np.random.default_rng(dy_seed).standard_normal(top[0].shape)
        layer.blobs[0].diff[...] = 0.5          # gradients accumulate
        layer.backward(top, [False], bottom)
    finally:
        threads.set_num_threads(before)
    return layer, bottom, top


# a per-image product too small to cut into blocks of its output (gemm_blocks), as
# the LRCN activity net's conv1 (dW 96 x 147 from 12321 positions per image)
SMALL_DW = 'num_output: 8 kernel_size: 3 stride: 1'


def test_caffe_engine_sums_the_weight_gradient_image_after_image_bit_for_bit():
    layer, bottom, top = _per_image_weight_gradient(SMALL_DW + ' engine: CAFFE', (3, 8, 40, 40))
    assert layer._weight_gradient_parts(3) == 1
    G, K, P = layer.group, layer.kernel_dim, layer.conv_out_dim
    want = np.full(layer.blobs[0].shape, 0.5, np.float32).reshape(G, -1, K)
    for n in range(3):
        col = im2col(bottom[0].data[n], layer.kernel, layer.stride, layer.pad,
                     layer.dilation).reshape(G, K, P)
        dy = top[0].diff[n].reshape(G, -1, P)
        for g in range(G):
            vision.gemm_accumulate(dy[g], col[g], want[g], trans_b=True)
    assert np.array_equal(layer.blobs[0].diff.reshape(want.shape), want)


def test_default_engine_sums_the_weight_gradient_in_parts_on_any_thread_count():
    """DEFAULT cuts the images into parts summed apart (on the worker threads),
    then added in order: the same bits on 1 and 3 threads, within rounding of
    Caffe's image-after-image sum."""
    runs = [_per_image_weight_gradient(SMALL_DW, (3, 8, 40, 40), threads_n=n)
            for n in (1, 3)]
    assert runs[0][0]._weight_gradient_parts(3) == 3
    assert runs[0][0]._weight_gradient_parts(9) == vision.GEMM_MAX_CHUNKS
    assert np.array_equal(runs[0][0].blobs[0].diff, runs[1][0].blobs[0].diff)
    caffe = _per_image_weight_gradient(SMALL_DW + ' engine: CAFFE', (3, 8, 40, 40))[0]
    np.testing.assert_allclose(runs[0][0].blobs[0].diff, caffe.blobs[0].diff, rtol=1e-5,
                               atol=1e-4)
    # a product large enough to cut into blocks keeps Caffe's order
    big, bottom, top = _conv('num_output: 256 kernel_size: 3', (2, 32, 40, 40))
    big.reshape(bottom, top)
    assert big.per_image and big._weight_gradient_parts(2) == 1


def test_per_image_threshold_keeps_caffes_calls_for_lrcn_conv1_conv2():
    # The LRCN conformance nets' conv1 (8 outputs, 3x11x11, 55x55) and conv2
    # (16 outputs in 2 groups, 4x5x5, 27x27) stay on Caffe's per-image GEMMs.
    assert vision._per_image(8, 363, 55 * 55)
    assert vision._per_image(8, 100, 27 * 27)
    assert not vision._per_image(50, 500, 8 * 8)      # LeNet's conv2: batched
    assert not vision._per_image(384, 2304, 13 * 13)  # CaffeNet's conv3: batched


def _lrn_reference_scale(x, size, alpha, k):
    """LRN scale with the original per-channel _saxpy running sum."""
    N, C = x.shape[:2]
    hw = int(np.prod(x.shape[2:]))
    pre = (size - 1) // 2
    a = np.float32(alpha / size)
    sq = np.zeros((N, C + size - 1, hw), np.float32)
    np.multiply(x, x, out=sq[:, pre:pre + C].reshape(x.shape))
    acc = np.full((N, hw), np.float32(k), np.float32)
    scale = np.empty((N, C, hw), np.float32)
    for c in range(size):
        lrn_mod._saxpy(a, sq[:, c], acc)
    scale[:, 0] = acc
    for c in range(1, C):
        lrn_mod._saxpy(a, sq[:, c + size - 1], acc)
        lrn_mod._saxpy(-a, sq[:, c - 1], acc)
        scale[:, c] = acc
    return scale.reshape(x.shape)


@pytest.mark.parametrize('shape,size', [((2, 7, 5, 9), 3), ((3, 12, 6, 7), 5), ((1, 4, 8, 8), 9)])
def test_lrn_across_scale_is_the_saxpy_running_sum_bit_for_bit(shape, size):
    x = (np.random.default_rng(1).standard_normal(shape) * 30).astype(np.float32)
    alpha, beta, k = 0.37, 0.75, 1.5
    layer, bottom, top = make_layer('type: "LRN" lrn_param { local_size: %d alpha: %g beta: %g'
                                    ' k: %g }' % (size, alpha, beta, k), [x], phase='TRAIN')
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    want = _lrn_reference_scale(x, size, alpha, k)
    assert np.array_equal(layer.scale, want)
    powf = np.power(want.astype(np.float64), np.float64(np.float32(-beta))).astype(np.float32)
    assert np.array_equal(top[0].data, x * powf)


def test_lstm_gate_functions_round_as_caffe():
    a = (np.random.default_rng(2).standard_normal((7, 50)) * 8).astype(np.float32)
    a[0, :4] = [np.inf, -np.inf, 100, -100]
    s = rec._sigmoid_(a.copy())
    with np.errstate(over='ignore'):
        e = np.exp(-a.astype(np.float64)).astype(np.float32)       # expf(-x)
        want = (1.0 / (1.0 + e.astype(np.float64))).astype(np.float32)
    assert np.array_equal(s, want)
    t = rec._tanh(a, np.empty_like(a))
    with np.errstate(over='ignore'):
        want = (2.0 / (1.0 + np.exp(-2.0 * a.astype(np.float64))) - 1.0).astype(np.float32)
    assert np.array_equal(t, want)
    # strided views in place (the gate blocks of the LSTM's activations)
    g = a.copy()
    rec._sigmoid_(g[:, :30])
    assert np.array_equal(g[:, :30], rec._sigmoid_(a[:, :30].copy()))
    assert np.array_equal(g[:, 30:], a[:, 30:])


def test_lstm_sequence_start_skip_needs_finite_products():
    cont0 = np.zeros(4, np.float32)
    d = np.ones((4, 8), np.float32)
    assert rec._zero_product(cont0, d, 1.0)
    assert not rec._zero_product(np.array([0, 1, 0, 0], np.float32), d, 1.0)
    assert not rec._zero_product(cont0, d, float('inf'))
    assert not rec._zero_product(cont0, d * np.float32(1e37), 10.0)    # could overflow
    d[1, 2] = np.nan
    assert not rec._zero_product(cont0, d, 1.0)


def test_lstm_backward_with_sequence_starts_equals_the_full_computation(monkeypatch):
    T, N, D, H = 4, 3, 5, 6
    r = np.random.default_rng(4)
    x = r.uniform(-1, 1, (T, N, D)).astype(np.float32)
    cont = np.ones((T, N), np.float32)
    cont[0] = 0
    cont[2] = 0                                          # a start in the middle
    results = []
    for skip in (True, False):
        if not skip:
            monkeypatch.setattr(rec, '_zero_product', lambda *a: False)
        layer, bottom, top = make_layer(
            'type: "LSTM" recurrent_param { num_output: %d weight_filler { type: "uniform"'
            ' min: -0.5 max: 0.5 } bias_filler { type: "uniform" min: -0.2 max: 0.2 } }' % H,
            [x, cont], phase='TRAIN')
        for i, blob in enumerate(layer.blobs):          # same weights both times
            blob.data[...] = np.random.default_rng(20 + i).uniform(-0.5, 0.5, blob.shape)
            blob.diff[...] = 0
        layer.reshape(bottom, top)
        layer.forward(bottom, top)
        top[0].diff[...] = r.uniform(-1, 1, top[0].shape).astype(np.float32) if not results \
            else results[0][0]
        dtop = top[0].diff.copy()
        layer.backward(top, [True, False], bottom)
        results.append((dtop, bottom[0].diff.copy(), [b.diff.copy() for b in layer.blobs]))
    (_, dx1, p1), (_, dx2, p2) = results
    assert np.array_equal(dx1, dx2)
    for a, b in zip(p1, p2):
        assert np.array_equal(a, b)


@pytest.mark.parametrize('shape,kernel,stride,pad', [
    ((3, 4, 8, 8), 2, 2, 0), ((2, 3, 7, 9), 2, 2, 0), ((2, 3, 7, 9), 3, 3, 1), ((2, 2, 8, 8), 2, 3, 0)])
def test_max_pool_scatter_equals_the_bincount_route(shape, kernel, stride, pad, monkeypatch):
    r = np.random.default_rng(6)
    H, W = shape[2:]
    out = pooled_shape((H, W), (kernel, kernel), (stride, stride), (pad, pad))
    g = PoolGeometry((H, W), (kernel, kernel), (stride, stride), (pad, pad), out)
    idx = np.empty(shape[:2] + out, np.int32)
    for i in range(out[0]):                     # a valid winner index per window
        for j in range(out[1]):
            h = min(max(i * stride - pad, 0), H - 1)
            w = min(max(j * stride - pad, 0), W - 1)
            idx[..., i, j] = h * W + w
    idx[0, 0, 0, 0] = -1                         # no winner
    dy = r.standard_normal(idx.shape).astype(np.float32)
    dy[0, 1, 0, :2] = -0.0
    fast = max_pool_backward(dy, idx, g)
    into = max_pool_backward(dy, idx, g, out=np.full(shape, np.nan, np.float32))
    from minicaffe.layers import pooling
    monkeypatch.setattr(pooling, '_overlapping', lambda g: True)    # force bincount
    slow = max_pool_backward(dy, idx, g)
    slow_into = max_pool_backward(dy, idx, g, out=np.full(shape, np.nan, np.float32))
    for got in (into, slow, slow_into):
        assert np.array_equal(fast.view(np.uint32), got.view(np.uint32))


@pytest.mark.parametrize('hw,kernel,stride', [
    ((24, 24), (2, 2), (2, 2)), ((8, 9), (2, 3), (3, 3)), ((6, 7), (3, 1), (3, 2)),
    ((5, 5), (1, 1), (1, 1)), ((9, 9), (3, 3), (4, 4)),
    ((26, 25), (12, 11), (12, 12))])                     # 132 offsets: int32 counts
def test_max_pool_disjoint_windows_equal_the_separable_route(hw, kernel, stride):
    out = pooled_shape(hw, kernel, stride, (0, 0), ceil_mode=False)
    g = PoolGeometry(hw, kernel, stride, (0, 0), out)
    assert g.disjoint
    x = np.random.default_rng(8).integers(-3, 3, (3, 4) + hw).astype(np.float32)   # ties
    x[0, 0, :2, :2] = np.nan
    x[0, 1] = -np.inf
    x[1, 0, ::2] = np.float32(-3.4028235e38)         # -FLT_MAX: no winner where alone
    x[1, 0, 1::2] = np.nan
    x[2, 3, 0, :3] = [-0.0, 0.0, -0.0]
    m, idx = max_pool_forward(x, g)
    g.disjoint = False
    m2, idx2 = max_pool_forward(x, g)
    assert np.array_equal(m.view(np.uint32), m2.view(np.uint32))
    assert np.array_equal(idx, idx2) and (idx == -1).any()


@pytest.mark.parametrize('planes,per_plane,block', [
    (1280, 576, None), (3200, 64, None), (7, 10000, None), (1, 1 << 20, None), (4, 4, None),
    (960, 3025, None), (1280, 576, 1 << 21), (9600, 3025, 1 << 21), (1280, 576, 1000)])
@pytest.mark.parametrize('threads_', [1, 2, 3])
def test_pooling_plane_blocks_are_balanced_over_the_threads(planes, per_plane, block, threads_,
                                                            set_threads):
    from minicaffe.layers import pooling
    set_threads(threads_)
    block = block or pooling.CHUNK_ELEMS
    bounds = pooling.plane_blocks(planes, per_plane, block)
    assert bounds[0] == 0 and bounds[-1] == planes
    assert all(lo < hi for lo, hi in zip(bounds, bounds[1:]))
    n = len(bounds) - 1
    total = planes * per_plane
    if total < pooling.SPLIT_MIN_ELEMS or planes == 1 or total <= block:
        assert n == 1
    else:
        assert n % threads_ == 0 or n == planes
        assert n * block >= total or n == planes
        assert max(hi - lo for lo, hi in zip(bounds, bounds[1:])) <= -(-planes // n)


def test_disjoint_max_pooling_takes_large_blocks(set_threads):
    """LeNet's pool1 (disjoint 2x2 MAX windows) is pooled in 2 blocks on 2 threads:
    its short passes gain from a second thread only in blocks this large; AVE
    and overlapping windows keep CHUNK_ELEMS."""
    set_threads(2)
    from minicaffe.layers import pooling
    shape = (64, 20, 24, 24)
    for param, block in (('pool: MAX kernel_size: 2 stride: 2', pooling.DISJOINT_BLOCK_ELEMS),
                         ('pool: AVE kernel_size: 2 stride: 2', pooling.CHUNK_ELEMS),
                         ('pool: MAX kernel_size: 3 stride: 2', pooling.CHUNK_ELEMS)):
        layer, bottom, top = make_layer('type: "Pooling" pooling_param { %s }' % param,
                                        [np.zeros(shape, np.float32)])
        layer.reshape(bottom, top)
        assert layer._block_elems() == block
    assert pooling.plane_blocks(64 * 20, 24 * 24, pooling.DISJOINT_BLOCK_ELEMS) == [0, 640, 1280]


@pytest.mark.parametrize('param,shape', [
    ('pool: MAX kernel_size: 2 stride: 2', (64, 20, 24, 24)),           # LeNet's pool1
    ('pool: MAX kernel_size: 3 stride: 2', (4, 24, 27, 27)),            # overlapping
    ('pool: AVE kernel_size: 3 stride: 2 pad: 1', (4, 24, 27, 27))])
def test_pooling_gives_the_same_bits_on_1_and_3_threads(param, shape, set_threads, monkeypatch):
    from minicaffe.layers import pooling
    monkeypatch.setattr(pooling, 'DISJOINT_BLOCK_ELEMS', 1 << 16)      # split pool1 too
    x = np.random.default_rng(3).integers(-4, 4, shape).astype(np.float32)      # ties
    x[0, 0, :3, :3] = np.nan
    dy = np.random.default_rng(4).standard_normal(x.shape).astype(np.float32)
    results = []
    for t in (1, 3):
        set_threads(t)
        layer, bottom, top = make_layer('type: "Pooling" pooling_param { %s }' % param, [x],
                                        phase='TRAIN')
        layer.reshape(bottom, top)
        layer.forward(bottom, top)
        top[0].diff[...] = dy[tuple(slice(0, n) for n in top[0].shape)]
        layer.backward(top, [True], bottom)
        results.append((top[0].data.copy(), bottom[0].diff.copy()))
    for a, b in zip(results[0], results[1]):
        assert np.array_equal(a.view(np.uint32), b.view(np.uint32))


@pytest.mark.parametrize('transpose', [False, True])
@pytest.mark.parametrize('rows', [3, 200])
def test_inner_product_forward_is_caffes_product_bit_for_bit(rows, transpose):
    # Few rows take the transposed product W x^T; the sums are Caffe's x W^T.
    x = np.random.default_rng(4).standard_normal((rows, 300)).astype(np.float32)
    layer, bottom, top = make_layer('type: "InnerProduct" inner_product_param { num_output: 70'
                                    ' transpose: %s weight_filler { type: "gaussian" }'
                                    ' bias_filler { type: "gaussian" } }'
                                    % ('true' if transpose else 'false'), [x])
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    W = layer.blobs[0].data
    want = np.matmul(x, W if transpose else W.T) + layer.blobs[1].data
    assert np.array_equal(top[0].data, want)


@pytest.mark.parametrize('phase', ['TRAIN', 'TEST'])
def test_per_image_convolution_with_two_bottoms_is_two_convolutions(phase, monkeypatch):
    # Each bottom keeps its own columns (TRAIN) or rebuilds them (TEST); one image
    # per chunk so that the kept columns are read back chunk by chunk.
    monkeypatch.setattr(vision, 'COL_CACHE_CHUNK_BYTES', 1)
    rng = np.random.default_rng(5)
    xs = [rng.standard_normal((2, 8, 30, 30)).astype(np.float32) for _ in range(2)]
    spec = ('type: "Convolution" convolution_param { num_output: 16 kernel_size: 3 pad: 1'
            ' weight_filler { type: "gaussian" std: 0.1 } bias_filler { type: "gaussian" } }')
    both, bottom, top = make_layer(spec, xs, phase=phase, num_tops=2)
    assert both.per_image and both.chunk == 1
    dys = [rng.standard_normal(t.shape).astype(np.float32) for t in top]
    both.forward(bottom, top)
    for t, dy in zip(top, dys):
        t.diff[...] = dy
    for blob in both.blobs:
        blob.diff[...] = 0
    both.backward(top, [True, True], bottom)
    dW, db = np.zeros_like(both.blobs[0].data), np.zeros_like(both.blobs[1].data)
    for x, dy, t, b in zip(xs, dys, top, bottom):
        one, ob, ot = make_layer(spec, [x], phase=phase)
        one.blobs[0].data[...] = both.blobs[0].data
        one.blobs[1].data[...] = both.blobs[1].data
        one.forward(ob, ot)
        np.testing.assert_array_equal(t.data, ot[0].data)
        ot[0].diff[...] = dy
        for blob in one.blobs:
            blob.diff[...] = 0
        one.backward(ot, [True], ob)
        np.testing.assert_array_equal(b.diff, ob[0].diff)
        dW += one.blobs[0].diff
        db += one.blobs[1].diff
    np.testing.assert_allclose(both.blobs[0].diff, dW, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(both.blobs[1].diff, db, rtol=1e-5, atol=1e-5)


def test_nested_parallel_for_runs_every_part_once(set_threads):
    # A parallel_for inside a worker's part (LRN's powf inside its per-image
    # blocks) runs serially there: all parts run, none twice, nothing waits forever.
    from minicaffe import im2col
    set_threads(3, split_small=True)
    hits = np.zeros((8, 16), np.int32)

    def outer(lo, hi):
        for i in range(lo, hi):
            def inner(a, b, i=i):
                hits[i, a:b] += 1
            im2col.parallel_for(16, inner, 16)
    im2col.parallel_for(8, outer, 8 * 16)
    assert (hits == 1).all()
