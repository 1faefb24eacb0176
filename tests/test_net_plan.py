"""The Net's execution plan (net._Step): layers bound to their blobs once, and a
layer whose reshape depends only on shapes (Layer.static_reshape) reshaped again
only when its blobs' arrays changed.  Every change Caffe's reshape-before-every-
forward would see must still be seen: a new input shape, Net.reshape(), a top
reshaped from outside, share_data on a Flatten bottom, share_with, hooks added
after the first forward, debug_info turned on later -- and layers that are not
static are reshaped every time."""
import numpy as np
import pytest

import minicaffe as caffe
from minicaffe.layers.base import layer_type_list, layer_class

NET = '''
name: "plan"
force_backward: true
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 4 dim: 2 dim: 8 dim: 8 } shape { dim: 4 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 3 kernel_size: 3
                            weight_filler { type: "gaussian" std: 0.3 }
                            bias_filler { type: "gaussian" std: 0.1 } } }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "relu" type: "ReLU" bottom: "pool" top: "pool" }
layer { name: "flat" type: "Flatten" bottom: "pool" top: "flat" }
layer { name: "ip" type: "InnerProduct" bottom: "flat" top: "ip"
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
'''


@pytest.fixture
def net_file(tmp_path):
    path = tmp_path / 'plan.prototxt'
    path.write_text(NET)
    return str(path)


def _net(net_file, seed=5):
    caffe.set_random_seed(seed)
    return caffe.Net(net_file, caffe.TRAIN)


def _fill(net, batch, seed=1):
    r = np.random.default_rng(seed)
    net.blobs['data'].reshape(batch, 2, 8, 8)
    net.blobs['label'].reshape(batch)
    net.blobs['data'].data[...] = r.standard_normal((batch, 2, 8, 8))
    net.blobs['label'].data[...] = r.integers(0, 5, batch)


def _run(net):
    loss = net.forward()['loss'].copy()
    net.clear_param_diffs()
    net.backward()
    return loss, net.blobs['data'].diff.copy(), [p.diff.copy() for ps in net.params.values()
                                                 for p in ps]


def _same(a, b):
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    for x, y in zip(a[2], b[2]):
        assert np.array_equal(x, y)


def test_static_layers_are_not_reshaped_while_nothing_changes(net_file, monkeypatch):
    net = _net(net_file)
    _fill(net, 4)
    net.forward()
    calls = []
    for name, layer in net.layer_dict.items():
        original = layer.reshape
        monkeypatch.setattr(layer, 'reshape',
                            lambda b, t, original=original, name=name: (calls.append(name),
                                                                        original(b, t)))
    net.forward()
    assert calls == []
    net.reshape()                              # Net::Reshape reshapes every layer
    assert calls == list(net.layer_dict)


def test_a_new_input_shape_reshapes_the_layers_after_it(net_file):
    net = _net(net_file)
    _fill(net, 4)
    _run(net)
    _fill(net, 7, seed=2)                       # batch 4 -> 7
    got = _run(net)
    assert net.blobs['ip'].shape == (7, 5) and got[1].shape == (7, 2, 8, 8)
    fresh = _net(net_file)
    _fill(fresh, 7, seed=2)
    _same(got, _run(fresh))
    _fill(net, 4)                               # and back
    again = _run(net)
    fresh = _net(net_file)
    _fill(fresh, 4)
    _same(again, _run(fresh))


def test_a_top_reshaped_from_outside_is_reshaped_back(net_file):
    net = _net(net_file)
    _fill(net, 4)
    want = _run(net)
    net.blobs['conv'].reshape(1, 1, 1, 1)
    net.blobs['flat'].reshape(3)
    _same(_run(net), want)
    assert net.blobs['conv'].shape == (4, 3, 6, 6) and net.blobs['flat'].shape == (4, 27)


def test_a_flatten_bottom_given_other_memory_is_seen(net_file):
    # Flatten's top is a view of its bottom, made by reshape: after the bottom
    # takes another blob's memory (same shape) the view must follow it.
    net = _net(net_file)
    _fill(net, 4)
    _run(net)
    other = caffe.Blob(net.blobs['pool'].shape)
    net.blobs['pool'].share_data(other)
    net.forward()
    assert np.shares_memory(net.blobs['flat'].data, other.data)
    assert np.array_equal(net.blobs['flat'].data.ravel(), net.blobs['pool'].data.ravel())


