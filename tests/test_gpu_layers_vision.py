"""CPU/GPU parity of the vision layers with device code (convolution, pooling, LRN).

CI runs these through tests/fake_cupy.py (the real .cu sources built with g++);
tools/gpu_check.sh runs them on a real device."""
import pytest

from gpu_support import check_gpu_parity


@pytest.mark.parametrize('param', [
    'convolution_param { num_output: 4 kernel_size: 3 pad: 1 stride: 2 '
    'weight_filler { type: "gaussian" std: 0.1 } bias_filler { type: "constant" value: 0.2 } }',
    'convolution_param { num_output: 4 kernel_size: 3 group: 2 dilation: 2 '
    'weight_filler { type: "gaussian" std: 0.1 } bias_filler { type: "gaussian" std: 0.1 } }',
    'convolution_param { num_output: 3 kernel_size: 1 '
    'weight_filler { type: "gaussian" std: 0.1 } bias_term: false }',
])
def test_convolution(param):
    check_gpu_parity('type: "Convolution" ' + param, [(2, 4, 7, 6)])


def test_convolution_3d():
    check_gpu_parity('type: "Convolution" convolution_param { num_output: 2 kernel_size: 2 '
                     'stride: 1 pad: 1 weight_filler { type: "gaussian" std: 0.1 } }',
                     [(2, 3, 4, 5, 3)])


def test_deconvolution():
    check_gpu_parity('type: "Deconvolution" convolution_param { num_output: 4 kernel_size: 3 '
                     'stride: 2 group: 2 weight_filler { type: "gaussian" std: 0.1 } '
                     'bias_filler { type: "gaussian" std: 0.1 } }', [(2, 4, 5, 4)])


@pytest.mark.parametrize('param', [
    'pooling_param { pool: MAX kernel_size: 3 stride: 2 }',
    'pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 }',
    'pooling_param { pool: MAX kernel_h: 2 kernel_w: 3 stride_h: 1 stride_w: 2 pad_h: 1 pad_w: 0 }',
    # one pad 0: the last window is dropped on both axes (Caffe's `pad_h_ || pad_w_`)
    'pooling_param { pool: MAX kernel_h: 1 kernel_w: 2 stride: 3 pad_h: 0 pad_w: 1 }',
    'pooling_param { pool: AVE kernel_h: 1 kernel_w: 2 stride: 3 pad_h: 0 pad_w: 1 }',
    'pooling_param { pool: AVE kernel_h: 3 kernel_w: 2 stride: 2 pad_h: 1 pad_w: 0 }',
])
def test_pooling(param):
    check_gpu_parity('type: "Pooling" ' + param, [(2, 3, 9, 8)])


@pytest.mark.parametrize('param', [
    'lrn_param { local_size: 5 alpha: 0.1 beta: 0.75 }',
    'lrn_param { local_size: 3 alpha: 0.2 beta: 0.5 norm_region: WITHIN_CHANNEL }',
])
def test_lrn(param):
    check_gpu_parity('type: "LRN" ' + param, [(2, 7, 5, 4)], rtol=1e-4, atol=1e-5)
