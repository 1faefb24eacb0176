"""Winograd F(2x2,3x3), F(4x4,3x3) and F(2x2,5x5) (minicaffe/winograd.py) and the
Convolution engine switch.

The module is checked against a float64 direct convolution and its exact
gradients over a sweep of geometries (odd and even maps, pad 0-2 per axis,
groups); the layer against im2col + GEMM (engine CAFFE), with numerical
gradient checks, cached and recomputed input transforms, several bottoms,
and results independent of the worker-thread count."""
import numpy as np
import pytest

from minicaffe import gradcheck, threads, winograd
from minicaffe.commands import timing
from minicaffe.errors import MinicaffeError
from minicaffe.protoio import pb

GEOMETRIES = [  # N, C, H, W, K, group, pad
    (2, 4, 7, 6, 6, 2, (1, 1)),
    (3, 3, 5, 5, 4, 1, (0, 2)),
    (1, 2, 4, 9, 2, 1, (2, 0)),
    (2, 8, 6, 6, 8, 4, (1, 0)),
    (1, 1, 3, 3, 1, 1, (0, 0)),      # a single output
    (2, 6, 1, 8, 3, 3, (1, 1)),      # one-row image
]
GEOMETRIES_5x5 = [  # the same for a 5x5 kernel (pad 0-4 per axis)
    (2, 4, 7, 6, 6, 2, (1, 1)),
    (3, 3, 5, 5, 4, 1, (0, 2)),
    (1, 2, 6, 9, 2, 1, (4, 0)),
    (2, 8, 6, 6, 8, 4, (2, 3)),
    (1, 1, 5, 5, 1, 1, (0, 0)),      # a single output
    (2, 6, 1, 8, 3, 3, (2, 2)),      # one-row image
]


def _rand(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _direct(x, w, pad, group):
    """float64 y[n, k] = sum_{c in group, u, v} w[k, c, u, v] xp[n, c, h + u, w + v]."""
    r = w.shape[-1]
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pad[0],) * 2, (pad[1],) * 2))
    win = np.lib.stride_tricks.sliding_window_view(xp, (r, r), axis=(2, 3))
    N, C = x.shape[:2]
    K = w.shape[0]
    win = win.reshape((N, group, C // group) + win.shape[2:])
    wg = w.astype(np.float64).reshape(group, K // group, C // group, r, r)
    y = np.einsum('ngchwuv,gkcuv->ngkhw', win, wg)
    return y.reshape((N, K) + y.shape[3:])


def _direct_grads(x, w, pad, group, dy):
    """float64 dx and dw of sum(dy * _direct(x, w))."""
    N, C, H, W = x.shape
    K, r = w.shape[0], w.shape[-1]
    Cg, Kg = C // group, K // group
    Ho, Wo = dy.shape[2:]
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pad[0],) * 2, (pad[1],) * 2))
    dxp = np.zeros_like(xp)
    dw = np.zeros(w.shape)
    dyg = dy.astype(np.float64).reshape(N, group, Kg, Ho, Wo)
    wg = w.astype(np.float64).reshape(group, Kg, Cg, r, r)
    for u in range(r):
        for v in range(r):
            patch = xp[:, :, u:u + Ho, v:v + Wo].reshape(N, group, Cg, Ho, Wo)
            dw[:, :, u, v] = np.einsum('ngkhw,ngchw->gkc', dyg, patch).reshape(K, Cg)
            dxp[:, :, u:u + Ho, v:v + Wo] += np.einsum(
                'gkc,ngkhw->ngchw', wg[..., u, v], dyg).reshape(N, C, Ho, Wo)
    return dxp[:, :, pad[0]:pad[0] + H, pad[1]:pad[1] + W], dw


def _close(ours, want, rtol=1e-5):
    scale = max(1.0, float(np.abs(want).max()))
    err = float(np.abs(ours - want).max())
    assert err <= rtol * 10 * scale, err


TILINGS = pytest.mark.parametrize('tiling', [winograd.F2, winograd.F4, winograd.F2_5x5],
                                  ids=repr)
TILED_GEOMETRIES = ([(t, g) for t in (winograd.F2, winograd.F4) for g in GEOMETRIES]
                    + [(winograd.F2_5x5, g) for g in GEOMETRIES_5x5])


def _out_sp(H, W, pad, r):
    return (H + 2 * pad[0] - r + 1, W + 2 * pad[1] - r + 1)


@pytest.mark.parametrize('tiling,geom', TILED_GEOMETRIES,
                         ids=['%r-%s' % tg for tg in TILED_GEOMETRIES])
