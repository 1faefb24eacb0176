"""Legacy net syntax (Caffe's upgrade_proto.cpp): V0 and V1 prototxts become
the same NetParameter as their modern equivalents; solver_type; BatchNorm."""
import logging

import numpy as np
import pytest

import minicaffe as caffe
from minicaffe import protoio, upgrade
from minicaffe.errors import MinicaffeError, NetDefinitionError
from minicaffe.protoio import pb


def parse(text):
    return protoio.parse_text(text, pb.NetParameter())


def upgraded(text):
    return upgrade.upgrade_v1_net(parse(text), '<test>')


def assert_same(ours, want):
    if ours != want:       # show a readable diff
        assert protoio.text_format.MessageToString(ours) == protoio.text_format.MessageToString(want)


# ---------------------------------------------------------------- V1 (layers { type: ENUM })
V1_LENET = '''
name: "LeNet"
layers {
  name: "mnist"  type: DATA  top: "data"  top: "label"
  data_param { source: "examples/mnist/mnist_train_lmdb" backend: LMDB batch_size: 64
               scale: 0.00390625 }
  include: { phase: TRAIN }
}
layers {
  name: "mnist"  type: DATA  top: "data"  top: "label"
  data_param { source: "examples/mnist/mnist_test_lmdb" backend: LMDB batch_size: 100
               scale: 0.00390625 mirror: true crop_size: 24 mean_file: "mean.binaryproto" }
  include: { phase: TEST }
}
layers {
  name: "conv1"  type: CONVOLUTION  bottom: "data"  top: "conv1"
  blobs_lr: 1  blobs_lr: 2
  convolution_param { num_output: 20 kernel_size: 5 stride: 1
                      weight_filler { type: "xavier" } bias_filler { type: "constant" } }
}
layers { name: "pool1" type: POOLING bottom: "conv1" top: "pool1"
         pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layers {
  name: "ip1"  type: INNER_PRODUCT  bottom: "pool1"  top: "ip1"
  blobs_lr: 1  blobs_lr: 2  weight_decay: 1  weight_decay: 0
  param: "ip1_w"  param: "ip1_b"  blob_share_mode: PERMISSIVE
  inner_product_param { num_output: 500 weight_filler { type: "xavier" } }
}
layers { name: "relu1" type: RELU bottom: "ip1" top: "ip1" relu_param { negative_slope: 0.1 } }
layers { name: "accuracy" type: ACCURACY bottom: "ip1" bottom: "label" top: "accuracy"
         include: { phase: TEST } accuracy_param { top_k: 1 } }
layers { name: "loss" type: SOFTMAX_LOSS bottom: "ip1" bottom: "label" top: "loss" loss_weight: 2
         exclude: { stage: "deploy" } loss_param { ignore_label: 3 } }
'''

MODERN_LENET = '''
name: "LeNet"
layer {
  name: "mnist"  type: "Data"  top: "data"  top: "label"
  include { phase: TRAIN }
  transform_param { scale: 0.00390625 }
  data_param { source: "examples/mnist/mnist_train_lmdb" backend: LMDB batch_size: 64 }
}
layer {
  name: "mnist"  type: "Data"  top: "data"  top: "label"
  include { phase: TEST }
  transform_param { scale: 0.00390625 mirror: true crop_size: 24 mean_file: "mean.binaryproto" }
  data_param { source: "examples/mnist/mnist_test_lmdb" backend: LMDB batch_size: 100 }
}
layer {
  name: "conv1"  type: "Convolution"  bottom: "data"  top: "conv1"
  param { lr_mult: 1 }  param { lr_mult: 2 }
  convolution_param { num_output: 20 kernel_size: 5 stride: 1
                      weight_filler { type: "xavier" } bias_filler { type: "constant" } }
}
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer {
  name: "ip1"  type: "InnerProduct"  bottom: "pool1"  top: "ip1"
  param { name: "ip1_w" share_mode: PERMISSIVE lr_mult: 1 decay_mult: 1 }
  param { name: "ip1_b" lr_mult: 2 decay_mult: 0 }
  inner_product_param { num_output: 500 weight_filler { type: "xavier" } }
}
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" relu_param { negative_slope: 0.1 } }
layer { name: "accuracy" type: "Accuracy" bottom: "ip1" bottom: "label" top: "accuracy"
        include { phase: TEST } accuracy_param { top_k: 1 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip1" bottom: "label" top: "loss" loss_weight: 2
        exclude { stage: "deploy" } loss_param { ignore_label: 3 } }
'''


def test_v1_lenet_upgrades_to_the_modern_net():
    assert_same(upgraded(V1_LENET), parse(MODERN_LENET))


