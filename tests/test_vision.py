"""Vision layers beyond the conformance cases: Caffe's loop semantics checked
against direct (slow, loop-for-loop) re-implementations of its CPU code, edge
cases (ties, NaN, ceil overhang, empty windows), shapes and parameter errors."""
import itertools
import math

import numpy as np
import pytest

import minicaffe as caffe
from minicaffe import protoio
from minicaffe.errors import MinicaffeError
from minicaffe.im2col import col2im, conv_out_size, im2col
from minicaffe.layers.pooling import pooled_shape
from minicaffe.protoio import pb

FLT_MAX = float(np.finfo(np.float32).max)


def make_net(layers, inputs, phase=caffe.TRAIN):
    tops = ''.join('top: "%s" ' % n for n in inputs)
    shapes = ''.join('shape { %s } ' % ' '.join('dim: %d' % d for d in s) for s in inputs.values())
    text = ('force_backward: true layer { name: "input" type: "Input" %s input_param { %s } }\n%s'
            % (tops, shapes, layers))
    return caffe.Net(net_param=protoio.parse_text(text, pb.NetParameter()), phase=phase)


def layer(type_, bottoms, tops, param=''):
    return ('layer { name: "l" type: "%s" %s %s %s }'
            % (type_, ''.join('bottom: "%s" ' % b for b in bottoms),
               ''.join('top: "%s" ' % t for t in tops), param))


def rand(*shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def run(net, inputs, top_diffs=None):
    for k, v in inputs.items():
        net.blobs[k].data[...] = v
    net.forward()
    if top_diffs is not None:
        for k, v in top_diffs.items():
            net.blobs[k].diff[...] = v
        net.backward()
    return net


def bad(type_, param, inputs, msg, bottoms=('x',), tops=('y',)):
    with pytest.raises(MinicaffeError, match=msg) as e:
        make_net(layer(type_, bottoms, tops, param), inputs)
    assert 'layer "l"' in str(e.value)


# ============================================================ reference loops
def ref_pool(x, method, k, s, p, ceil_mode=True):
    """Caffe's PoolingLayer Reshape + Forward_cpu + Backward_cpu, element by element."""
    N, C, H, W = x.shape
    (kh, kw), (sh, sw), (ph, pw) = k, s, p
    rnd = math.ceil if ceil_mode else math.floor
    PH = int(rnd(float(np.float32(H + 2 * ph - kh) / np.float32(sh)))) + 1
    PW = int(rnd(float(np.float32(W + 2 * pw - kw) / np.float32(sw)))) + 1
    if ph or pw:
        if (PH - 1) * sh >= H + ph:
            PH -= 1
        if (PW - 1) * sw >= W + pw:
            PW -= 1
    y = np.zeros((N, C, PH, PW), np.float32)
    mask = np.full((N, C, PH, PW), -1, np.int64)
    sizes = np.zeros((PH, PW), np.float32)
    for n, c, i, j in itertools.product(range(N), range(C), range(PH), range(PW)):
        hs, ws = i * sh - ph, j * sw - pw
        if method == 'MAX':
            he, we = min(hs + kh, H), min(ws + kw, W)
            hs, ws = max(hs, 0), max(ws, 0)
            best = np.float32(-FLT_MAX)
            for h in range(hs, he):
                for w in range(ws, we):
                    if x[n, c, h, w] > best:
                        best = x[n, c, h, w]
                        mask[n, c, i, j] = h * W + w
            y[n, c, i, j] = best
        else:
            he, we = min(hs + kh, H + ph), min(ws + kw, W + pw)
            size = (he - hs) * (we - ws)
            sizes[i, j] = size
            hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, H), min(we, W)
            acc = np.float32(0)
            for h in range(hs, he):
                for w in range(ws, we):
                    acc = np.float32(acc + x[n, c, h, w])
            y[n, c, i, j] = acc / np.float32(size)
    return y, mask, sizes


def ref_pool_backward(dy, x_shape, method, mask, k, s, p, sizes):
    N, C, H, W = x_shape
    dx = np.zeros(x_shape, np.float64)
    PH, PW = dy.shape[2:]
    (kh, kw), (sh, sw), (ph, pw) = k, s, p
    for n, c, i, j in itertools.product(range(N), range(C), range(PH), range(PW)):
        if method == 'MAX':
            if mask[n, c, i, j] >= 0:
                h, w = divmod(mask[n, c, i, j], W)
                dx[n, c, h, w] += dy[n, c, i, j]
            elif n * C + c > 0:
                # Caffe's CPU loop adds at index -1 of the channel plane: the
                # previous plane's last element (before the blob for plane 0).
                dx.reshape(-1)[(n * C + c) * H * W - 1] += dy[n, c, i, j]
        else:
            hs, ws = i * sh - ph, j * sw - pw
            he, we = min(hs + kh, H + ph), min(ws + kw, W + pw)
            hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, H), min(we, W)
            dx[n, c, hs:he, ws:we] += dy[n, c, i, j] / sizes[i, j]
    return dx