def test_module_matches_direct_convolution_and_its_gradients(geom, tiling):
    N, C, H, W, K, G, pad = geom
    r = tiling.r
    x, w = _rand((N, C, H, W), 1), _rand((K, C // G, r, r), 2)
    bias = _rand((K,), 3)
    out_sp = _out_sp(H, W, pad, r)
    U = winograd.transform_weights(w, G, tiling)
    y = np.empty((N, K) + out_sp, np.float32)
    V = winograd.forward(x, U, pad, out_sp, y, bias, tiling=tiling)
    _close(y, _direct(x, w, pad, G) + bias[None, :, None, None])
    dy = _rand(y.shape, 4)
    dx = np.full(x.shape, np.nan, np.float32)     # overwritten everywhere
    du = np.zeros_like(U)
    winograd.backward(dy, U, V, pad, dx=dx, du=du, tiling=tiling)
    want_dx, want_dw = _direct_grads(x, w, pad, G, dy)
    _close(dx, want_dx)
    _close(winograd.weight_gradient_from(du, tiling), want_dw)


# CaffeNet's conv3 and conv5 (batch 2) and a wide 27x27 map (3x3), and conv2
# (5x5, group 2): F(4x4)'s rounding errors grow with the channels summed; measured
# (max |err| / max |y|, forward / data gradient / weight gradient): F(2x2) ~6e-7 /
# 3e-7 / 4e-7, F(4x4) ~1.5e-5 / 3e-6 / 3e-6 on conv3, F(2x2,5x5) ~3e-6 / 2e-6 /
# 1.3e-5 on conv2 -- all far inside the conformance tolerance, 1e-4 of the
# largest value (tests/conformance.py).
CAFFENET_SHAPES = ([(t, g) for t in (winograd.F2, winograd.F4)
                    for g in [(2, 256, 13, 13, 48, 1, (1, 1)), (2, 384, 13, 13, 32, 2, (1, 1)),
                              (1, 96, 27, 27, 32, 1, (1, 1))]]
                   + [(winograd.F2_5x5, (2, 96, 27, 27, 64, 2, (2, 2)))])


@pytest.mark.parametrize('tiling,geom', CAFFENET_SHAPES,
                         ids=['%r-%s' % tg for tg in CAFFENET_SHAPES])
def test_error_on_caffenet_shapes_is_inside_the_conformance_tolerance(geom, tiling):
    N, C, H, W, K, G, pad = geom
    r = np.random.default_rng(7)      # CaffeNet-like scales: ReLU inputs, small weights
    x = np.maximum(r.standard_normal((N, C, H, W)), 0).astype(np.float32)
    w = (0.01 * r.standard_normal((K, C // G, tiling.r, tiling.r))).astype(np.float32)
    out_sp = _out_sp(H, W, pad, tiling.r)
    U = winograd.transform_weights(w, G, tiling)
    y = np.empty((N, K) + out_sp, np.float32)
    V = winograd.forward(x, U, pad, out_sp, y, tiling=tiling)
    dy = _rand(y.shape, 4)
    dx, du = np.empty_like(x), np.zeros_like(U)
    winograd.backward(dy, U, V, pad, dx=dx, du=du, tiling=tiling)
    want_dx, want_dw = _direct_grads(x, w, pad, G, dy)
    bound = 5e-6 if tiling is winograd.F2 else 5e-5      # vs the tolerance's 1e-4
    for ours, want in ((y, _direct(x, w, pad, G)), (dx, want_dx),
                       (winograd.weight_gradient_from(du, tiling), want_dw)):
        assert float(np.abs(ours - want).max()) <= bound * float(np.abs(want).max())


@TILINGS
def test_weight_transform_round_trip_is_the_adjoint(tiling):
    """<G g G^T, d> = <g, G^T d G>: weight_gradient_from is transform_weights' adjoint."""
    w, d = _rand((6, 4, tiling.r, tiling.r), 5), _rand((tiling.points, 2, 3, 4), 6)
    lhs = float((winograd.transform_weights(w, 2, tiling).astype(np.float64) * d).sum())
    rhs = float((w.astype(np.float64) * winograd.weight_gradient_from(d, tiling)).sum())
    assert abs(lhs - rhs) <= 1e-4 * max(1.0, abs(lhs))


def test_tiling_matrices_are_winograds_algorithm():
    """A^T [(G g) * (B^T d)] = the valid correlation of d (alpha) with g (r), in
    one dimension, exactly (float64): the matrices are a minimal filtering
    algorithm F(m, r)."""
    r = np.random.default_rng(3)
    for tiling in (winograd.F2, winograd.F4, winograd.F2_5x5):
        d, g = r.standard_normal(tiling.alpha), r.standard_normal(tiling.r)
        want = np.correlate(d, g, mode='valid')
        got = tiling.AT @ ((tiling.G @ g) * (tiling.BT @ d))
        assert np.allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('out_sp,m', [((13, 13), 4), ((27, 27), 4), ((6, 6), 2), ((2, 2), 2),
                                      ((4, 5), 4), ((3, 3), 4), ((5, 5), 2)])
def test_default_tiling_by_the_multiplies_saved(monkeypatch, out_sp, m):
    monkeypatch.setattr(winograd, 'FORCE', None)
    assert winograd.choose_tiling(out_sp).m == m
    for force, want in (('winograd2', 2), ('winograd4', 4)):
        monkeypatch.setattr(winograd, 'FORCE', force)
        assert winograd.choose_tiling(out_sp).m == want


@pytest.mark.parametrize('force', [None, 'winograd', 'winograd2', 'winograd4'])
def test_a_5x5_kernel_has_one_tile(monkeypatch, force):
    monkeypatch.setattr(winograd, 'FORCE', force)
    for out_sp in ((27, 27), (8, 8), (1, 4)):
        assert winograd.choose_tiling(out_sp, (5, 5)) is winograd.F2_5x5
    assert repr(winograd.F2_5x5) == 'F(2x2,5x5)'


@pytest.mark.parametrize('force,out_sp,blocks', [
    (None, (27, 27), True), (None, (5, 5), False), (None, (2, 2), False),
    ('winograd2', (27, 27), False), ('winograd4', (2, 2), True)])
def test_a_5x5_kernel_runs_in_blocks_where_f4_is_the_tile(monkeypatch, force, out_sp, blocks):
    """Where F(4x4,3x3) is the 3x3 tile for the map, a 5x5 kernel runs as four 3x3
    blocks under it (the same multiplies as F(2x2,5x5), 4x smaller products to
    transform back); else by F(2x2,5x5)."""
    monkeypatch.setattr(winograd, 'FORCE', force)
    stacking, tiling = winograd.plan((5, 5), (1, 1), out_sp)
    if blocks:
        assert isinstance(stacking, winograd.Blocks) and tiling is winograd.F4
        assert stacking.copies == 4 and stacking.r == (3, 3)
    else:
        assert stacking is None and tiling is winograd.F2_5x5


@pytest.mark.parametrize('geom', GEOMETRIES_5x5, ids=str)
def test_blocks_of_a_5x5_kernel_give_the_convolution_and_its_gradients(geom):
    N, C, H, W, K, G, pad = geom
    x, w = _rand((N, C, H, W), 1), _rand((K, C // G, 5, 5), 2)
    out_sp = _out_sp(H, W, pad, 5)
    blocks = winograd.Blocks((5, 5))
    xs = blocks.stack_input(x, pad, out_sp, G).copy()
    U = winograd.transform_weights(blocks.stack_weights(w), G, winograd.F4)
    y = np.empty((N, K) + out_sp, np.float32)
    V = winograd.forward(xs, U, (0, 0), out_sp, y, tiling=winograd.F4)
    _close(y, _direct(x, w, pad, G))
    dy = _rand(y.shape, 4)
    dxs, du = np.empty_like(xs), np.zeros_like(U)
    winograd.backward(dy, U, V, (0, 0), dx=dxs, du=du, tiling=winograd.F4)
    dx = np.full(x.shape, np.nan, np.float32)
    blocks.unstack_input_grad(dxs, pad, dx, G)
    want_dx, want_dw = _direct_grads(x, w, pad, G, dy)
    _close(dx, want_dx)
    _close(blocks.unstack_weight_grad(winograd.weight_gradient_from(du, winograd.F4)), want_dw)


@pytest.mark.parametrize('kernel,stride,dilation,pad,ok', [
    ((3, 3), (1, 1), (1, 1), (1, 1), True),
    ((3, 3), (1, 1), (1, 1), (2, 0), True),
    ((3, 3), (2, 2), (1, 1), (1, 1), False),
    ((3, 3), (1, 1), (2, 2), (1, 1), False),
    ((3, 3), (1, 1), (1, 1), (3, 1), False),
    ((5, 5), (1, 1), (1, 1), (2, 2), True),
    ((5, 5), (1, 1), (1, 1), (4, 0), True),
    ((5, 5), (1, 1), (1, 1), (5, 0), False),
    ((5, 3), (1, 1), (1, 1), (1, 1), False),
    ((7, 7), (1, 1), (1, 1), (3, 3), False),
    ((11, 11), (4, 4), (1, 1), (0, 0), True),        # phases 3x3 (CaffeNet conv1)
    ((5, 5), (2, 2), (1, 1), (2, 2), True),          # phases 3x3
    ((7, 7), (2, 2), (1, 1), (3, 3), True),          # phases 4x4
    ((10, 10), (2, 2), (1, 1), (0, 0), True),        # phases 5x5
    ((3, 3), (2, 2), (1, 1), (1, 1), False),         # phases 2x2: no tile
    ((11, 11), (4, 4), (2, 2), (0, 0), False),       # dilated
    ((5, 5), (2, 2), (1, 1), (5, 0), False),         # pad not below the kernel
    ((3, 2), (1, 1), (1, 1), (1, 1), False),
    ((3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1), False),
])
def test_applicable_geometries(kernel, stride, dilation, pad, ok):
    assert winograd.applicable(kernel, stride, dilation, pad) == ok


def _direct_strided(x, w, pad, stride, group):
    """float64 y[n, k, i, j] = sum_{c in group, u, v} w[k, c, u, v] xp[n, c, s i + u, s j + v]."""
    K, Cg, kh, kw = w.shape
    N, C, H, W = x.shape
    xp = np.pad(np.asarray(x, np.float64), ((0, 0), (0, 0), (pad[0],) * 2, (pad[1],) * 2))
    Ho, Wo = (H + 2 * pad[0] - kh) // stride[0] + 1, (W + 2 * pad[1] - kw) // stride[1] + 1
    y = np.zeros((N, K, Ho, Wo))
    wg = np.asarray(w, np.float64).reshape(group, K // group, Cg, kh, kw)
    for u in range(kh):
        for v in range(kw):
            patch = xp[:, :, u:u + stride[0] * (Ho - 1) + 1:stride[0],
                       v:v + stride[1] * (Wo - 1) + 1:stride[1]].reshape(N, group, Cg, Ho, Wo)
            y += np.einsum('ngchw,gkc->ngkhw', patch, wg[..., u, v]).reshape(N, K, Ho, Wo)
    return y


STRIDED = [  # N, C, H, W, K, group, kernel, stride, pad: phases of 3x3, 4x4 and 5x5
    (2, 4, 13, 12, 6, 2, 5, 2, (2, 1)),      # the LRCN activity net's conv2
    (1, 3, 35, 31, 8, 1, 11, 4, (0, 0)),     # CaffeNet's conv1, small
    (2, 6, 16, 15, 4, 2, 6, 2, (1, 3)),
    (1, 2, 9, 9, 2, 1, 5, 2, (4, 0)),        # windows reaching only padding
    (2, 3, 31, 29, 8, 1, 7, 2, (0, 1)),      # 4x4 phases: F(3x3,4x4)
    (1, 4, 20, 20, 4, 2, 8, 2, (3, 3)),
    (1, 2, 23, 23, 3, 1, 10, 2, (0, 0)),     # 5x5 phases: F(2x2,5x5)
    (2, 2, 8, 30, 2, 1, 3, 1, (1, 1)),       # stride 1 goes through unchanged
]


@pytest.mark.parametrize('geom', STRIDED, ids=str)
def test_strided_kernels_run_as_the_stride_1_convolution_of_their_phases(geom):
    """Phases' stack_input / stack_weights give a stride-1 convolution equal to
    the strided one; unstack_input_grad / unstack_weight_grad are their exact
    adjoints, so the gradients are those of the strided convolution."""
    N, C, H, W, K, G, k, s, pad = geom
    x, w = _rand((N, C, H, W), 1), _rand((K, C // G, k, k), 2)
    out_sp = ((H + 2 * pad[0] - k) // s + 1, (W + 2 * pad[1] - k) // s + 1)
    stacking, tiling = winograd.plan((k, k), (s, s), out_sp)
    if s == 1:
        stacking = winograd.Phases((k, k), (s, s))
    assert isinstance(stacking, winograd.Phases) and tiling.r == stacking.r[0]
    xs = stacking.stack_input(x, pad, out_sp, G).copy()
    U = winograd.transform_weights(stacking.stack_weights(w), G, tiling)
    y = np.empty((N, K) + out_sp, np.float32)
    V = winograd.forward(xs, U, (0, 0), out_sp, y, tiling=tiling)
    _close(y, _direct_strided(x, w, pad, (s, s), G))
    dy = _rand(y.shape, 4)
    dxs, du = np.empty_like(xs), np.zeros_like(U)
    winograd.backward(dy, U, V, (0, 0), dx=dxs, du=du, tiling=tiling)
    dx = np.full(x.shape, np.nan, np.float32)       # every element written
    stacking.unstack_input_grad(dxs, pad, dx, G)
    dw = stacking.unstack_weight_grad(winograd.weight_gradient_from(du, tiling))
    # <dy, conv(d, w)> = <dx, d> and <dy, conv(x, e)> = <dw, e> for any d, e
    rng = np.random.default_rng(8)
    d, e = rng.standard_normal(x.shape), rng.standard_normal(w.shape)
    for grad, direction, want in ((dx, d, _direct_strided(d, w, pad, (s, s), G)),
                                  (dw, e, _direct_strided(x, e, pad, (s, s), G))):
        lhs = float((want * dy).sum())
        assert abs(float((grad * direction).sum()) - lhs) <= 1e-4 * max(1.0, abs(lhs))


def _conv(param, shapes, phase='TRAIN', seed=1701):
    proto = ('type: "Convolution" %s convolution_param { %s weight_filler { type: "gaussian" }'
             ' bias_filler { type: "gaussian" } }'
             % (' '.join('top: "t%d"' % i for i in range(len(shapes))), param))
    return gradcheck.make_layer(proto, [_rand(s, 10 + i) for i, s in enumerate(shapes)],
                                phase=phase, seed=seed)


CAFFENET_CONV3 = 'num_output: 384 kernel_size: 3 pad: 1'


def test_default_engine_picks_winograd_by_shape(monkeypatch):
    monkeypatch.setattr(winograd, 'FORCE', None)
    assert _conv(CAFFENET_CONV3, [(1, 256, 13, 13)])[0].winograd       # CaffeNet conv3
    assert _conv('num_output: 256 kernel_size: 3 pad: 1 group: 2',
                 [(1, 384, 13, 13)])[0].winograd                        # conv5
    assert not _conv('num_output: 8 kernel_size: 3 pad: 1', [(1, 3, 13, 13)])[0].winograd
    assert not _conv('num_output: 64 kernel_size: 3 stride: 2',
                     [(1, 64, 13, 13)])[0].winograd
    # engine: CAFFE keeps Caffe's im2col + GEMM whatever the shape
    assert not _conv(CAFFENET_CONV3 + ' engine: CAFFE', [(1, 256, 13, 13)])[0].winograd
    assert pb.ConvolutionParameter.DESCRIPTOR.fields_by_name['engine'].number == 15


@pytest.mark.parametrize('force,param,expect', [
    ('winograd', 'num_output: 4 kernel_size: 3 pad: 1', True),
    ('winograd2', 'num_output: 4 kernel_size: 3 pad: 1', True),
    ('winograd4', 'num_output: 4 kernel_size: 3 pad: 1', True),
    ('winograd4', 'num_output: 4 kernel_size: 3 pad: 1 engine: CAFFE', False),
    ('winograd', 'num_output: 4 kernel_size: 3 pad: 1 engine: CAFFE', False),
    ('winograd', 'num_output: 4 kernel_size: 3 stride: 2', False),
    ('caffe', CAFFENET_CONV3, False),
])
def test_forced_engine(monkeypatch, force, param, expect):
    monkeypatch.setattr(winograd, 'FORCE', force)
    shape = (1, 256, 13, 13) if 'num_output: 384' in param else (1, 3, 7, 7)
    assert _conv(param, [shape])[0].winograd == expect


def _run(monkeypatch, force, param, shapes, phase, propagate=True, dy_seed=20):
    monkeypatch.setattr(winograd, 'FORCE', force)
    layer, bottom, top = _conv(param, shapes, phase)
    assert layer.winograd == force.startswith('winograd')
    if force[-1] in '24' and layer.tiling.r == 3:     # (the forced tile of 3x3 kernels)
        assert layer.tiling.m == int(force[-1])
    for i, p in enumerate(layer.blobs):
        p.data[...] = _rand(p.shape, 30 + i)
    layer.forward(bottom, top)
    for i, t in enumerate(top):
        t.diff[...] = _rand(t.shape, dy_seed + i)
    for b in layer.blobs:
        b.diff[...] = 1.0           # gradients accumulate into the diffs
    layer.backward(top, [propagate] * len(bottom), bottom)
    return ([t.data.copy() for t in top], [b.diff.copy() for b in bottom],
            [p.diff.copy() for p in layer.blobs])


def _matches_caffe_engine(monkeypatch, force, param, shapes, phase):
    """The layer's tops and gradients under the forced engine are those of engine
    CAFFE (im2col + GEMM) within rounding."""
    ref = _run(monkeypatch, 'caffe', param, shapes, phase)
    ours = _run(monkeypatch, force, param, shapes, phase)
    for a, b in zip(ours, ref):
        for o, r in zip(a, b):
            _close(o, r)


@pytest.mark.parametrize('force', ['winograd2', 'winograd4'])
@pytest.mark.parametrize('phase', ['TRAIN', 'TEST'])
@pytest.mark.parametrize('param,shapes', [
    ('num_output: 6 kernel_size: 3 pad: 1 group: 2', [(3, 4, 9, 8), (3, 4, 9, 8)]),
    ('num_output: 5 kernel_h: 3 kernel_w: 3 pad_h: 2 pad_w: 0', [(2, 3, 5, 7)]),
    ('num_output: 4 kernel_size: 3 bias_term: false', [(2, 2, 6, 5)]),
])
def test_layer_matches_im2col_engine(monkeypatch, phase, param, shapes, force):
    _matches_caffe_engine(monkeypatch, force, param, shapes, phase)


@pytest.mark.parametrize('force', ['winograd2', 'winograd4'])
@pytest.mark.parametrize('phase', ['TRAIN', 'TEST'])
@pytest.mark.parametrize('param,shapes', [
    ('num_output: 6 kernel_size: 5 pad: 2 group: 2', [(3, 4, 9, 8), (3, 4, 9, 8)]),
    ('num_output: 5 kernel_h: 5 kernel_w: 5 pad_h: 4 pad_w: 0', [(2, 3, 5, 7)]),
    ('num_output: 4 kernel_size: 5 bias_term: false', [(2, 2, 6, 5)]),
])
def test_5x5_layer_matches_im2col_engine(monkeypatch, phase, param, shapes, force):
    """A 5x5 kernel runs F(2x2,5x5), or F(4x4,3x3) on its four 3x3 blocks."""
    monkeypatch.setattr(winograd, 'FORCE', force)
    layer = _conv(param, shapes, phase)[0]
    if force == 'winograd2':
        assert layer.stacking is None and layer.tiling is winograd.F2_5x5
    else:
        assert isinstance(layer.stacking, winograd.Blocks) and layer.tiling is winograd.F4
    _matches_caffe_engine(monkeypatch, force, param, shapes, phase)


@pytest.mark.parametrize('force', ['winograd', 'winograd2', 'winograd4'])
@pytest.mark.parametrize('phase', ['TRAIN', 'TEST'])
@pytest.mark.parametrize('param,shapes', [
    ('num_output: 6 kernel_size: 5 stride: 2 pad: 2 group: 2', [(3, 4, 13, 12), (3, 4, 13, 12)]),
    ('num_output: 8 kernel_size: 11 stride: 4', [(2, 3, 35, 31)]),
    ('num_output: 4 kernel_h: 6 kernel_w: 6 stride: 2 pad_h: 1 pad_w: 3', [(2, 2, 16, 15)]),
    ('num_output: 5 kernel_size: 7 stride: 2 pad: 3 bias_term: false', [(2, 3, 19, 17)]),
])
def test_strided_layer_matches_im2col_engine(monkeypatch, phase, param, shapes, force):
    """A strided kernel runs by its phases (polyphase) under a forced engine."""
    monkeypatch.setattr(winograd, 'FORCE', force)
    layer = _conv(param, shapes, phase)[0]
    r = layer.stacking.r[0]
    assert isinstance(layer.stacking, winograd.Phases)
    assert layer.tiling.r == r and r == (4 if 'size: 7' in param else 3)
    _matches_caffe_engine(monkeypatch, force, param, shapes, phase)


def test_strided_weights_only_backward(monkeypatch):
    param, shapes = 'num_output: 4 kernel_size: 5 stride: 2 pad: 1', [(2, 3, 11, 12)]
    ref = _run(monkeypatch, 'caffe', param, shapes, 'TEST', propagate=False)
    ours = _run(monkeypatch, 'winograd', param, shapes, 'TEST', propagate=False)
    for o, r in zip(ours[2], ref[2]):
        _close(o, r)


def test_default_engine_takes_phases_where_they_stack_enough_channels(monkeypatch):
    monkeypatch.setattr(winograd, 'FORCE', None)
    conv1 = _conv('num_output: 96 kernel_size: 11 stride: 4', [(1, 3, 227, 227)])[0]
    assert conv1.winograd and isinstance(conv1.stacking, winograd.Phases)     # CaffeNet
    assert conv1.wino_channels == 48
    activity_conv2 = _conv('num_output: 384 kernel_size: 5 stride: 2 group: 2',
                           [(1, 96, 55, 55)])[0]
    assert isinstance(activity_conv2.stacking, winograd.Phases)
    assert activity_conv2.tiling is winograd.F4
    # the activity net's conv1: 7x7 stride 2 on 3 channels stacks only 12 (slower)
    assert not _conv('num_output: 96 kernel_size: 7 stride: 2', [(1, 3, 227, 227)])[0].winograd


def test_polyphase_gradient_check(monkeypatch):
    monkeypatch.setattr(winograd, 'FORCE', 'winograd')
    layer, bottom, top = _conv('kernel_size: 5 stride: 2 pad: 1 num_output: 2', [(2, 3, 7, 8)])
    assert isinstance(layer.stacking, winograd.Phases)
    gradcheck.GradientChecker(stepsize=1e-1, threshold=1e-3).check_gradient_exhaustive(
        layer, bottom, top)


@pytest.mark.parametrize('force', ['winograd2', 'winograd4'])
def test_layer_weights_only_backward(monkeypatch, force):
    """propagate_down false: the weight gradient alone (input transforms recomputed
    in TEST phase, where forward keeps none)."""
    param, shapes = 'num_output: 4 kernel_size: 3 pad: 1', [(2, 3, 6, 6)]
    ref = _run(monkeypatch, 'caffe', param, shapes, 'TEST', propagate=False)
    ours = _run(monkeypatch, force, param, shapes, 'TEST', propagate=False)
    for o, r in zip(ours[2], ref[2]):
        _close(o, r)


# F(4x4)'s forward rounds ~5x more coarsely (see above), too much for float32
# central differences with Caffe's step 1e-2; the convolution is linear in each
# input and weight, so a 10x larger step estimates the same derivative with 10x
# less rounding noise.
@pytest.mark.parametrize('force,stepsize', [('winograd2', 1e-2), ('winograd4', 1e-1)])
@pytest.mark.parametrize('param,shape', [
    ('kernel_size: 3 pad: 1 num_output: 2', (2, 3, 5, 4)),
    ('kernel_size: 3 pad: 1 pad: 2 group: 2 num_output: 4', (1, 4, 4, 5)),
    ('kernel_size: 5 pad: 2 num_output: 2', (2, 3, 5, 4)),          # F(2x2,5x5)
    ('kernel_size: 5 pad: 1 pad: 3 group: 2 num_output: 4', (1, 4, 4, 5)),
])
def test_gradient_check_under_winograd(monkeypatch, param, shape, force, stepsize):
    monkeypatch.setattr(winograd, 'FORCE', force)
    layer, bottom, top = _conv(param, [shape])
    assert layer.winograd and layer.tiling.m == int(force[-1])
    if 'kernel_size: 5' in param:
        stepsize = 1e-1     # 25 taps: float32 differences at 1e-2 are noise, as F(4x4)'s
    gradcheck.GradientChecker(stepsize=stepsize, threshold=1e-3).check_gradient_exhaustive(
        layer, bottom, top)


@pytest.mark.parametrize('force,kernel', [('winograd2', 3), ('winograd4', 3), ('winograd', 5),
                                          ('winograd', '5 stride: 2')])
def test_results_do_not_depend_on_the_thread_count(monkeypatch, force, kernel):
    monkeypatch.setattr(threads, 'PARALLEL_MIN_ELEMS', 0)
    monkeypatch.setattr(threads, 'PARALLEL_CHUNK_ELEMS', 1)  # the most chunks
    param, shapes = ('num_output: 8 kernel_size: %s pad: 1 group: 2' % kernel,
                     [(5, 6, 7, 9)])
    runs = []
    before = threads.get_num_threads()
    try:
        for n in (1, 3):
            threads.set_num_threads(n)
            runs.append(_run(monkeypatch, force, param, shapes, 'TRAIN'))
    finally:
        threads.set_num_threads(before)
    for a, b in zip(*runs):
        for o, r in zip(a, b):
            assert np.array_equal(o, r)


def test_default_engine_runs_backward_by_im2col(monkeypatch):
    """DEFAULT (winograd.DEFAULT_BACKWARD false): Winograd forward, im2col backward;
    forward and gradients within rounding of engine CAFFE's (DEFAULT's im2col
    backward groups the weight and bias gradients' sums differently, see
    vision._accumulate_outer_transposed)."""
    monkeypatch.setattr(winograd, 'DEFAULT_BACKWARD', False)
    param, shapes = 'num_output: 32 kernel_size: 3 pad: 1 group: 1', [(2, 32, 6, 5)]
    ref = _run(monkeypatch, 'caffe', param, shapes, 'TRAIN')
    monkeypatch.setattr(winograd, 'FORCE', None)
    layer = _conv(param, shapes)[0]
    assert layer.winograd and not layer.winograd_backward
    ours = _run_default(monkeypatch, param, shapes)
    for o, r in zip(ours[0], ref[0]):
        _close(o, r)
    for a, b in zip(ours[1:], ref[1:]):
        for o, r in zip(a, b):
            _close(o, r)                    # im2col backward on the same numbers
    monkeypatch.setattr(winograd, 'DEFAULT_BACKWARD', True)
    assert _conv(param, shapes)[0].winograd_backward


def _run_default(monkeypatch, param, shapes):
    layer, bottom, top = _conv(param, shapes, 'TRAIN')
    for i, p in enumerate(layer.blobs):
        p.data[...] = _rand(p.shape, 30 + i)
    layer.forward(bottom, top)
    for i, t in enumerate(top):
        t.diff[...] = _rand(t.shape, 20 + i)
    for b in layer.blobs:
        b.diff[...] = 1.0
    layer.backward(top, [True] * len(bottom), bottom)
    return ([t.data.copy() for t in top], [b.diff.copy() for b in bottom],
            [p.diff.copy() for p in layer.blobs])


@pytest.mark.parametrize('force,backward,name', [
    ('caffe', True, 'im2col'), ('winograd2', True, 'winoF2'), ('winograd4', True, 'winoF4'),
    (None, False, 'winoF4-fwd')])
def test_time_layers_names_the_algorithm_and_tile(monkeypatch, force, backward, name):
    monkeypatch.setattr(winograd, 'FORCE', force)
    monkeypatch.setattr(winograd, 'DEFAULT_BACKWARD', backward)
    layer = _conv(CAFFENET_CONV3, [(1, 256, 13, 13)])[0]
    assert timing.conv_algorithm(layer) == name


@pytest.mark.parametrize('force,name', [('winograd2', 'winoF2r5'), ('winograd4', 'winoF4k5')])
def test_time_layers_names_the_5x5_tile(monkeypatch, force, name):
    monkeypatch.setattr(winograd, 'FORCE', force)
    layer = _conv('num_output: 4 kernel_size: 5 pad: 2', [(1, 3, 7, 7)])[0]
    assert timing.conv_algorithm(layer) == name


def test_time_layers_names_a_kernel_run_by_its_phases(monkeypatch):
    monkeypatch.setattr(winograd, 'FORCE', None)
    layer = _conv('num_output: 96 kernel_size: 11 stride: 4', [(1, 3, 227, 227)])[0]
    assert timing.conv_algorithm(layer) == 'winoF4s4'


def test_an_unknown_engine_override_is_refused(monkeypatch):
    monkeypatch.setattr(winograd, 'FORCE', 'winograd3')
    with pytest.raises(MinicaffeError, match='MINICAFFE_CONV_ENGINE must be one of winograd,'
                       ' winograd2, winograd4, caffe'):
        _conv(CAFFENET_CONV3, [(1, 256, 13, 13)])


def test_chunks_bound_the_products_as_well_as_the_input_transforms(monkeypatch):
    """Few input channels and many outputs: the images per chunk come from the
    products' size (outputs), and several chunks give the one-chunk numbers."""
    from minicaffe.layers import vision
    param, shapes = 'num_output: 64 kernel_size: 3 pad: 1', [(8, 2, 9, 9)]
    monkeypatch.setattr(winograd, 'FORCE', 'winograd4')
    per_image = winograd.tile_points(winograd.F4, (9, 9)) * 4
    monkeypatch.setattr(vision, 'COL_CHUNK_BYTES', per_image * 64 * 3)
    layer = _conv(param, shapes)[0]
    assert layer.chunk == 3
    _matches_caffe_engine(monkeypatch, 'winograd4', param, shapes, 'TRAIN')


@pytest.mark.parametrize('force,param,shape', [
    ('winograd2', 'num_output: 4 kernel_size: 3 pad: 1', (2, 3, 6, 6)),
    ('winograd4', 'num_output: 4 kernel_size: 3 pad: 1 group: 2', (2, 4, 9, 9)),
    ('winograd', 'num_output: 4 kernel_size: 5 pad: 2', (2, 3, 9, 9)),         # 5x5
    ('winograd', 'num_output: 4 kernel_size: 5 stride: 2 pad: 1', (2, 3, 9, 9)),  # Phases
])
def test_kept_weight_transform_follows_every_change_of_the_weights(monkeypatch, force, param,
                                                                   shape):
    """The layer keeps U between passes while the weights stay bit for bit the
    same; any change through the blob (as pycaffe, a solver or the gradient
    checker makes it) is seen at the next pass: forward and backward give what a
    layer that never kept U gives."""
    monkeypatch.setattr(winograd, 'FORCE', force)
    layer, bottom, top = _conv(param, [shape])
    assert layer.winograd

    def passes(fresh):
        if fresh:
            layer._winograd_kept = None
        layer.forward(bottom, top)
        out = top[0].data.copy()
        top[0].diff[...] = _rand(top[0].shape, 3)
        layer.blobs[0].diff[...] = 0
        if fresh:
            layer._winograd_kept = None
        layer.backward(top, [True], bottom)
        return out, bottom[0].diff.copy(), layer.blobs[0].diff.copy()

    w = layer.blobs[0].data
    for change in (lambda: None, lambda: w.__setitem__((0, 0, 0, 0), w[0, 0, 0, 0] + 1),
                   lambda: w.__imul__(-1), lambda: w.__setitem__((-1, -1, -1, -1), 0.0),
                   lambda: w.__setitem__((-1, -1, -1, -1), -0.0)):
        change()
        ours = passes(fresh=False)      # with U kept from the weights before
        for got, want in zip(ours, passes(fresh=True)):
            np.testing.assert_array_equal(got, want)
    # changed between forward and backward: backward uses the weights it sees
    layer.forward(bottom, top)
    w[...] = _rand(w.shape, 9)
    top[0].diff[...] = _rand(top[0].shape, 3)
    layer.backward(top, [True], bottom)
    got = bottom[0].diff.copy()
    layer._winograd_kept = None
    layer.backward(top, [True], bottom)
    np.testing.assert_array_equal(got, bottom[0].diff)
