"""Which layers need backward, decided as Caffe's Net::Init decides it: from the
param specs written in the prototxt (an absent spec means lr_mult 1), never from
the layer's own copy, to which set-up may add specs (BatchNorm adds lr_mult 0
specs for its statistics).  The solver's lr_mult (AppendParam) reads the layer's
copy, so BatchNorm's statistics stay frozen either way."""
import numpy as np
import pytest

import minicaffe as caffe
from minicaffe import protoio
from minicaffe.protoio import pb


def build(body, inputs, force_backward=False, phase=caffe.TRAIN):
    tops = ''.join('top: "%s" ' % n for n in inputs)
    shapes = ''.join('shape { %s } ' % ' '.join('dim: %d' % d for d in s) for s in inputs.values())
    text = ('force_backward: %s layer { name: "input" type: "Input" %s input_param { %s } }\n%s'
            % ('true' if force_backward else 'false', tops, shapes, body))
    return caffe.Net(net_param=protoio.parse_text(text, pb.NetParameter()), phase=phase)


G = 'weight_filler { type: "gaussian" std: 0.5 }'
# Every layer type with learnable blobs: (type, parameters, bottoms, input shapes, blob count).
PARAM_LAYERS = {
    'Convolution': ('convolution_param { num_output: 2 kernel_size: 3 %s }' % G,
                    ['x'], {'x': (2, 3, 4, 4)}, 2),
    'Deconvolution': ('convolution_param { num_output: 2 kernel_size: 3 %s }' % G,
                      ['x'], {'x': (2, 3, 4, 4)}, 2),
    'InnerProduct': ('inner_product_param { num_output: 2 %s }' % G, ['x'], {'x': (2, 3, 4, 4)}, 2),
    'Embed': ('embed_param { num_output: 3 input_dim: 5 %s }' % G, ['i'], {'i': (4,)}, 2),
    'PReLU': ('', ['x'], {'x': (2, 3, 4, 4)}, 1),
    'Scale': ('scale_param { bias_term: true }', ['x'], {'x': (2, 3, 4, 4)}, 2),
    'Bias': ('', ['x'], {'x': (2, 3, 4, 4)}, 1),
    'BatchNorm': ('', ['x'], {'x': (2, 3, 4, 4)}, 3),
    'LSTM': ('recurrent_param { num_output: 2 %s }' % G, ['s', 'c'], {'s': (3, 2, 4), 'c': (3, 2)}, 3),
    'RNN': ('recurrent_param { num_output: 2 %s }' % G, ['s', 'c'], {'s': (3, 2, 4), 'c': (3, 2)}, 5),
    'Parameter': ('parameter_param { shape { dim: 2 dim: 3 } }', [], {'x': (1,)}, 1),
}


def param_net(type_, specs, force_backward=False):
    """Input -> the layer (with these param specs) -> a summing loss on its top."""
    param, bottoms, inputs, _ = PARAM_LAYERS[type_]
    body = ('layer { name: "l" type: "%s" %s top: "y" %s %s }\n'
            'layer { name: "loss" type: "Reduction" bottom: "y" top: "loss" loss_weight: 1 }'
            % (type_, ''.join('bottom: "%s" ' % b for b in bottoms), param,
               ''.join('param { %s }' % s for s in specs)))
    return build(body, inputs, force_backward)


@pytest.mark.parametrize('type_', sorted(PARAM_LAYERS))
def test_no_param_spec_means_lr_mult_1_and_the_layer_needs_backward(type_):
    n = PARAM_LAYERS[type_][3]
    net = param_net(type_, [])
    lid = net._layer_names.index('l')
    assert len(net.layers[lid].blobs) == n
    assert net.layer_need_backward[lid]
    assert net.layers[lid].param_propagate_down == [True] * n


@pytest.mark.parametrize('type_', sorted(PARAM_LAYERS))
def test_all_lr_mult_0_means_no_backward(type_):
    n = PARAM_LAYERS[type_][3]
    net = param_net(type_, ['lr_mult: 0'] * n)
    lid = net._layer_names.index('l')
    assert not net.layer_need_backward[lid]
    assert net.layers[lid].param_propagate_down == [False] * n
    # force_backward turns every param's propagation on, as in Caffe
    forced = param_net(type_, ['lr_mult: 0'] * n, force_backward=True)
    assert forced.layer_need_backward[lid]
    assert forced.layers[lid].param_propagate_down == [True] * n


@pytest.mark.parametrize('type_', sorted(t for t in PARAM_LAYERS if PARAM_LAYERS[t][3] > 1
                                         and t != 'BatchNorm'))