def ref_conv(x, w, b, stride, pad, dilation, group):
    """Direct N-D grouped convolution (zero padding), float64."""
    N, C = x.shape[:2]
    M = w.shape[0]
    ks = w.shape[2:]
    out = conv_out_size(x.shape[2:], ks, stride, pad, dilation)
    y = np.zeros((N, M) + tuple(out))
    cg, mg = C // group, M // group
    for m in range(M):
        g = m // mg
        for pos in itertools.product(*[range(o) for o in out]):
            acc = 0.0
            for off in itertools.product(*[range(k) for k in ks]):
                idx = [p_ * s - pd + o * d for p_, s, pd, o, d in zip(pos, stride, pad, off, dilation)]
                if all(0 <= i < n for i, n in zip(idx, x.shape[2:])):
                    acc = acc + np.dot(x[(slice(None), slice(g * cg, (g + 1) * cg)) + tuple(idx)]
                                       .astype(np.float64), w[(m, slice(None)) + off])
            y[(slice(None), m) + pos] = acc + (b[m] if b is not None else 0)
    return y


# ================================================================== im2col
@pytest.mark.parametrize('shape,k,s,p,d', [
    ((2, 5, 5), (3, 3), (2, 2), (1, 1), (1, 1)),
    ((1, 6, 7), (2, 3), (1, 2), (0, 2), (2, 1)),
    ((2, 4, 3, 5), (2, 2, 3), (1, 2, 1), (1, 0, 1), (1, 1, 2)),
    ((1, 4), (3,), (2,), (3,), (1,)),
])
def test_im2col_matches_caffe_loops_and_col2im_is_adjoint(shape, k, s, p, d):
    x = rand(*shape)
    nsp = len(k)
    sp = shape[1:]
    out = conv_out_size(sp, k, s, p, d)
    col = im2col(x, k, s, p, d)
    assert col.shape == (shape[0],) + k + out
    for c in range(shape[0]):
        for off in itertools.product(*[range(v) for v in k]):
            for pos in itertools.product(*[range(o) for o in out]):
                idx = [q * st - pd + o * dd for q, st, pd, o, dd in zip(pos, s, p, off, d)]
                inside = all(0 <= i < n for i, n in zip(idx, sp))
                want = x[(c,) + tuple(idx)] if inside else 0
                assert col[(c,) + off + pos] == want
    # col2im is the adjoint: <im2col(x), c> == <x, col2im(c)>
    cr = rand(*col.shape, seed=3)
    lhs = float(np.sum(col.astype(np.float64) * cr))
    rhs = float(np.sum(x.astype(np.float64) * col2im(cr, sp, k, s, p, d)))
    assert abs(lhs - rhs) < 1e-4 * max(1, abs(lhs))
    assert nsp == len(out)


def test_im2col_rejects_kernel_larger_than_padded_input():
    with pytest.raises(ValueError, match='larger than the padded input'):
        im2col(rand(1, 2, 2), (5, 5), (1, 1), (0, 0), (1, 1))


# ================================================================ Convolution
@pytest.mark.parametrize('param,shape', [
    ('kernel_size: 3 stride: 2 pad: 1 group: 2 num_output: 4', (2, 4, 5, 6)),
    ('kernel_h: 2 kernel_w: 3 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 2 num_output: 3', (1, 2, 5, 5)),
    ('kernel_size: 3 dilation: 2 num_output: 2', (2, 3, 7, 6)),
    ('kernel_size: 2 kernel_size: 1 kernel_size: 3 stride: 2 stride: 1 stride: 1 pad: 1'
     ' dilation: 1 dilation: 1 dilation: 2 num_output: 2', (1, 2, 4, 3, 6)),
    ('kernel_size: 1 num_output: 5 group: 1', (3, 4, 2, 3)),
    ('kernel_size: 3 num_output: 2', (2, 3, 9)),  # 1-D
])
def test_convolution_matches_direct_convolution(param, shape):
    net = make_net(layer('Convolution', ['x'], ['y'], 'convolution_param { %s weight_filler {'
                         ' type: "gaussian" } bias_filler { type: "gaussian" } }' % param),
                   {'x': shape})
    x = rand(*shape)
    run(net, {'x': x})
    lyr = net.layers[1]
    w, b = net.params['l'][0].data, net.params['l'][1].data
    want = ref_conv(x, w, b, lyr.stride, lyr.pad, lyr.dilation, lyr.group)
    np.testing.assert_allclose(net.blobs['y'].data, want, rtol=1e-4, atol=1e-4)


def test_convolution_weight_and_output_shapes():
    net = make_net(layer('Convolution', ['x'], ['y'], 'convolution_param { num_output: 6'
                         ' kernel_h: 3 kernel_w: 2 stride: 2 pad: 1 group: 3 }'), {'x': (2, 9, 7, 8)})
    assert net.params['l'][0].data.shape == (6, 3, 3, 2)
    assert net.params['l'][1].data.shape == (6,)
    assert net.blobs['y'].data.shape == (2, 6, 4, 5)