def test_v1_type_names():
    names = {}
    for name, value in pb.V1LayerParameter.LayerType.items():
        lp = pb.LayerParameter()
        upgrade.upgrade_v1_layer(pb.V1LayerParameter(type=value), lp)
        names[name] = lp.type
    assert names['NONE'] == '' and len(set(names.values())) == len(names)
    assert (names['SOFTMAX_LOSS'], names['ABSVAL'], names['IM2COL'], names['HDF5_OUTPUT'],
            names['DECONVOLUTION'], names['SIGMOID_CROSS_ENTROPY_LOSS'], names['MVN'], names['TANH']) == (
        'SoftmaxWithLoss', 'AbsVal', 'Im2col', 'HDF5Output', 'Deconvolution',
        'SigmoidCrossEntropyLoss', 'MVN', 'TanH')


def test_v1_keeps_net_fields_and_ignores_layer_entries(caplog):
    text = ('name: "n" force_backward: true input: "x" input_dim: 1 input_dim: 2 input_dim: 3 input_dim: 4 '
            'layer { name: "modern" type: "ReLU" bottom: "x" top: "x" } '
            'layers { name: "old" type: TANH bottom: "x" top: "y" }')
    with caplog.at_level(logging.ERROR, logger='minicaffe'):
        out = upgraded(text)
    assert [l.name for l in out.layer] == ['old'] and len(out.layers) == 0
    assert out.force_backward and list(out.input) == ['x'] and list(out.input_dim) == [1, 2, 3, 4]
    assert 'ignored' in caplog.text


V1_SMALL = '''
name: "small" force_backward: true
input: "data" input_dim: 2 input_dim: 1 input_dim: 6 input_dim: 6
input: "label" input_dim: 2 input_dim: 1 input_dim: 1 input_dim: 1
layers { name: "conv" type: CONVOLUTION bottom: "data" top: "conv" blobs_lr: 1 blobs_lr: 0
         weight_decay: 1 weight_decay: 0
         convolution_param { num_output: 3 kernel_size: 3 weight_filler { type: "gaussian" std: 0.5 }
                             bias_filler { type: "constant" value: 0.1 } } }
layers { name: "relu" type: RELU bottom: "conv" top: "conv" }
layers { name: "pool" type: POOLING bottom: "conv" top: "pool" pooling_param { pool: AVE kernel_size: 4 } }
layers { name: "loss" type: SOFTMAX_LOSS bottom: "pool" bottom: "label" top: "loss" }
'''

MODERN_SMALL = '''
name: "small" force_backward: true
layer { name: "input" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 2 dim: 1 dim: 6 dim: 6 } shape { dim: 2 dim: 1 dim: 1 dim: 1 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 0 decay_mult: 0 }
        convolution_param { num_output: 3 kernel_size: 3 weight_filler { type: "gaussian" std: 0.5 }
                            bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param { pool: AVE kernel_size: 4 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "pool" bottom: "label" top: "loss" }
'''


def test_v1_net_builds_and_runs_like_the_modern_one(tmp_path):
    (tmp_path / 'v1.prototxt').write_text(V1_SMALL)
    nets = []
    for text_or_path in (str(tmp_path / 'v1.prototxt'), MODERN_SMALL):
        caffe.set_random_seed(7)
        if text_or_path.endswith('.prototxt'):
            net = caffe.Net(text_or_path, caffe.TRAIN)
        else:
            net = caffe.Net(net_param=parse(text_or_path), phase=caffe.TRAIN)
        nets.append(net)
    old, new = nets
    assert old._layer_names == new._layer_names
    assert [l.type for l in old.layers] == [l.type for l in new.layers]
    assert old.params_lr == new.params_lr == [1, 0]
    assert old.params_weight_decay == new.params_weight_decay == [1, 0]
    x = np.random.default_rng(0).standard_normal((2, 1, 6, 6)).astype(np.float32)
    y = np.array([0, 2], np.float32).reshape(2, 1, 1, 1)
    for net in nets:
        np.testing.assert_array_equal(net.params['conv'][0].data, new.params['conv'][0].data)
        net.forward(data=x, label=y)
        net.backward()
    np.testing.assert_array_equal(old.blobs['loss'].data, new.blobs['loss'].data)
    np.testing.assert_array_equal(old.params['conv'][0].diff, new.params['conv'][0].diff)