def test_share_with_takes_effect_after_the_first_forward(net_file):
    net = _net(net_file, seed=5)
    _fill(net, 4)
    _run(net)
    source = _net(net_file, seed=9)
    _fill(source, 4)
    want = _run(source)
    net.share_with(source)
    got = _run(net)
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])


def test_hooks_and_debug_info_added_after_the_first_forward(net_file, caplog):
    net = _net(net_file)
    _fill(net, 4)
    _run(net)
    seen = []
    net.before_forward(lambda i: seen.append(('bf', i)))
    net.after_forward(lambda i: seen.append(('af', i)))
    net.before_backward(lambda i: seen.append(('bb', i)))
    net.after_backward(lambda i: seen.append(('ab', i)))
    _run(net)
    n = len(net.layers)
    assert [s for s in seen if s[0] == 'af'] == [('af', i) for i in range(n)]
    assert [s for s in seen if s[0] == 'ab'] == [('ab', i) for i in reversed(range(n))]
    net.debug_info = True
    with caplog.at_level('INFO', logger='minicaffe'):
        net.forward()
    assert '[Forward] Layer ip, top blob ip data' in caplog.text


def test_forward_start_end_and_a_zero_batch(net_file):
    net = _net(net_file)
    _fill(net, 4)
    full = net.forward()['loss'].copy()
    net.blobs['conv'].data[...] = 0
    part = net.forward(start='pool')['loss']          # conv keeps its (zeroed) top
    assert part != full
    _fill(net, 0)                                    # nothing to compute, then back
    net.forward(end='ip')
    assert net.blobs['ip'].shape == (0, 5)
    _fill(net, 4)
    assert net.forward()['loss'] == full


def test_layers_that_are_not_static_reshape_before_every_forward(net_file, tmp_path):
    from minicaffe.layers import python_layer
    python_layer.allow_python_layers(True)
    try:
        _grow_three_times(tmp_path)
    finally:
        python_layer._allowed['flag'] = None


def _grow_three_times(tmp_path):
    path = tmp_path / 'dummy.prototxt'
    path.write_text('''
layer { name: "d" type: "DummyData" top: "x"
        dummy_data_param { shape { dim: 2 dim: 3 } data_filler { type: "constant" value: 1 } } }
layer { name: "p" type: "Python" bottom: "x" top: "y"
        python_param { module: "test_net_plan" layer: "GrowLayer" } }
''')
    net = caffe.Net(str(path), caffe.TEST)
    for n in (1, 2, 3):
        net.forward()
        assert net.blobs['y'].shape == (n + 1,)      # its reshape ran every time


class GrowLayer(caffe.Layer):
    """A Python layer whose top grows at every reshape (not a function of shapes)."""

    def setup(self, bottom, top):
        self.n = 0

    def reshape(self, bottom, top):
        self.n += 1
        top[0].reshape(self.n)

    def forward(self, bottom, top):
        top[0].data[...] = self.n

    def backward(self, top, propagate_down, bottom):
        pass


def test_only_known_shape_only_types_skip_reshape():
    """static_reshape is opt-in: a new layer type reshapes every forward until
    someone checks that its reshape reads nothing but shapes."""
    static = {t for t in layer_type_list() if layer_class(t).static_reshape}
    assert static <= {'Input', 'Split', 'InnerProduct', 'Softmax', 'Convolution',
                      'Deconvolution', 'Pooling', 'LRN', 'Flatten', 'Concat',
                      'SoftmaxWithLoss', 'EuclideanLoss', 'SigmoidCrossEntropyLoss',
                      'HingeLoss', 'ContrastiveLoss', 'MultinomialLogisticLoss',
                      'InfogainLoss', 'ReLU', 'PReLU', 'ELU', 'Sigmoid', 'TanH', 'AbsVal',
                      'BNLL', 'Power', 'Exp', 'Log', 'Threshold', 'Clip', 'Swish', 'Dropout'}
    assert not {'Python', 'DummyData', 'Data', 'HDF5Data', 'MemoryData', 'LSTM', 'RNN',
                'Reshape', 'Accuracy'} & static