def test_convolution_two_bottoms_share_weights_and_accumulate():
    proto = layer('Convolution', ['a', 'b'], ['ya', 'yb'], 'convolution_param { num_output: 2'
                  ' kernel_size: 2 weight_filler { type: "gaussian" } }')
    net = make_net(proto, {'a': (2, 3, 4, 4), 'b': (2, 3, 4, 4)})
    a, b = rand(2, 3, 4, 4, seed=1), rand(2, 3, 4, 4, seed=2)
    dya, dyb = rand(2, 2, 3, 3, seed=3), rand(2, 2, 3, 3, seed=4)
    run(net, {'a': a, 'b': b}, {'ya': dya, 'yb': dyb})
    wd = net.params['l'][0].diff.copy()
    bd = net.params['l'][1].diff.copy()
    # the same layer with one bottom at a time
    single = make_net(layer('Convolution', ['a'], ['ya'], 'convolution_param { num_output: 2'
                            ' kernel_size: 2 }'), {'a': (2, 3, 4, 4)})
    single.params['l'][0].data[...] = net.params['l'][0].data
    parts = []
    for x, dy, name in ((a, dya, 'ya'), (b, dyb, 'yb')):
        for p in single.params['l']:
            p.diff[...] = 0
        run(single, {'a': x}, {'ya': dy})
        np.testing.assert_allclose(net.blobs[name].data, single.blobs['ya'].data, rtol=1e-6)
        parts.append((single.params['l'][0].diff.copy(), single.params['l'][1].diff.copy()))
    np.testing.assert_allclose(wd, parts[0][0] + parts[1][0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bd, parts[0][1] + parts[1][1], rtol=1e-5, atol=1e-6)


def test_convolution_batch_size_may_change_and_cache_follows_data():
    net = make_net(layer('Convolution', ['x'], ['y'], 'convolution_param { num_output: 2'
                         ' kernel_size: 3 pad: 1 weight_filler { type: "gaussian" } }'),
                   {'x': (1, 2, 4, 4)})
    w = net.params['l'][0].data.copy()
    for n in (3, 1, 2):
        x = rand(n, 2, 4, 4, seed=n)
        net.blobs['x'].reshape(x.shape)
        net.params['l'][0].diff[...] = 0
        run(net, {'x': x}, {'y': np.ones((n, 2, 4, 4), np.float32)})
        np.testing.assert_allclose(net.blobs['y'].data, ref_conv(x, w, np.zeros(2), (1, 1),
                                                                 (1, 1), (1, 1), 1),
                                   rtol=1e-4, atol=1e-5)
        # dW = sum over outputs of the input window (dy = 1)
        xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
        want = np.stack([xp[:, :, i:i + 4, j:j + 4].sum(axis=(0, 2, 3))
                         for i in range(3) for j in range(3)], -1).reshape(2, 3, 3)
        np.testing.assert_allclose(net.params['l'][0].diff[0], want, rtol=1e-4, atol=1e-4)


def test_convolution_column_chunks_give_the_same_numbers(monkeypatch):
    from minicaffe.layers import vision
    proto = layer('Convolution', ['x'], ['y'], 'convolution_param { num_output: 3 kernel_size: 3'
                  ' stride: 2 pad: 1 group: 1 weight_filler { type: "gaussian" } }')
    x, dy = rand(5, 2, 6, 6), rand(5, 3, 3, 3, seed=1)
    caffe.set_random_seed(5)
    whole = run(make_net(proto, {'x': x.shape}), {'x': x}, {'y': dy})
    monkeypatch.setattr(vision, 'COL_CHUNK_BYTES', 2 * 18 * 9 * 4)  # two images per chunk
    caffe.set_random_seed(5)
    chunked = run(make_net(proto, {'x': x.shape}), {'x': x}, {'y': dy})
    assert chunked.layers[1].chunk == 2
    for name in ('y',):
        np.testing.assert_allclose(chunked.blobs[name].data, whole.blobs[name].data, rtol=1e-6)
    np.testing.assert_allclose(chunked.blobs['x'].diff, whole.blobs['x'].diff, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(chunked.params['l'][0].diff, whole.params['l'][0].diff, rtol=1e-5,
                               atol=1e-6)


def test_convolution_test_phase_recomputes_columns():
    proto = layer('Convolution', ['x'], ['y'], 'convolution_param { num_output: 2 kernel_size: 2'
                  ' weight_filler { type: "gaussian" } }')
    x, dy = rand(2, 2, 3, 3), rand(2, 2, 2, 2, seed=1)
    caffe.set_random_seed(1)
    tr = run(make_net(proto, {'x': x.shape}, phase=caffe.TRAIN), {'x': x}, {'y': dy})
    caffe.set_random_seed(1)
    te = run(make_net(proto, {'x': x.shape}, phase=caffe.TEST), {'x': x}, {'y': dy})
    np.testing.assert_array_equal(tr.params['l'][0].diff, te.params['l'][0].diff)


# ============================================================== Deconvolution
@pytest.mark.parametrize('param,shape,out', [
    ('kernel_size: 4 stride: 2 pad: 1 num_output: 3', (2, 4, 5, 5), (2, 3, 10, 10)),
    ('kernel_size: 3 stride: 2 group: 2 num_output: 4', (1, 4, 4, 3), (1, 4, 9, 7)),
    ('kernel_size: 3 dilation: 2 num_output: 1', (1, 2, 3, 3), (1, 1, 7, 7)),
])
def test_deconvolution_is_the_transposed_convolution(param, shape, out):
    """<deconv(x), y> == <x, conv(y)> with the same weights (and no bias)."""
    dnet = make_net(layer('Deconvolution', ['x'], ['y'], 'convolution_param { %s bias_term: false'
                          ' weight_filler { type: "gaussian" } }' % param), {'x': shape})
    x = rand(*shape)
    run(dnet, {'x': x})
    y = dnet.blobs['y'].data.copy()
    assert y.shape == out
    w = dnet.params['l'][0].data
    assert w.shape[:2] == (shape[1], out[1] // dnet.layers[1].group)
    lyr = dnet.layers[1]
    # conv(y) with W (C_in, C_out/g, k): a conv from out[1] channels to shape[1] channels
    r = rand(*out, seed=7)
    conv_r = ref_conv(r, w, None, lyr.stride, lyr.pad, lyr.dilation, lyr.group)
    assert conv_r.shape == shape
    lhs = float(np.sum(y.astype(np.float64) * r))
    rhs = float(np.sum(x.astype(np.float64) * conv_r))
    assert abs(lhs - rhs) < 1e-4 * max(1.0, abs(lhs))


# ====================================================================== Crop
def test_crop_single_offset_and_default_axis():
    net = make_net(layer('Crop', ['x', 'r'], ['y'], 'crop_param { offset: 1 }'),
                   {'x': (2, 3, 5, 6), 'r': (1, 1, 3, 2)})
    x = rand(2, 3, 5, 6)
    run(net, {'x': x, 'r': np.zeros((1, 1, 3, 2), np.float32)}, {'y': np.ones((2, 3, 3, 2))})
    np.testing.assert_array_equal(net.blobs['y'].data, x[:, :, 1:4, 1:3])
    d = net.blobs['x'].diff
    assert d.sum() == 2 * 3 * 3 * 2 and d[:, :, 1:4, 1:3].min() == 1
    assert not net.blobs['r'].diff.any()


def test_crop_negative_axis():
    net = make_net(layer('Crop', ['x', 'r'], ['y'], 'crop_param { axis: -1 offset: 2 }'),
                   {'x': (2, 3, 6), 'r': (1, 1, 3)})
    x = rand(2, 3, 6)
    run(net, {'x': x})
    np.testing.assert_array_equal(net.blobs['y'].data, x[:, :, 2:5])


@pytest.mark.parametrize('param,shapes,msg', [
    ('crop_param { offset: 3 }', {'x': (1, 1, 5, 5), 'r': (1, 1, 3, 3)}, 'out-of-bounds'),
    ('crop_param { axis: 1 offset: 1 offset: 1 }', {'x': (1, 2, 5, 5), 'r': (1, 1, 3, 3)},
     'number of offset values'),
    ('crop_param { axis: 4 }', {'x': (1, 2, 5, 5), 'r': (1, 1, 3, 3)}, 'out of range'),
    ('', {'x': (1, 2, 5, 5), 'r': (1, 3, 3)}, 'same number of axes'),
])
def test_crop_errors(param, shapes, msg):
    bad('Crop', param, shapes, msg, bottoms=('x', 'r'))


# =================================================================== Pooling
POOL_CASES = [
    ('MAX', (3, 3), (2, 2), (0, 0), True, (2, 2, 8, 8)),
    ('MAX', (3, 3), (2, 2), (1, 1), True, (1, 2, 7, 6)),
    ('MAX', (2, 3), (2, 1), (1, 2), True, (1, 2, 5, 7)),
    ('MAX', (3, 2), (3, 2), (0, 0), False, (1, 2, 8, 7)),
    ('MAX', (2, 2), (3, 3), (0, 0), True, (1, 1, 7, 7)),     # stride > kernel
    ('MAX', (1, 1), (3, 3), (0, 0), True, (1, 2, 5, 5)),     # last windows empty
    ('AVE', (1, 2), (3, 3), (0, 0), True, (1, 2, 5, 5)),     # negative pool_size: -0
    ('AVE', (3, 3), (2, 2), (0, 0), True, (2, 2, 8, 8)),     # ceil overhang
    ('AVE', (3, 3), (2, 2), (1, 1), True, (1, 2, 7, 7)),
    ('AVE', (4, 3), (3, 2), (2, 1), True, (1, 2, 9, 6)),
    ('AVE', (3, 3), (2, 2), (1, 1), False, (1, 2, 8, 8)),
    # one pad zero: Caffe drops a last window starting in the padding on BOTH axes
    ('MAX', (1, 2), (3, 3), (0, 1), True, (1, 2, 5, 5)),     # H drops one with pad_h 0
    ('AVE', (1, 2), (3, 3), (0, 1), True, (1, 2, 5, 5)),
    ('MAX', (2, 1), (3, 3), (1, 0), True, (1, 2, 5, 5)),
    ('AVE', (2, 1), (3, 3), (1, 0), True, (1, 2, 5, 5)),
    ('MAX', (3, 3), (2, 2), (0, 1), True, (1, 2, 6, 6)),
    ('AVE', (3, 2), (2, 2), (0, 1), True, (1, 2, 7, 6)),
    ('AVE', (3, 3), (2, 2), (1, 0), False, (1, 2, 7, 8)),
    # disjoint windows (no overlap, pad or overhang): max pooling's view-only path
    ('MAX', (2, 2), (2, 2), (0, 0), True, (2, 3, 8, 8)),
    ('MAX', (2, 3), (3, 3), (0, 0), True, (1, 2, 8, 9)),
    ('MAX', (1, 1), (1, 1), (0, 0), True, (1, 2, 3, 3)),
]


@pytest.mark.parametrize('method,k,s,p,ceil_mode,shape', POOL_CASES)
def test_pooling_matches_caffe_loops(method, k, s, p, ceil_mode, shape):
    tops = ['y', 'mask'] if method == 'MAX' else ['y']
    param = ('pooling_param { pool: %s kernel_h: %d kernel_w: %d stride_h: %d stride_w: %d'
             ' pad_h: %d pad_w: %d round_mode: %s }'
             % (method, k[0], k[1], s[0], s[1], p[0], p[1], 'CEIL' if ceil_mode else 'FLOOR'))
    net = make_net(layer('Pooling', ['x'], tops, param), {'x': shape})
    # ties on purpose: values from a small set (the first maximum must win)
    x = np.random.default_rng(1).integers(-3, 3, size=shape).astype(np.float32)
    y, mask, sizes = ref_pool(x, method, k, s, p, ceil_mode)
    dy = rand(*y.shape, seed=2)
    run(net, {'x': x}, {'y': dy})
    np.testing.assert_allclose(net.blobs['y'].data, y, rtol=1e-6, atol=1e-7)
    if method == 'MAX':
        np.testing.assert_array_equal(net.blobs['mask'].data, mask)
    want_dx = ref_pool_backward(dy, shape, method, mask, k, s, p, sizes)
    np.testing.assert_allclose(net.blobs['x'].diff, want_dx, rtol=1e-5, atol=1e-6)


def test_pooling_max_ties_route_to_the_first_element():
    net = make_net(layer('Pooling', ['x'], ['y', 'mask'], 'pooling_param { pool: MAX'
                         ' kernel_size: 2 stride: 2 }'), {'x': (1, 1, 2, 4)})
    x = np.array([[[[0, 0, 1, 5], [0, 0, 5, 5]]]], np.float32)
    run(net, {'x': x}, {'y': np.array([[[[1, 2]]]], np.float32)})
    np.testing.assert_array_equal(net.blobs['mask'].data.ravel(), [0, 3])
    np.testing.assert_array_equal(net.blobs['x'].diff, [[[[1, 0, 0, 2], [0, 0, 0, 0]]]])


def test_pooling_max_ignores_nan_and_minus_inf():
    net = make_net(layer('Pooling', ['x'], ['y', 'mask'], 'pooling_param { pool: MAX'
                         ' kernel_size: 2 stride: 2 }'), {'x': (1, 1, 2, 6)})
    x = np.array([[[[np.nan, 1, -np.inf, -np.inf, np.nan, np.nan],
                    [0, np.nan, -np.inf, -np.inf, np.nan, np.nan]]]], np.float32)
    run(net, {'x': x}, {'y': np.ones((1, 1, 1, 3), np.float32)})
    np.testing.assert_array_equal(net.blobs['y'].data.ravel(), [1, -FLT_MAX, -FLT_MAX])
    np.testing.assert_array_equal(net.blobs['mask'].data.ravel(), [1, -1, -1])
    assert net.blobs['x'].diff.sum() == 1 and net.blobs['x'].diff[0, 0, 0, 1] == 1


def test_pooling_max_window_without_winner_sends_its_gradient_where_caffe_cpu_does():
    # stride 2 > kernel 1 on an even size: the last window starts past the input
    # (Caffe keeps it without padding), gets -FLT_MAX and mask -1, and Caffe's CPU
    # backward adds its gradient to the last element of the previous channel plane.
    net = make_net(layer('Pooling', ['x'], ['y', 'mask'], 'pooling_param { pool: MAX'
                         ' kernel_size: 1 stride: 2 }'), {'x': (1, 2, 1, 2)})
    x = np.array([[[[5, 6]], [[7, 8]]]], np.float32)
    dy = np.array([[[[1, 10]], [[100, 1000]]]], np.float32).reshape(1, 2, 1, 2)
    run(net, {'x': x}, {'y': dy})
    np.testing.assert_array_equal(net.blobs['y'].data.ravel(), [5, -FLT_MAX, 7, -FLT_MAX])
    np.testing.assert_array_equal(net.blobs['mask'].data.ravel(), [0, -1, 0, -1])
    # plane 0: 1 at (0, 0), its empty window's 10 is lost (Caffe writes before the
    # blob); plane 1: 100 at (1, 0), its empty window's 1000 lands on plane 0's last.
    np.testing.assert_array_equal(net.blobs['x'].diff.ravel(), [1, 1000, 100, 0])


def test_pooling_global_max_and_ave():
    x = rand(2, 3, 4, 5)
    for method in ('MAX', 'AVE'):
        tops = ['y', 'mask'] if method == 'MAX' else ['y']
        net = make_net(layer('Pooling', ['x'], tops, 'pooling_param { pool: %s global_pooling:'
                             ' true }' % method), {'x': x.shape})
        run(net, {'x': x}, {'y': np.ones((2, 3, 1, 1), np.float32)})
        red = x.max(axis=(2, 3)) if method == 'MAX' else x.mean(axis=(2, 3))
        np.testing.assert_allclose(net.blobs['y'].data[:, :, 0, 0], red, rtol=1e-6)
        if method == 'MAX':
            np.testing.assert_array_equal(net.blobs['mask'].data[:, :, 0, 0],
                                          x.reshape(2, 3, -1).argmax(-1))
            assert net.blobs['x'].diff.sum() == 6
        else:
            np.testing.assert_allclose(net.blobs['x'].diff, np.full(x.shape, 1 / 20.), rtol=1e-6)


def test_pooling_global_follows_input_size():
    net = make_net(layer('Pooling', ['x'], ['y'], 'pooling_param { pool: AVE global_pooling:'
                         ' true }'), {'x': (1, 2, 3, 3)})
    net.blobs['x'].reshape(1, 2, 5, 4)
    x = rand(1, 2, 5, 4)
    run(net, {'x': x})
    np.testing.assert_allclose(net.blobs['y'].data[:, :, 0, 0], x.mean(axis=(2, 3)), rtol=1e-6)


@pytest.mark.parametrize('param,shape,out', [
    ('kernel_size: 3 stride: 2', (1, 1, 8, 8), (1, 1, 4, 4)),            # ceil
    ('kernel_size: 3 stride: 2 round_mode: FLOOR', (1, 1, 8, 8), (1, 1, 3, 3)),
    ('kernel_size: 2 stride: 2 pad: 1', (1, 1, 4, 4), (1, 1, 3, 3)),     # last window clipped
    ('kernel_h: 3 kernel_w: 1 stride_h: 1 stride_w: 2', (1, 1, 5, 5), (1, 1, 3, 3)),
])
def test_pooling_output_shapes(param, shape, out):
    net = make_net(layer('Pooling', ['x'], ['y'], 'pooling_param { %s }' % param), {'x': shape})
    assert net.blobs['y'].data.shape == out


def caffe_pooled_shape(H, W, k, s, p, ceil_mode):
    """PoolingLayer::Reshape's output size, written out independently of pooled_shape."""
    (kh, kw), (sh, sw), (ph, pw) = k, s, p
    rnd = math.ceil if ceil_mode else math.floor
    PH = int(rnd(float(np.float32(H + 2 * ph - kh) / np.float32(sh)))) + 1
    PW = int(rnd(float(np.float32(W + 2 * pw - kw) / np.float32(sw)))) + 1
    if ph or pw:
        if (PH - 1) * sh >= H + ph:
            PH -= 1
        if (PW - 1) * sw >= W + pw:
            PW -= 1
    return PH, PW


def test_pooled_shape_matches_caffe_on_a_range_of_sizes():
    # every size 1..11, kernels 1..4, strides 1..4, each pad 0..kernel-1 on each axis
    # independently (asymmetric pads included), both round modes
    checked = 0
    for H, kh, kw, sh, sw in itertools.product(range(1, 12), range(1, 5), range(1, 5),
                                               range(1, 5), range(1, 5)):
        W = 12 - H
        for ph, pw, ceil_mode in itertools.product(range(kh), range(kw), (True, False)):
            if H + 2 * ph < kh or W + 2 * pw < kw:
                continue
            want = caffe_pooled_shape(H, W, (kh, kw), (sh, sw), (ph, pw), ceil_mode)
            got = pooled_shape((H, W), (kh, kw), (sh, sw), (ph, pw), ceil_mode)
            assert got == want, (H, W, kh, kw, sh, sw, ph, pw, ceil_mode)
            checked += 1
    assert checked > 10000


@pytest.mark.parametrize('pads', [(0, 1), (1, 0), (1, 2), (2, 1)])
def test_pooling_asymmetric_pads_build_as_in_caffe(pads):
    # was refused ("the last pooling window starts outside the padded input") when one
    # pad was 0 and that axis kept a window Caffe drops
    for H in range(3, 10):
        param = ('pooling_param { pool: MAX kernel_size: 3 stride: 2 pad_h: %d pad_w: %d }'
                 % pads)
        net = make_net(layer('Pooling', ['x'], ['y'], param), {'x': (1, 1, H, H + 1)})
        assert net.blobs['y'].data.shape[2:] == caffe_pooled_shape(
            H, H + 1, (3, 3), (2, 2), pads, True)


def test_pooling_stochastic_has_no_cpu_implementation():
    net = make_net(layer('Pooling', ['x'], ['y'], 'pooling_param { pool: STOCHASTIC'
                         ' kernel_size: 2 }'), {'x': (1, 1, 4, 4)})
    assert net.blobs['y'].data.shape == (1, 1, 3, 3)   # setup works, as in Caffe
    with pytest.raises(MinicaffeError, match='STOCHASTIC.*CPU'):
        net.forward()


@pytest.mark.parametrize('param,msg', [
    ('kernel_size: 2 kernel_h: 2 kernel_w: 2', 'kernel_size OR kernel_h'),
    ('kernel_h: 2', 'both kernel_h and kernel_w'),
    ('global_pooling: true kernel_size: 2', 'Filter size cannot'),
    ('global_pooling: true stride: 2', 'only pad = 0 and stride = 1'),
    ('kernel_size: 2 pad: 2', 'smaller than the kernel'),
    ('kernel_size: 2 pad: 1 pad_h: 1 pad_w: 1', 'pad is pad OR pad_h'),
    ('kernel_size: 2 stride_h: 1', 'Stride is stride OR'),
    ('kernel_size: 0', 'cannot be zero'),
    ('kernel_size: 2 stride: 0', 'cannot be zero'),
    ('pool: STOCHASTIC kernel_size: 3 pad: 1', 'Padding implemented only'),
])
def test_pooling_errors(param, msg):
    bad('Pooling', 'pooling_param { %s }' % param, {'x': (1, 1, 4, 4)}, msg)


def test_pooling_ave_has_no_mask_top_and_needs_4_axes():
    bad('Pooling', 'pooling_param { pool: AVE kernel_size: 2 }', {'x': (1, 1, 4, 4)},
        'only MAX pooling', tops=('y', 'm'))
    bad('Pooling', 'pooling_param { kernel_size: 2 }', {'x': (1, 4, 4)}, '4 axes')


# ======================================================================= SPP
def test_spp_matches_levels_of_pooling():
    x = np.random.default_rng(0).integers(-3, 3, size=(2, 3, 9, 7)).astype(np.float32)
    net = make_net(layer('SPP', ['x'], ['y'], 'spp_param { pyramid_height: 3 pool: MAX }'),
                   {'x': x.shape})
    dy = rand(2, 3 * (1 + 4 + 16), seed=1)
    run(net, {'x': x}, {'y': dy})
    parts, dx, pos = [], np.zeros(x.shape), 0
    for level in range(3):
        bins = 2 ** level
        k = [int(math.ceil(n / bins)) for n in (9, 7)]
        p = [(kk * bins - n + 1) // 2 for kk, n in zip(k, (9, 7))]
        y, mask, sizes = ref_pool(x, 'MAX', k, k, p)
        assert y.shape[2:] == (bins, bins)
        parts.append(y.reshape(2, -1))
        d = dy[:, pos:pos + y[0].size].reshape(y.shape)
        pos += y[0].size
        dx += ref_pool_backward(d, x.shape, 'MAX', mask, k, k, p, sizes)
    np.testing.assert_array_equal(net.blobs['y'].data, np.concatenate(parts, axis=1))
    np.testing.assert_allclose(net.blobs['x'].diff, dx, rtol=1e-5, atol=1e-6)


def test_spp_height_one_keeps_four_axes_and_follows_input_size():
    net = make_net(layer('SPP', ['x'], ['y'], 'spp_param { pyramid_height: 1 pool: AVE }'),
                   {'x': (2, 3, 4, 5)})
    x = rand(2, 3, 4, 5)
    run(net, {'x': x})
    assert net.blobs['y'].data.shape == (2, 3, 1, 1)
    np.testing.assert_allclose(net.blobs['y'].data[:, :, 0, 0], x.mean(axis=(2, 3)), rtol=1e-6)
    net.blobs['x'].reshape(1, 3, 6, 6)
    net.forward()
    assert net.blobs['y'].data.shape == (1, 3, 1, 1)


def test_spp_errors():
    bad('SPP', 'spp_param { pyramid_height: 3 }', {'x': (1, 1, 1, 1)}, 'pad')
    bad('SPP', 'spp_param { pyramid_height: 2 }', {'x': (1, 4, 4)}, '4 axes')


# ======================================================================= LRN
def ref_lrn_across(x, n, alpha, beta, k):
    C = x.shape[1]
    x64 = x.astype(np.float64)
    scale = np.full(x.shape, k)
    for c in range(C):
        lo, hi = max(0, c - (n - 1) // 2), min(C, c + (n - 1) // 2 + 1)
        scale[:, c] += alpha / n * (x64[:, lo:hi] ** 2).sum(axis=1)
    return x64 * scale ** -beta


def ref_lrn_within(x, n, alpha, beta):
    H, W = x.shape[2:]
    p = (n - 1) // 2
    sq = np.pad(x.astype(np.float64) ** 2, ((0, 0), (0, 0), (p, p), (p, p)))
    s = np.zeros(x.shape)
    for i in range(n):
        for j in range(n):
            s += sq[:, :, i:i + H, j:j + W]
    return x * (1 + alpha / n ** 2 * s) ** -beta


@pytest.mark.parametrize('param,n,alpha,beta,k', [
    ('', 5, 1.0, 0.75, 1.0),
    ('local_size: 3 alpha: 0.5 beta: 0.6 k: 2', 3, 0.5, 0.6, 2.0),
    ('local_size: 9 alpha: 2', 9, 2.0, 0.75, 1.0),       # window wider than the channels
])
def test_lrn_across_channels_formula(param, n, alpha, beta, k):
    x = rand(2, 6, 3, 2)
    net = make_net(layer('LRN', ['x'], ['y'], 'lrn_param { %s }' % param), {'x': x.shape})
    run(net, {'x': x})
    np.testing.assert_allclose(net.blobs['y'].data, ref_lrn_across(x, n, alpha, beta, k),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('n', [1, 3, 5])
def test_lrn_within_channel_formula(n):
    x = rand(2, 2, 4, 5)
    net = make_net(layer('LRN', ['x'], ['y'], 'lrn_param { norm_region: WITHIN_CHANNEL'
                         ' local_size: %d alpha: 0.7 beta: 0.8 }' % n), {'x': x.shape})
    run(net, {'x': x})
    np.testing.assert_allclose(net.blobs['y'].data, ref_lrn_within(x, n, 0.7, 0.8),
                               rtol=1e-5, atol=1e-6)


def test_lrn_in_place_matches_out_of_place():
    x, dy = rand(2, 5, 3, 3), rand(2, 5, 3, 3, seed=1)
    for region in ('ACROSS_CHANNELS', 'WITHIN_CHANNEL'):
        param = 'lrn_param { local_size: 3 norm_region: %s }' % region
        a = run(make_net(layer('LRN', ['x'], ['y'], param), {'x': x.shape}), {'x': x}, {'y': dy})
        b = run(make_net(layer('LRN', ['x'], ['x'], param), {'x': x.shape}), {'x': x}, {'x': dy})
        np.testing.assert_allclose(b.blobs['x'].data, a.blobs['y'].data, rtol=1e-6)
        np.testing.assert_allclose(b.blobs['x'].diff, a.blobs['x'].diff, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize('param,shape,msg', [
    ('lrn_param { local_size: 4 }', (1, 3, 2, 2), 'odd values'),
    ('', (1, 3, 2), '4 axes'),
])
def test_lrn_errors(param, shape, msg):
    bad('LRN', param, {'x': shape}, msg)


# ============================================================ conv errors
@pytest.mark.parametrize('type_,param,shape,msg', [
    ('Convolution', 'num_output: 2', (1, 2, 4, 4), 'kernel_size must be specified once'),
    ('Convolution', 'num_output: 2 kernel_size: 2 kernel_size: 2 kernel_size: 2', (1, 2, 4, 4),
     'kernel_size must be specified once'),
    ('Convolution', 'num_output: 2 kernel_h: 2 kernel_w: 2', (1, 2, 4, 4, 4),
     'kernel_h & kernel_w can only be used for 2D'),
    ('Convolution', 'num_output: 2 kernel_size: 2 kernel_h: 2 kernel_w: 2', (1, 2, 4, 4),
     'Either kernel_size or kernel_h/w'),
    ('Convolution', 'num_output: 2 kernel_size: 2 stride: 0', (1, 2, 4, 4), 'Stride dimensions'),
    ('Convolution', 'num_output: 2 kernel_size: 0', (1, 2, 4, 4), 'Filter dimensions'),
    ('Convolution', 'num_output: 2 kernel_size: 2 pad: 1 pad: 1 pad: 1', (1, 2, 4, 4),
     'pad must be specified once'),
    ('Convolution', 'num_output: 2 kernel_size: 2 dilation: 1 dilation: 1 dilation: 1',
     (1, 2, 4, 4), 'dilation must be specified once'),
    ('Convolution', 'num_output: 4 kernel_size: 1 group: 2', (1, 3, 4, 4), 'multiple of group'),
    ('Convolution', 'num_output: 3 kernel_size: 1 group: 2', (1, 4, 4, 4), 'multiples of group'),
    ('Convolution', 'kernel_size: 1', (1, 4, 4, 4), 'num_output must be positive'),
    ('Convolution', 'num_output: 1 kernel_size: 5', (1, 1, 4, 4), 'not positive'),
    ('Convolution', 'num_output: 1 kernel_size: 1 axis: 4', (1, 1, 4, 4), 'out of range'),
    ('Deconvolution', 'num_output: 2 kernel_size: 2 stride_h: 2 stride_w: 2', (1, 2, 4, 4, 4),
     'stride_h & stride_w can only be used for 2D'),
    ('Im2col', 'kernel_size: 2', (2, 3), 'at least 1 spatial axis'),
])
def test_convolution_errors(type_, param, shape, msg):
    bad(type_, 'convolution_param { %s }' % param, {'x': shape}, msg)


def test_convolution_rejects_wrong_given_weights():
    text = ('layer { name: "input" type: "Input" top: "x" input_param { shape { dim: 1 dim: 2'
            ' dim: 4 dim: 4 } } } layer { name: "l" type: "Convolution" bottom: "x" top: "y"'
            ' convolution_param { num_output: 2 kernel_size: 3 bias_term: false }'
            ' blobs { shape { dim: 2 dim: 2 dim: 2 dim: 2 } data: %s } }'
            % ' data: '.join(['0'] * 16))
    with pytest.raises(MinicaffeError, match='Incorrect weight shape'):
        caffe.Net(net_param=protoio.parse_text(text, pb.NetParameter()), phase=caffe.TEST)


def test_convolution_bottom_channels_may_not_change():
    net = make_net(layer('Convolution', ['x'], ['y'], 'convolution_param { num_output: 1'
                         ' kernel_size: 1 }'), {'x': (1, 2, 3, 3)})
    net.blobs['x'].reshape(1, 3, 3, 3)
    with pytest.raises(MinicaffeError, match='incompatible'):
        net.forward()


def test_pooling_max_kernel_wider_than_int8():
    # kernel offsets beyond 127 take the wide-index path
    x = np.random.default_rng(4).integers(-50, 50, size=(1, 2, 131, 132)).astype(np.float32)
    net = make_net(layer('Pooling', ['x'], ['y', 'mask'], 'pooling_param { pool: MAX'
                         ' kernel_h: 130 kernel_w: 129 stride: 1 }'), {'x': x.shape})
    y, mask, sizes = ref_pool(x, 'MAX', (130, 129), (1, 1), (0, 0))
    run(net, {'x': x})
    np.testing.assert_array_equal(net.blobs['y'].data, y)
    np.testing.assert_array_equal(net.blobs['mask'].data, mask)


def test_threaded_copies_give_the_serial_numbers(set_threads):
    proto = (layer('Convolution', ['x'], ['c'], 'convolution_param { num_output: 4 kernel_size: 3'
                   ' pad: 1 group: 2 weight_filler { type: "gaussian" } }').replace('"l"', '"conv"')
             + layer('Im2col', ['x'], ['i'], 'convolution_param { kernel_size: 2 stride: 2 }')
             .replace('"l"', '"im2col"'))
    x = rand(3, 4, 6, 5)
    results = []
    for threads in (1, 3):
        set_threads(threads, split_small=threads > 1)
        caffe.set_random_seed(2)
        net = make_net(proto, {'x': x.shape})
        run(net, {'x': x}, {'c': rand(3, 4, 6, 5, seed=1), 'i': rand(3, 16, 3, 2, seed=2)})
        results.append((net.blobs['c'].data.copy(), net.blobs['i'].data.copy(),
                        net.blobs['x'].diff.copy(), net.params['conv'][0].diff.copy()))
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_convolution_with_dilation_zero_reads_one_input_for_every_tap():
    # Caffe accepts dilation 0 (no check): the kernel's extent is 1 and every tap
    # multiplies the same input, so the layer is a 1x1 convolution by the summed taps
    net = make_net(layer('Convolution', ['x'], ['y'], 'convolution_param { num_output: 2'
                         ' kernel_size: 3 dilation: 0 bias_term: false weight_filler {'
                         ' type: "gaussian" } }'), {'x': (1, 3, 4, 5)})
    x = rand(1, 3, 4, 5)
    net.blobs['x'].data[...] = x
    net.forward()
    w = net.params['l'][0].data.sum(axis=(2, 3))
    np.testing.assert_allclose(net.blobs['y'].data, np.einsum('oc,nchw->nohw', w, x), rtol=1e-5,
                               atol=1e-5)
