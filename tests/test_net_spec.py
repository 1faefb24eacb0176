"""minicaffe.net_spec: Caffe's NetSpec rules and the prototxt its examples produce."""
import pytest
from google.protobuf import text_format

import minicaffe as caffe
from minicaffe.net_spec import NetSpec, layers as L, params as P
from minicaffe.protoio import pb

# examples/mnist/lenet_auto_train.prototxt, written by Caffe's own net_spec
# (examples/01-learning-lenet); the float is as old protobuf printed it.
LENET_AUTO_TRAIN = '''layer {
  name: "data"
  type: "Data"
  top: "data"
  top: "label"
  transform_param {
    scale: 0.00392156862745
  }
  data_param {
    source: "examples/mnist/mnist_train_lmdb"
    batch_size: 64
    backend: LMDB
  }
}
layer {
  name: "conv1"
  type: "Convolution"
  bottom: "data"
  top: "conv1"
  convolution_param {
    num_output: 20
    kernel_size: 5
    weight_filler {
      type: "xavier"
    }
  }
}
layer {
  name: "pool1"
  type: "Pooling"
  bottom: "conv1"
  top: "pool1"
  pooling_param {
    pool: MAX
    kernel_size: 2
    stride: 2
  }
}
layer {
  name: "conv2"
  type: "Convolution"
  bottom: "pool1"
  top: "conv2"
  convolution_param {
    num_output: 50
    kernel_size: 5
    weight_filler {
      type: "xavier"
    }
  }
}
layer {
  name: "pool2"
  type: "Pooling"
  bottom: "conv2"
  top: "pool2"
  pooling_param {
    pool: MAX
    kernel_size: 2
    stride: 2
  }
}
layer {
  name: "ip1"
  type: "InnerProduct"
  bottom: "pool2"
  top: "ip1"
  inner_product_param {
    num_output: 500
    weight_filler {
      type: "xavier"
    }
  }
}
layer {
  name: "relu1"
  type: "ReLU"
  bottom: "ip1"
  top: "ip1"
}
layer {
  name: "ip2"
  type: "InnerProduct"
  bottom: "ip1"
  top: "ip2"
  inner_product_param {
    num_output: 10
    weight_filler {
      type: "xavier"
    }
  }
}
layer {
  name: "loss"
  type: "SoftmaxWithLoss"
  bottom: "ip2"
  bottom: "label"
  top: "loss"
}
'''


