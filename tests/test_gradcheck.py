"""The gradient checker itself: it must pass right gradients and catch wrong ones."""
import numpy as np
import pytest

import minicaffe as caffe
from minicaffe.gradcheck import CheckResult, GradientCheckError, GradientChecker, make_layer


def test_make_layer_fills_shapes_and_copies_arrays():
    x = np.arange(6, dtype=np.float64).reshape(2, 3)
    layer, bottom, top = make_layer('type: "Eltwise"', [x, (2, 3)])
    assert bottom[0].data.dtype == np.float32 and np.array_equal(bottom[0].data, x)
    assert bottom[1].data.std() > 0.1             # N(0, 1) filled
    assert top[0].shape == (2, 3) and layer.name == 'eltwise'


def test_make_layer_is_deterministic():
    _, b1, _ = make_layer('type: "TanH"', [(3, 4)])
    _, b2, _ = make_layer('type: "TanH"', [(3, 4)])
    assert np.array_equal(b1[0].data, b2[0].data)


def test_inner_product_passes_all_modes():
    proto = 'type: "InnerProduct" inner_product_param { num_output: 3 ' \
            'weight_filler { type: "gaussian" } bias_filler { type: "gaussian" } }'
    layer, bottom, top = make_layer(proto, [(2, 4)])
    stats = GradientChecker(1e-2, 1e-3).check_gradient_exhaustive(layer, bottom, top)
    assert set(stats) == {'param[0]', 'param[1]', 'bottom[0]'}
    assert all(s.failed == 0 and s.checked > 0 for s in stats.values())
    GradientChecker(1e-2, 1e-3).check_gradient(layer, bottom, top)


def _break_backward(layer, factor):
    real = layer.backward

    def wrong(top, propagate_down, bottom):
        real(top, propagate_down, bottom)
        for b, pd in zip(bottom, propagate_down):
            if pd:
                b.diff[...] *= factor
    layer.backward = wrong


def test_wrong_bottom_gradient_is_caught_with_location():
    layer, bottom, top = make_layer('type: "Sigmoid"', [(2, 3)])
    _break_backward(layer, 1.1)
    with pytest.raises(GradientCheckError) as e:
        GradientChecker(1e-2, 1e-3).check_gradient_eltwise(layer, bottom, top)
    assert 'bottom[0]' in str(e.value) and 'estimate' in str(e.value)


def test_small_errors_pass_under_a_loose_threshold_only():
    layer, bottom, top = make_layer('type: "TanH"', [(2, 3)])
    _break_backward(layer, 1.02)
    GradientChecker(1e-2, 5e-2).check_gradient(layer, bottom, top)
    with pytest.raises(GradientCheckError):
        GradientChecker(1e-2, 1e-3).check_gradient(layer, bottom, top)


def test_kink_elements_are_skipped():
    # |x| values at the kink are skipped; a ReLU checked across its kink with a huge
    # step would otherwise fail there.
    x = np.array([[0.001, -0.002, 1.0, -1.0]], np.float32)
    layer, bottom, top = make_layer('type: "ReLU"', [x])
    with pytest.raises(GradientCheckError):
        GradientChecker(1e-2, 1e-3).check_gradient_eltwise(layer, bottom, top)
    stats = GradientChecker(1e-2, 1e-3, kink=0.0, kink_range=0.01).check_gradient_eltwise(
        layer, bottom, top)
    assert stats['bottom[0]'].checked == 2 * 4     # 2 of 4 elements, once per top element


def test_dropout_mask_is_reseeded_before_each_forward():
    layer, bottom, top = make_layer('type: "Dropout" dropout_param { dropout_ratio: 0.5 }', [(3, 4)])
    GradientChecker(1e-2, 1e-3).check_gradient_eltwise(layer, bottom, top)


def test_check_bottom_selects_bottoms():
    labels = np.array([0, 2, 1], np.float32)
    layer, bottom, top = make_layer('type: "SoftmaxWithLoss"', [(3, 4), labels])
    stats = GradientChecker(1e-2, 1e-2).check_gradient_exhaustive(layer, bottom, top, check_bottom=0)
    assert list(stats) == ['bottom[0]']


NET = '''
name: "tiny"
input: "x" input_shape { dim: 2 dim: 3 }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y"
        inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "act" type: "TanH" bottom: "y" top: "y" }
layer { name: "sm" type: "Softmax" bottom: "y" top: "p" }
'''


def test_whole_net_check(tmp_path):
    path = tmp_path / 'net.prototxt'
    path.write_text(NET)
    caffe.set_random_seed(3)
    net = caffe.Net(str(path), caffe.TRAIN)
    net.blobs['x'].data[...] = np.random.default_rng(0).standard_normal((2, 3))
    seen = []
    results = GradientChecker(1e-2, 1e-2).check_gradient_net(net, report=seen.append)
    assert [(r.layer, r.blob) for r in results] == [
        ('ip', 'param[0]'), ('ip', 'param[1]'), ('ip', 'bottom[0]'),
        ('act', 'bottom[0]'), ('sm', 'bottom[0]')]
    assert all(isinstance(r, CheckResult) and r.passed for r in results) and seen == results
    # the in-place TanH was checked on copies: the net's blobs are unchanged
    before = net.blobs['y'].data.copy()
    GradientChecker().check_gradient_net(net, layer_names=['act'])
    assert np.array_equal(net.blobs['y'].data, before)


def test_whole_net_check_reports_a_wrong_layer(tmp_path):
    path = tmp_path / 'net.prototxt'
    path.write_text(NET)
    net = caffe.Net(str(path), caffe.TRAIN)
    net.blobs['x'].data[...] = 0.5
    _break_backward(net.layer_dict['sm'], -1.0)
    results = GradientChecker(1e-2, 1e-2).check_gradient_net(net, layer_names=['sm'], max_elements=3)
    assert len(results) == 1 and not results[0].passed and results[0].checked == 3


def test_unknown_layer_name_is_a_clear_error(tmp_path):
    path = tmp_path / 'net.prototxt'
    path.write_text(NET)
    net = caffe.Net(str(path), caffe.TRAIN)
    with pytest.raises(caffe.errors.MinicaffeError, match='no layer named "nope"'):
        GradientChecker().check_gradient_net(net, layer_names=['nope'])


def test_whole_net_check_sees_in_place_inputs(tmp_path):
    # An in-place ReLU must be checked on its input, not on its own output.
    path = tmp_path / 'net.prototxt'
    path.write_text('''
input: "x" input_shape { dim: 2 dim: 5 }
layer { name: "relu" type: "ReLU" bottom: "x" top: "x" relu_param { negative_slope: 0.5 } }
''')
    net = caffe.Net(str(path), caffe.TRAIN)
    net.blobs['x'].data[...] = np.linspace(-1, 1, 10).reshape(2, 5) + 0.05
    checked = []
    relu = net.layer_dict['relu']
    real_forward = relu.forward

    def spy(bottom, top):
        checked.append(bottom[0].data.min())
        real_forward(bottom, top)
    relu.forward = spy
    results = GradientChecker(1e-3, 1e-2).check_gradient_net(net)
    assert all(r.passed for r in results)
    assert checked[0] < 0         # the negative inputs were seen