# ---------------------------------------------------------------- data transformation only
def test_data_transformation_upgrade_for_image_and_window_data():
    out = upgraded('layers { name: "img" type: IMAGE_DATA top: "d" top: "l"'
                   ' image_data_param { source: "list.txt" crop_size: 5 mirror: false batch_size: 2 } }'
                   'layers { name: "win" type: WINDOW_DATA top: "e" top: "m"'
                   ' window_data_param { source: "w.txt" scale: 2 mean_file: "m" } }'
                   'layers { name: "hd" type: HDF5_DATA top: "f" hdf5_data_param { source: "h.txt" } }')
    want = parse('layer { name: "img" type: "ImageData" top: "d" top: "l"'
                 ' transform_param { crop_size: 5 mirror: false }'
                 ' image_data_param { source: "list.txt" batch_size: 2 } }'
                 'layer { name: "win" type: "WindowData" top: "e" top: "m"'
                 ' transform_param { scale: 2 mean_file: "m" } window_data_param { source: "w.txt" } }'
                 'layer { name: "hd" type: "HDF5Data" top: "f" hdf5_data_param { source: "h.txt" } }')
    assert_same(out, want)


# ---------------------------------------------------------------- V0 (layers { layer { type: "conv" } })
V0_NET = '''
name: "CaffeNet"
input: "data"
input_dim: 2 input_dim: 3 input_dim: 20 input_dim: 20
layers { layer { name: "pad1" type: "padding" pad: 2 } bottom: "data" top: "pad1" }
layers {
  layer { name: "conv1" type: "conv" num_output: 4 kernelsize: 3 stride: 2 group: 1
          weight_filler { type: "gaussian" std: 0.01 } bias_filler { type: "constant" value: 0 }
          blobs_lr: 1. blobs_lr: 2. weight_decay: 1. weight_decay: 0. }
  bottom: "pad1" top: "conv1"
}
layers { layer { name: "relu1" type: "relu" } bottom: "conv1" top: "conv1" }
layers { layer { name: "pad2" type: "padding" pad: 1 } bottom: "conv1" top: "pad2" }
layers { layer { name: "pool1" type: "pool" pool: AVE kernelsize: 3 stride: 2 } bottom: "pad2" top: "pool1" }
layers { layer { name: "norm1" type: "lrn" local_size: 3 alpha: 0.0001 beta: 0.75 } bottom: "pool1" top: "norm1" }
layers { layer { name: "drop1" type: "dropout" dropout_ratio: 0.25 } bottom: "norm1" top: "norm1" }
layers { layer { name: "fc6" type: "innerproduct" num_output: 8 biasterm: false
                 weight_filler { type: "gaussian" std: 0.005 } } bottom: "norm1" top: "fc6" }
layers { layer { name: "prob" type: "softmax" } bottom: "fc6" top: "prob" }
'''

MODERN_V0_NET = '''
name: "CaffeNet"
input: "data"
input_dim: 2 input_dim: 3 input_dim: 20 input_dim: 20
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
        convolution_param { num_output: 4 pad: 2 kernel_size: 3 stride: 2 group: 1
                            weight_filler { type: "gaussian" std: 0.01 }
                            bias_filler { type: "constant" value: 0 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: AVE pad: 1 kernel_size: 3 stride: 2 } }
layer { name: "norm1" type: "LRN" bottom: "pool1" top: "norm1"
        lrn_param { local_size: 3 alpha: 0.0001 beta: 0.75 } }
layer { name: "drop1" type: "Dropout" bottom: "norm1" top: "norm1" dropout_param { dropout_ratio: 0.25 } }
layer { name: "fc6" type: "InnerProduct" bottom: "norm1" top: "fc6"
        inner_product_param { num_output: 8 bias_term: false weight_filler { type: "gaussian" std: 0.005 } } }
layer { name: "prob" type: "Softmax" bottom: "fc6" top: "prob" }
'''


def test_v0_net_with_padding_layers_upgrades_to_the_modern_net():
    assert_same(upgraded(V0_NET), parse(MODERN_V0_NET))


def test_v0_net_builds(tmp_path):
    text = V0_NET[:V0_NET.index('layers { layer { name: "fc6"')]
    (tmp_path / 'v0.prototxt').write_text(text)
    net = caffe.Net(str(tmp_path / 'v0.prototxt'), caffe.TEST)
    assert [l.type for l in net.layers] == ['Input', 'Convolution', 'ReLU', 'Pooling', 'LRN', 'Dropout']
    assert net.blobs['conv1'].shape == (2, 4, 11, 11)           # (20 + 2*2 - 3) / 2 + 1
    assert net.blobs['pool1'].shape == (2, 4, 6, 6)             # ceil((11 + 2 - 3) / 2) + 1
    assert net.params_lr == [1, 2]


