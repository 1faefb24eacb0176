"""CPU/GPU parity of the normalization layers' device code (normalization.py):
BatchNorm (batch and global statistics, running-average updates), Scale (learned,
bias_term, two bottoms, in place), Bias and MVN.

CI runs these through tests/fake_cupy.py; tools/gpu_check.sh on a real device."""
import numpy as np
import pytest

from minicaffe import mode
from minicaffe.blob import Blob
from minicaffe.gradcheck import make_layer
from minicaffe.layers.base import layer_class
from minicaffe.protoio import parse_text, pb

from gpu_support import check_gpu_parity, gpu_mode


def rand(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def run(text, bottoms, phase, params, steps=1, inplace=False):
    """``steps`` forward+backward passes of one layer from the given parameter
    values (in place: top blob = bottom blob); returns every output array."""
    if inplace:
        lp = parse_text(text, pb.LayerParameter(), '<test>')
        lp.name, lp.phase = 'l', getattr(pb, phase)
        layer = layer_class(lp.type, lp)(lp, lp.phase)
        bottom = [Blob(b.shape) for b in bottoms]
        for blob, b in zip(bottom, bottoms):
            blob.data[...] = b
        top = bottom[:1]
        layer.setup(bottom, top)
        layer.reshape(bottom, top)
        layer.param_propagate_down = [True] * len(layer.blobs)
    else:
        layer, bottom, top = make_layer(text, bottoms, phase=phase)
    for blob, v in zip(layer.blobs, params):
        blob.data[...] = v
    out = {}
    for step in range(steps):
        for i, b in enumerate(bottom):
            b.data[...] = bottoms[i] * np.float32(1 + step)
        mode.run_forward(layer, bottom, top)
        out['top%d' % step] = top[0].data.copy()
        top[0].diff[...] = rand(top[0].shape, seed=10 + step)
        for b in list(bottom[len(top) if inplace else 0:]) + layer.blobs:
            b.diff[...] = 0
        mode.run_backward(layer, top, [True] * len(bottom), bottom)
        for i, b in enumerate(bottom):
            out['bottom_diff%d_%d' % (i, step)] = b.diff.copy()
        for i, p in enumerate(layer.blobs):
            out['param%d_%d' % (i, step)] = p.data.copy()
            out['param_diff%d_%d' % (i, step)] = p.diff.copy()
    return layer, out


def compare(text, bottoms, phase='TRAIN', params=(), steps=2, inplace=False, rtol=1e-4, atol=1e-5):
    _, cpu = run(text, bottoms, phase, params, steps, inplace)
    with gpu_mode():
        layer, gpu = run(text, bottoms, phase, params, steps, inplace)
        assert type(layer).forward_gpu is not None and type(layer).backward_gpu is not None
    assert cpu.keys() == gpu.keys()
    for k in cpu:
        np.testing.assert_allclose(gpu[k], cpu[k], rtol=rtol, atol=atol, err_msg=k)
    return cpu


# ------------------------------------------------------------------ BatchNorm
# (not check_gpu_parity: it starts the GPU layer from the CPU layer's parameters
# after the CPU forward, which for BatchNorm TRAIN already hold one update)
C = 3
STATS = [np.array([0.4, -1.0, 2.0], np.float32), np.array([3.0, 1.5, 0.5], np.float32),
         np.array([2.5], np.float32)]


@pytest.mark.parametrize('param', ['', 'batch_norm_param { moving_average_fraction: 0.9 eps: 0.01 }'])
def test_batchnorm_batch_statistics_and_running_update(param):
    out = compare('type: "BatchNorm" ' + param, [rand((4, C, 3, 2)) + np.float32(1)], 'TRAIN',
                  STATS)
    assert not np.array_equal(out['param2_1'], STATS[2])      # the running sums moved


def test_batchnorm_global_statistics():
    compare('type: "BatchNorm"', [rand((4, C, 3, 2))], 'TEST', STATS)
    compare('type: "BatchNorm" batch_norm_param { use_global_stats: true }',
            [rand((4, C, 5))], 'TRAIN', STATS)


def test_batchnorm_global_statistics_zero_scale_factor():
    compare('type: "BatchNorm"', [rand((4, C, 3, 2))], 'TEST',
            [STATS[0], STATS[1], np.zeros(1, np.float32)])


def test_batchnorm_2d_and_in_place():
    compare('type: "BatchNorm"', [rand((6, C))], 'TRAIN', STATS)
    compare('type: "BatchNorm"', [rand((4, C, 3, 2))], 'TRAIN', STATS, inplace=True)


# ------------------------------------------------------------------ Scale / Bias
@pytest.mark.parametrize('param', [
    'scale_param { filler { type: "gaussian" std: 1 } }',
    'scale_param { filler { type: "gaussian" std: 1 } bias_term: true '
    'bias_filler { type: "gaussian" std: 1 } }',
    'scale_param { axis: 1 num_axes: 2 filler { type: "gaussian" std: 1 } bias_term: true }',
    'scale_param { axis: 0 num_axes: -1 filler { type: "gaussian" std: 1 } }',   # count == x count
    'scale_param { num_axes: 0 filler { type: "constant" value: 1.5 } }',          # one scalar
    'scale_param { axis: -1 filler { type: "gaussian" std: 1 } }',
])
def test_scale_learned(param):
    check_gpu_parity('type: "Scale" ' + param, [(2, 3, 4, 5)])


def test_scale_learned_accumulates_over_steps():
    compare('type: "Scale" scale_param { bias_term: true }', [rand((2, 3, 4))], 'TRAIN',
            [rand((3,), 1), rand((3,), 2)])


def test_scale_in_place():
    compare('type: "Scale" scale_param { bias_term: true }', [rand((2, 3, 4))], 'TRAIN',
            [rand((3,), 1), rand((3,), 2)], inplace=True)


@pytest.mark.parametrize('param,shapes', [
    ('scale_param { axis: 0 }', [(2, 3, 4), (2, 3)]),
    ('scale_param { axis: 1 bias_term: true bias_filler { type: "gaussian" std: 1 } }',
     [(2, 3, 4), (3, 4)]),
])
def test_scale_two_bottoms(param, shapes):
    check_gpu_parity('type: "Scale" ' + param, shapes)
    check_gpu_parity('type: "Scale" ' + param, shapes, propagate_down=[False, True])
    check_gpu_parity('type: "Scale" ' + param, shapes, propagate_down=[True, False])


@pytest.mark.parametrize('param,shapes', [
    ('bias_param { filler { type: "gaussian" std: 1 } }', [(2, 3, 4, 5)]),
    ('bias_param { axis: 0 num_axes: 2 filler { type: "gaussian" std: 1 } }', [(2, 3, 4)]),
    ('bias_param { axis: 1 }', [(2, 3, 4), (3, 4)]),
])
def test_bias(param, shapes):
    check_gpu_parity('type: "Bias" ' + param, shapes)


def test_bias_in_place_and_accumulates():
    compare('type: "Bias"', [rand((2, 3, 4))], 'TRAIN', [rand((3,), 1)], inplace=True)


# ------------------------------------------------------------------ MVN
@pytest.mark.parametrize('param', ['', 'mvn_param { across_channels: true }',
                                   'mvn_param { normalize_variance: false }',
                                   'mvn_param { normalize_variance: false across_channels: true }'])
def test_mvn(param):
    check_gpu_parity('type: "MVN" ' + param, [(2, 3, 4, 5)])
