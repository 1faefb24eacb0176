"""The "Python" layer: opt-in import of a user module, pycaffe's class contract
(setup/reshape/forward/backward, param_str, phase, learnable blobs) and errors."""
import textwrap

import numpy as np
import pytest

import minicaffe as caffe
from minicaffe import protoio
from minicaffe.errors import NetDefinitionError
from minicaffe.layers import python_layer
from minicaffe.protoio import pb

USER_MODULE = '''
import json
import numpy as np
import minicaffe as caffe


class Scale(caffe.Layer):
    """y = s * x + b (b a learnable scalar); s from param_str."""

    def setup(self, bottom, top):
        if len(bottom) != 1:
            raise Exception('Scale takes one bottom')
        self.s = json.loads(self.param_str)['s']
        self.setup_calls = getattr(self, 'setup_calls', 0) + 1
        self.seen_phase = self.phase
        if len(self.blobs) == 0:
            self.blobs.add_blob(1)
            self.blobs[0].data[...] = 0.5

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = self.s * bottom[0].data + self.blobs[0].data[0]

    def backward(self, top, propagate_down, bottom):
        self.blobs[0].diff[0] += top[0].diff.sum()
        if propagate_down[0]:
            bottom[0].diff[...] = self.s * top[0].diff


class EuclideanLoss(caffe.Layer):
    """pycaffe's example loss layer (examples/pycaffe/layers/pyloss.py)."""

    def setup(self, bottom, top):
        if len(bottom) != 2:
            raise Exception('Need two inputs to compute distance.')

    def reshape(self, bottom, top):
        self.diff = np.zeros_like(bottom[0].data, dtype=np.float32)
        top[0].reshape(1)

    def forward(self, bottom, top):
        self.diff[...] = bottom[0].data - bottom[1].data
        top[0].data[...] = np.sum(self.diff ** 2) / bottom[0].num / 2.

    def backward(self, top, propagate_down, bottom):
        for i in range(2):
            if not propagate_down[i]:
                continue
            sign = 1 if i == 0 else -1
            bottom[i].diff[...] = sign * self.diff / bottom[i].num


class NotALayer(object):
    pass
'''

_counter = [0]


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A fresh importable module holding the user layers; returns its name."""
    _counter[0] += 1
    name = 'mc_user_layers_%d' % _counter[0]
    (tmp_path / (name + '.py')).write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


@pytest.fixture
def allowed(monkeypatch):
    monkeypatch.delenv(python_layer.ENV_VAR, raising=False)
    python_layer.allow_python_layers(True)
    yield
    python_layer._allowed['flag'] = None


def scale_net(module, phase=caffe.TRAIN, param_str='{\\"s\\": 3}', layer='Scale'):
    text = ('force_backward: true '
            'layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }'
            'layer { name: "py" type: "Python" bottom: "x" top: "y"'
            ' python_param { module: "%s" layer: "%s" param_str: "%s" } }' % (module, layer, param_str))
    return caffe.Net(net_param=protoio.parse_text(text, pb.NetParameter()), phase=phase)


def test_refused_unless_allowed(user_module, monkeypatch):
    monkeypatch.delenv(python_layer.ENV_VAR, raising=False)
    python_layer._allowed['flag'] = None
    with pytest.raises(NetDefinitionError) as e:
        scale_net(user_module)
    msg = str(e.value)
    assert 'layer "py"' in msg and user_module in msg
    assert 'MINICAFFE_ALLOW_PYTHON_LAYERS=1' in msg and 'allow_python_layers(True)' in msg


def test_allowed_by_environment_variable(user_module, monkeypatch):
    python_layer._allowed['flag'] = None
    monkeypatch.setenv(python_layer.ENV_VAR, '1')
    net = scale_net(user_module)
    assert type(net.layers[1]).__name__ == 'Scale'
    python_layer.allow_python_layers(False)        # the explicit call wins over the environment
    try:
        with pytest.raises(NetDefinitionError, match='not allowed'):
            scale_net(user_module)
    finally:
        python_layer._allowed['flag'] = None


def test_user_layer_forward_backward_and_blobs(user_module, allowed):
    net = scale_net(user_module, phase=caffe.TEST)
    layer = net.layers[1]
    assert layer.setup_calls == 1 and layer.seen_phase == caffe.TEST == layer.phase
    assert layer.param_str == '{"s": 3}' and layer.type == 'Python'
    assert list(net.params) == ['py'] and net.params['py'][0].shape == (1,)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    out = net.forward(x=x)
    np.testing.assert_allclose(out['y'], 3 * x + 0.5)
    net.blobs['y'].diff[...] = 1
    net.backward()
    np.testing.assert_allclose(net.blobs['x'].diff, 3 * np.ones((2, 3)))
    assert net.params['py'][0].diff[0] == 6


def test_user_loss_layer_with_loss_weight(user_module, allowed):
    text = ('force_backward: true '
            'layer { name: "in" type: "Input" top: "a" top: "b" input_param { shape { dim: 4 dim: 2 } } }'
            'layer { name: "loss" type: "Python" bottom: "a" bottom: "b" top: "loss" loss_weight: 1'
            ' python_param { module: "%s" layer: "EuclideanLoss" } }' % user_module)
    net = caffe.Net(net_param=protoio.parse_text(text, pb.NetParameter()), phase=caffe.TRAIN)
    a = np.arange(8, dtype=np.float32).reshape(4, 2)
    b = np.ones((4, 2), np.float32)
    out = net.forward(a=a, b=b)
    assert out['loss'] == pytest.approx(np.sum((a - b) ** 2) / 4 / 2)
    net.backward()
    np.testing.assert_allclose(net.blobs['a'].diff, (a - b) / 4)


def test_user_setup_error_names_the_layer(user_module, allowed):
    text = ('layer { name: "in" type: "Input" top: "a" input_param { shape { dim: 4 } } }'
            'layer { name: "loss" type: "Python" bottom: "a" top: "l"'
            ' python_param { module: "%s" layer: "EuclideanLoss" } }' % user_module)
    with pytest.raises(Exception, match='Need two inputs'):
        caffe.Net(net_param=protoio.parse_text(text, pb.NetParameter()), phase=caffe.TRAIN)


@pytest.mark.parametrize('module,layer,msg', [
    ('mc_no_such_module_xyz', 'Scale', 'cannot import Python layer module "mc_no_such_module_xyz"'),
    (None, 'Missing', 'has no class "Missing"'),
    (None, 'NotALayer', 'must be a class deriving minicaffe.Layer'),
    ('', 'Scale', 'needs both module and layer'),
])
def test_bad_python_param(user_module, allowed, module, layer, msg):
    with pytest.raises(NetDefinitionError, match=msg) as e:
        scale_net(user_module if module is None else module, layer=layer)
    assert 'layer "py"' in str(e.value)


def test_module_import_failure_is_reported(tmp_path, monkeypatch, allowed):
    (tmp_path / 'mc_broken_layer_mod.py').write_text('raise RuntimeError("boom at import")\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(NetDefinitionError, match='importing Python layer module.*boom at import'):
        scale_net('mc_broken_layer_mod')