def test_one_spec_given_the_rest_default_to_lr_mult_1(type_):
    n = PARAM_LAYERS[type_][3]
    net = param_net(type_, ['lr_mult: 0'])
    lid = net._layer_names.index('l')
    assert net.layer_need_backward[lid]
    assert net.layers[lid].param_propagate_down == [False] + [True] * (n - 1)


@pytest.mark.parametrize('type_', sorted(PARAM_LAYERS))
def test_only_batchnorm_adds_param_specs_at_setup(type_):
    # The class of the problem: a layer whose set-up alters its own param specs makes
    # "the layer's copy" and "the prototxt" disagree.  In Caffe only BatchNorm does
    # (LSTM/RNN add specs to their unrolled net's layers, not their own).
    net = param_net(type_, [])
    layer = net.layers[net._layer_names.index('l')]
    if type_ == 'BatchNorm':
        assert [s.lr_mult for s in layer.layer_param.param] == [0, 0, 0]
        assert net.params_lr == [0, 0, 0]          # the solver never moves the statistics
    else:
        assert len(layer.layer_param.param) == 0
        assert net.params_lr == [1.0] * len(layer.blobs)


def bn_chain(specs='', force_backward=False):
    """x -> BatchNorm -> ReLU -> frozen InnerProduct -> Euclidean loss against t."""
    body = ('layer { name: "bn" type: "BatchNorm" bottom: "x" top: "b" %s }\n'
            'layer { name: "relu" type: "ReLU" bottom: "b" top: "r" }\n'
            'layer { name: "ip" type: "InnerProduct" bottom: "r" top: "y" param { lr_mult: 0 }'
            ' param { lr_mult: 0 } inner_product_param { num_output: 3 %s'
            ' bias_filler { type: "constant" value: 0.1 } } }\n'
            'layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "loss" }'
            % (specs, G))
    net = build(body, {'x': (4, 2, 3, 3), 't': (4, 3)}, force_backward)
    r = np.random.default_rng(3)
    net.params['ip'][0].data[...] = r.normal(size=(3, 18))
    net.blobs['x'].data[...] = r.normal(size=(4, 2, 3, 3))
    net.blobs['t'].data[...] = r.normal(size=(4, 3))
    net.forward()
    net.backward()
    return net


def test_batchnorm_without_specs_backpropagates_as_in_caffe():
    net = bn_chain()
    assert [net.layer_need_backward[net._layer_names.index(n)] for n in ('bn', 'relu', 'ip')] \
        == [True, True, True]
    # BatchNorm writes its bottom diff even though the Input does not need it (Caffe's
    # BatchNorm Backward does not look at propagate_down); the numbers equal the
    # force_backward run's.
    forced = bn_chain(force_backward=True)
    for name in ('x', 'b', 'r', 'y'):
        assert np.abs(net.blobs[name].diff).max() > 0, name
        np.testing.assert_array_equal(net.blobs[name].diff, forced.blobs[name].diff)
    # the statistics are not learned: no diff, lr_mult 0 for the solver
    assert all(not b.diff.any() for b in net.params['bn'])


def test_batchnorm_with_its_three_frozen_specs_needs_no_backward():
    net = bn_chain('param { lr_mult: 0 } param { lr_mult: 0 } param { lr_mult: 0 }')
    assert not any(net.layer_need_backward[net._layer_names.index(n)] for n in ('bn', 'relu', 'ip'))
    for name in ('x', 'b', 'r', 'y'):
        assert not net.blobs[name].diff.any(), name


def test_batchnorm_without_specs_trains_nothing_but_passes_gradients_down():
    # conv (learned) -> BatchNorm (no specs) -> loss: the conv weights get gradients
    # through BatchNorm, the statistics get none.
    body = ('layer { name: "conv" type: "Convolution" bottom: "x" top: "c" convolution_param {'
            ' num_output: 2 kernel_size: 1 %s } }\n'
            'layer { name: "bn" type: "BatchNorm" bottom: "c" top: "b" }\n'
            'layer { name: "loss" type: "EuclideanLoss" bottom: "b" bottom: "t" top: "loss" }' % G)
    net = build(body, {'x': (3, 2, 2, 2), 't': (3, 2, 2, 2)})
    r = np.random.default_rng(4)
    net.blobs['x'].data[...] = r.normal(size=(3, 2, 2, 2))
    net.blobs['t'].data[...] = r.normal(size=(3, 2, 2, 2))
    net.forward()
    net.backward()
    assert np.abs(net.params['conv'][0].diff).max() > 0
    assert net.params_lr == [1.0, 1.0, 0.0, 0.0, 0.0]