def test_v0_data_layer_fields():
    out = upgraded('layers { layer { name: "data" type: "data" source: "train_leveldb" meanfile: "m.bp"'
                   ' batchsize: 256 cropsize: 227 mirror: true scale: 0.5 rand_skip: 3 } top: "data" top: "label" }'
                   'layers { layer { name: "img" type: "images" source: "l.txt" batchsize: 4 shuffle_images: true'
                   ' new_height: 8 new_width: 9 } top: "d2" top: "l2" }'
                   'layers { layer { name: "win" type: "window_data" source: "w.txt" det_fg_threshold: 0.6'
                   ' det_bg_threshold: 0.4 det_fg_fraction: 0.3 det_context_pad: 16 det_crop_mode: "square" }'
                   ' top: "d3" top: "l3" }'
                   'layers { layer { name: "cat" type: "concat" concat_dim: 0 } bottom: "d2" bottom: "d3" top: "c" }'
                   'layers { layer { name: "out" type: "hdf5_output" hdf5_output_param { file_name: "o.h5" } }'
                   ' bottom: "c" bottom: "l2" }')
    want = parse('layer { name: "data" type: "Data" top: "data" top: "label"'
                 ' transform_param { scale: 0.5 mirror: true crop_size: 227 mean_file: "m.bp" }'
                 ' data_param { source: "train_leveldb" batch_size: 256 rand_skip: 3 } }'
                 'layer { name: "img" type: "ImageData" top: "d2" top: "l2"'
                 ' image_data_param { source: "l.txt" batch_size: 4 shuffle: true new_height: 8 new_width: 9 } }'
                 'layer { name: "win" type: "WindowData" top: "d3" top: "l3"'
                 ' window_data_param { source: "w.txt" fg_threshold: 0.6 bg_threshold: 0.4 fg_fraction: 0.3'
                 ' context_pad: 16 crop_mode: "square" } }'
                 'layer { name: "cat" type: "Concat" bottom: "d2" bottom: "d3" top: "c" concat_param { concat_dim: 0 } }'
                 'layer { name: "out" type: "HDF5Output" bottom: "c" bottom: "l2"'
                 ' hdf5_output_param { file_name: "o.h5" } }')
    assert_same(out, want)


def test_v0_field_on_the_wrong_layer_type_is_logged_and_dropped(caplog):
    with caplog.at_level(logging.WARNING, logger='minicaffe'):
        out = upgraded('input: "x" layers { layer { name: "r" type: "relu" num_output: 3 } bottom: "x" top: "x" }')
    assert_same(out, parse('input: "x" layer { name: "r" type: "ReLU" bottom: "x" top: "x" }'))
    assert 'num_output' in caplog.text


@pytest.mark.parametrize('text,msg', [
    ('layers { layer { name: "w" type: "weird" } }', 'unknown V0 layer type "weird"'),
    ('input: "x" layers { layer { name: "p" type: "padding" pad: 1 } bottom: "x" top: "p" }'
     ' layers { layer { name: "r" type: "relu" } bottom: "p" top: "r" }', 'may only feed a conv or pool'),
    ('layers { layer { name: "c" type: "conv" } bottom: "nowhere" top: "c" }', 'unknown blob input "nowhere"'),
])
def test_v0_errors(text, msg):
    with pytest.raises(NetDefinitionError, match=msg):
        upgraded(text)


# ---------------------------------------------------------------- BatchNorm, solver
def test_batchnorm_with_three_param_specs_gets_zero_rates():
    net = parse('layer { name: "bn" type: "BatchNorm" param { lr_mult: 1 } param { lr_mult: 1 }'
                ' param { lr_mult: 1 decay_mult: 1 } }'
                'layer { name: "bn2" type: "BatchNorm" param { lr_mult: 1 } }')
    assert upgrade.net_needs_batchnorm_upgrade(net)
    upgrade.upgrade_batchnorm(net)
    assert all(p.lr_mult == 0 and p.decay_mult == 0 for p in net.layer[0].param)
    assert net.layer[1].param[0].lr_mult == 1          # only three-spec layers are touched


@pytest.mark.parametrize('enum,name', [('SGD', 'SGD'), ('NESTEROV', 'Nesterov'), ('ADAGRAD', 'AdaGrad'),
                                       ('RMSPROP', 'RMSProp'), ('ADADELTA', 'AdaDelta'), ('ADAM', 'Adam')])
def test_solver_type_upgrade(enum, name):
    s = protoio.parse_text('base_lr: 0.1 solver_type: %s' % enum, pb.SolverParameter())
    assert upgrade.solver_needs_type_upgrade(s)
    upgrade.upgrade_solver(s)
    assert s.type == name and not s.HasField('solver_type')


def test_solver_with_both_type_fields_is_refused():
    s = protoio.parse_text('solver_type: ADAM type: "Adam"', pb.SolverParameter())
    with pytest.raises(MinicaffeError, match='cannot both be given'):
        upgrade.upgrade_solver(s, 'x_solver.prototxt')