def lenet_example(lmdb, batch_size):
    # examples/01-learning-lenet.ipynb, verbatim apart from the import
    n = NetSpec()
    n.data, n.label = L.Data(batch_size=batch_size, backend=P.Data.LMDB, source=lmdb,
                             transform_param=dict(scale=1. / 255), ntop=2)
    n.conv1 = L.Convolution(n.data, kernel_size=5, num_output=20, weight_filler=dict(type='xavier'))
    n.pool1 = L.Pooling(n.conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.conv2 = L.Convolution(n.pool1, kernel_size=5, num_output=50, weight_filler=dict(type='xavier'))
    n.pool2 = L.Pooling(n.conv2, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.ip1 = L.InnerProduct(n.pool2, num_output=500, weight_filler=dict(type='xavier'))
    n.relu1 = L.ReLU(n.ip1, in_place=True)
    n.ip2 = L.InnerProduct(n.relu1, num_output=10, weight_filler=dict(type='xavier'))
    n.loss = L.SoftmaxWithLoss(n.ip2, n.label)
    return n.to_proto()


def test_lenet_example_gives_caffes_prototxt():
    ours = lenet_example('examples/mnist/mnist_train_lmdb', 64)
    ref = text_format.Parse(LENET_AUTO_TRAIN, pb.NetParameter())
    assert ours == ref
    # Same text too, except that protobuf now prints floats in their shortest float32 form.
    text = str(ours)
    assert text.replace('0.00392156886', '0.00392156862745') == LENET_AUTO_TRAIN


def lenet(batch_size):
    # python/caffe/test/test_net_spec.py
    n = NetSpec()
    n.data, n.label = L.DummyData(shape=[dict(dim=[batch_size, 1, 28, 28]), dict(dim=[batch_size, 1, 1, 1])],
                                  transform_param=dict(scale=1. / 255), ntop=2)
    n.conv1 = L.Convolution(n.data, kernel_size=5, num_output=20, weight_filler=dict(type='xavier'))
    n.pool1 = L.Pooling(n.conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.ip1 = L.InnerProduct(n.pool1, num_output=500, weight_filler=dict(type='xavier'))
    n.relu1 = L.ReLU(n.ip1, in_place=True)
    n.ip2 = L.InnerProduct(n.relu1, num_output=10, weight_filler=dict(type='xavier'))
    n.loss = L.SoftmaxWithLoss(n.ip2, n.label)
    return n.to_proto()


def anon_lenet(batch_size):
    data, label = L.DummyData(shape=[dict(dim=[batch_size, 1, 28, 28]), dict(dim=[batch_size, 1, 1, 1])],
                              transform_param=dict(scale=1. / 255), ntop=2)
    conv1 = L.Convolution(data, kernel_size=5, num_output=20, weight_filler=dict(type='xavier'))
    pool1 = L.Pooling(conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    ip1 = L.InnerProduct(pool1, num_output=500, weight_filler=dict(type='xavier'))
    relu1 = L.ReLU(ip1, in_place=True)
    ip2 = L.InnerProduct(relu1, num_output=10, weight_filler=dict(type='xavier'))
    loss = L.SoftmaxWithLoss(ip2, label)
    return loss.to_proto()


def test_named_and_anonymous_lenet():
    p = lenet(50)
    assert p.layer[4].bottom == p.layer[4].top == ['ip1']          # in place
    assert [l.name for l in p.layer] == ['data', 'conv1', 'pool1', 'ip1', 'relu1', 'ip2', 'loss']
    assert list(p.layer[0].dummy_data_param.shape[0].dim) == [50, 1, 28, 28]
    assert abs(p.layer[0].transform_param.scale - 1 / 255.) < 1e-9
    a = anon_lenet(50)
    assert [l.name for l in a.layer] == ['DummyData1', 'Convolution1', 'Pooling1', 'InnerProduct1',
                                         'ReLU1', 'InnerProduct2', 'SoftmaxWithLoss1']
    assert list(a.layer[0].top) == ['DummyData1', 'DummyData2']
    assert list(a.layer[4].top) == ['InnerProduct1']
    assert list(a.layer[6].bottom) == ['InnerProduct2', 'DummyData2']


def test_zero_top_layers_and_type_error():
    n = NetSpec()
    n.data, n.data2 = L.DummyData(shape=dict(dim=3), ntop=2)
    n.silence_data = L.Silence(n.data, ntop=0)
    n.silence_data2 = L.Silence(n.data2, ntop=0)
    p = n.to_proto()
    assert [l.name for l in p.layer] == ['data', 'silence_data', 'silence_data2']
    assert len(p.layer[1].top) == 0
    data = L.DummyData(ntop=2)
    with pytest.raises(TypeError, match=r"^Silence input 0 is not a Top \(type is <class 'tuple'>\)$"):
        L.Silence(data, ntop=0)
    L.Silence(*data, ntop=0)


def test_param_routing():
    n = NetSpec()
    n.x = L.Input(shape=dict(dim=[2, 3]))
    n.fc = L.InnerProduct(n.x, num_output=4, param=[dict(lr_mult=1, name='w'), dict(lr_mult=2)],
                          include=dict(phase=caffe.TRAIN), loss_weight=0.5, propagate_down=[True])
    n.lstm = L.LSTM(n.fc, n.x, recurrent_param=dict(num_output=7, weight_filler=dict(type='uniform')))
    n.loss = L.SoftmaxWithLoss(n.fc, n.x, loss_param=dict(ignore_label=-1, normalize=False))
    n.py = L.Python(n.fc, module='m', layer='Cls', param_str='{"a": 1}')
    p = n.to_proto()
    x, fc, lstm, loss, py = p.layer
    assert list(x.input_param.shape[0].dim) == [2, 3]
    assert fc.inner_product_param.num_output == 4
    assert [(s.lr_mult, s.name) for s in fc.param] == [(1, 'w'), (2, '')]
    assert fc.include[0].phase == caffe.TRAIN and list(fc.loss_weight) == [0.5]
    assert list(fc.propagate_down) == [True]
    assert lstm.recurrent_param.num_output == 7 and lstm.recurrent_param.weight_filler.type == 'uniform'
    assert loss.loss_param.ignore_label == -1 and not loss.loss_param.normalize
    assert py.python_param.module == 'm' and py.python_param.param_str == '{"a": 1}'
    assert P.Pooling.AVE == pb.PoolingParameter.AVE and P.Data.LMDB == pb.DataParameter.LMDB


def test_netspec_item_access_and_shared_tops():
    n = NetSpec()
    n['data'] = L.Input(shape=dict(dim=[1, 2]))
    n.a = L.ReLU(n['data'])
    n.b = L.Sigmoid(n.data)
    assert n.keys() == ['data', 'a', 'b'] and len(n.vals()) == 3
    p = n.to_proto()
    assert [l.name for l in p.layer] == ['data', 'a', 'b']
    assert p.layer[1].bottom == p.layer[2].bottom == ['data']
    del n['b']
    assert len(n.to_proto().layer) == 2
    with pytest.raises(AttributeError):
        n.missing


def test_generated_net_builds(tmp_path):
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[2, 3, 4]))
    n.flat = L.Flatten(n.data)
    n.relu = L.ReLU(n.flat, in_place=True)
    path = tmp_path / 'g.prototxt'
    path.write_text(str(n.to_proto()))
    net = caffe.Net(str(path), caffe.TEST)
    assert net.blobs['flat'].shape == (2, 12)
    assert list(net.layer_dict) == ['data', 'flat', 'relu']


def test_pycaffe_module_level_names():
    # pycaffe scripts: `from caffe import layers as L, params as P`, caffe.NetSpec,
    # caffe.io, caffe.draw, caffe.net_spec, caffe.Classifier, caffe.Detector, caffe.to_proto
    from minicaffe import layers as L2, params as P2
    import minicaffe.layers.base as base          # the layer package stays reachable
    n = caffe.NetSpec()
    n.data = L2.Input(shape=dict(dim=[1, 2, 4, 4]))
    n.pool = L2.Pooling(n.data, pool=P2.Pooling.AVE, kernel_size=2)
    text = str(n.to_proto())
    assert 'type: "Pooling"' in text and 'pool: AVE' in text
    assert 'type: "Pooling"' in str(caffe.to_proto(n.pool))   # auto-named, as Caffe's
    assert caffe.layers.base is base and caffe.layers.layer_class('ReLU') is not None
    assert caffe.net_spec.NetSpec is caffe.NetSpec
    for name in ('io', 'draw', 'Classifier', 'Detector', 'allow_python_layers'):
        assert hasattr(caffe, name), name
    assert hasattr(caffe.io, 'Transformer') and hasattr(caffe.draw, 'draw_net_to_file')
