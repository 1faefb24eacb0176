"""An empty batch (N = 0) runs through every layer that Caffe runs it through:
forward and backward do nothing, the tops have 0 items, and no reshape of an
empty array fails (numpy cannot infer a -1 axis of an empty array: the class of
bug these tests guard).  BatchNorm's batch statistics are 0 then (see
normalization.py)."""
import numpy as np
import pytest

import minicaffe as caffe
from minicaffe import winograd
from minicaffe.gradcheck import make_layer

CONV = 'convolution_param { num_output: %d kernel_size: %d stride: %d pad: %d %s}'
LAYERS = [  # type, parameters, bottom shapes (bottom 0 is the one backpropagated)
    ('Convolution', CONV % (3, 3, 1, 0, ''), [(0, 3, 8, 8)]),
    ('Convolution', CONV % (3, 1, 1, 0, ''), [(0, 3, 8, 8)]),
    ('Convolution', CONV % (64, 3, 1, 1, ''), [(0, 64, 8, 8)]),    # Winograd F(4x4,3x3)
    ('Convolution', CONV % (64, 5, 1, 2, ''), [(0, 64, 13, 13)]),      # in 3x3 blocks
    ('Convolution', CONV % (64, 5, 2, 0, ''), [(0, 64, 13, 13)]),      # by its phases
    ('Convolution', CONV % (64, 3, 1, 1, 'engine: CAFFE '), [(0, 64, 8, 8)]),
    ('Deconvolution', CONV % (3, 3, 2, 0, ''), [(0, 3, 8, 8)]),
    ('Im2col', 'convolution_param { kernel_size: 3 }', [(0, 3, 8, 8)]),
    ('InnerProduct', 'inner_product_param { num_output: 3 }', [(0, 3, 8, 8)]),
    ('Pooling', 'pooling_param { pool: MAX kernel_size: 2 stride: 2 }', [(0, 3, 8, 8)]),
    ('Pooling', 'pooling_param { pool: MAX kernel_size: 3 stride: 2 }', [(0, 3, 8, 8)]),
    ('Pooling', 'pooling_param { pool: AVE kernel_size: 3 stride: 2 }', [(0, 3, 8, 8)]),
    ('SPP', 'spp_param { pyramid_height: 2 }', [(0, 3, 8, 8)]),
    ('LRN', 'lrn_param { local_size: 3 }', [(0, 3, 8, 8)]),
    ('LRN', 'lrn_param { local_size: 3 norm_region: WITHIN_CHANNEL }', [(0, 3, 8, 8)]),
    ('BatchNorm', '', [(0, 3, 8, 8)]),
    ('MVN', '', [(0, 3, 8, 8)]),
    ('MVN', 'mvn_param { across_channels: true }', [(0, 3, 8, 8)]),
    ('Scale', 'scale_param { bias_term: true }', [(0, 3, 8, 8)]),
    ('Bias', '', [(0, 3, 8, 8)]),
    ('ReLU', '', [(0, 3, 8, 8)]),
    ('PReLU', '', [(0, 3, 8, 8)]),
    ('Sigmoid', '', [(0, 3, 8, 8)]),
    ('Softmax', '', [(0, 3, 8, 8)]),
    ('Dropout', '', [(0, 3, 8, 8)]),
    ('Concat', '', [(0, 3, 8, 8), (0, 2, 8, 8)]),
    ('Eltwise', '', [(0, 3, 8, 8), (0, 3, 8, 8)]),
    ('Flatten', '', [(0, 3, 8, 8)]),
    ('Crop', 'crop_param { axis: 2 }', [(0, 3, 8, 8), (0, 3, 4, 4)]),
    ('Tile', 'tile_param { axis: 1 tiles: 2 }', [(0, 3, 4, 4)]),
    ('Reduction', 'reduction_param { axis: 1 }', [(0, 3, 4, 4)]),
    ('ArgMax', '', [(0, 3, 4, 4)]),
    ('ArgMax', 'argmax_param { axis: 1 out_max_val: true }', [(0, 3, 4, 4)]),
    ('SoftmaxWithLoss', '', [(0, 3), (0,)]),
    ('EuclideanLoss', '', [(0, 3), (0, 3)]),
    ('SigmoidCrossEntropyLoss', '', [(0, 3), (0, 3)]),
    ('LSTM', 'recurrent_param { num_output: 3 weight_filler { type: "uniform" min: -0.1'
     ' max: 0.1 } }', [(3, 0, 3), (3, 0)]),
]


@pytest.mark.parametrize('phase', ['TRAIN', 'TEST'])
@pytest.mark.parametrize('kind,params,shapes', LAYERS,
                         ids=['%s %s' % (k, p[:40]) for k, p, _ in LAYERS])
def test_an_empty_batch_runs_forward_and_backward(kind, params, shapes, phase, monkeypatch):
    monkeypatch.setattr(winograd, 'FORCE', None)
    bottoms = [np.zeros(s, np.float32) for s in shapes]
    layer, bottom, top = make_layer('type: "%s" %s' % (kind, params), bottoms, phase=phase)
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    for t in top:
        if t.count and kind not in ('SoftmaxWithLoss', 'EuclideanLoss',
                                      'SigmoidCrossEntropyLoss'):
            raise AssertionError('top %s of an empty batch holds values' % (t.shape,))
        t.diff[...] = 1
    before = [b.diff.copy() for b in layer.blobs]
    backprop = kind != 'ArgMax'         # (ArgMax has no backward)
    layer.backward(top, [backprop] + [False] * (len(bottom) - 1), bottom)
    for b, old in zip(layer.blobs, before):
        if kind != 'BatchNorm':      # (no gradient from no items)
            assert np.array_equal(b.diff, old)


def test_batch_norm_counts_an_empty_batch_as_zero_statistics():
    """Caffe's gemv over no rows leaves its zero-filled buffers: mean and variance
    0, so the running sums decay by moving_average_fraction and the scale factor
    counts the batch."""
    layer, bottom, top = make_layer('type: "BatchNorm" batch_norm_param {'
                                    ' moving_average_fraction: 0.5 }',
                                    [np.zeros((0, 3, 4, 4), np.float32)], phase='TRAIN')
    for b, v in zip(layer.blobs, (2.0, 4.0, 1.0)):
        b.data[...] = v
    layer.forward(bottom, top)
    assert np.array_equal(layer.blobs[0].data, np.full(3, 1.0, np.float32))
    assert np.array_equal(layer.blobs[1].data, np.full(3, 2.0, np.float32))
    assert layer.blobs[2].data[0] == np.float32(1.5)


def test_a_net_trains_on_an_empty_batch(tmp_path):
    net_file = tmp_path / 'net.prototxt'
    net_file.write_text('''
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 0 dim: 1 dim: 12 dim: 12 } shape { dim: 0 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 5 weight_filler { type: "xavier" } } }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip" type: "InnerProduct" bottom: "pool" top: "ip"
        inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
''')
    net = caffe.Net(str(net_file), caffe.TRAIN)
    out = net.forward()
    net.backward()
    assert net.blobs['ip'].data.shape == (0, 3)
    assert np.isfinite(out['loss']).all() or np.isnan(out['loss']).all()
