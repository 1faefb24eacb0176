"""Sweeps over every registered layer type (issue 11, section 1): zero-size
bottoms and in-place use end either in correct results or in a MinicaffeError
naming the layer -- never another exception.  The configurations are in
tests/layer_cases.py."""
import contextlib
import warnings

import numpy as np
import pytest

import minicaffe as caffe
from minicaffe import protoio
from minicaffe.errors import MinicaffeError, NetDefinitionError
from minicaffe.layers.base import layer_class, layer_type_list
from minicaffe.protoio import pb

import layer_cases as LC
from gpu_support import gpu_mode


@pytest.fixture(params=['cpu', 'gpu'])
def run_mode(request):
    """Each sweep runs on the CPU and in GPU mode (the fake_cupy stand-in in CI)."""
    return gpu_mode if request.param == 'gpu' else contextlib.nullcontext


def test_the_cases_cover_every_registered_layer_type():
    assert sorted(LC.CASES) == layer_type_list()


# ---------------------------------------------------------------- zero-size bottoms
def zero_variants():
    """(type, variant, shapes): the batch axis of every bottom 0, then each other
    axis of bottom 0 alone 0."""
    out = []
    for t in sorted(LC.CASES):
        shapes = [s for s, _ in LC.CASES[t].bottoms]
        if not shapes:
            out.append((t, 'no bottoms', None))
            continue
        out.append((t, 'N=0', [(0,) + tuple(s[1:]) for s in shapes]))
        for ax in range(1, len(shapes[0])):
            s0 = list(shapes[0])
            s0[ax] = 0
            out.append((t, 'axis %d = 0' % ax, [tuple(s0)] + shapes[1:]))
    return out


# Zero-size inputs these must compute with (Caffe's Blob allows count 0 and these
# layers have nothing to refuse): an empty top, or for a loss Caffe's own value.
MUST_RUN = {
    ('EuclideanLoss', 'N=0'), ('ContrastiveLoss', 'N=0'), ('BatchNorm', 'N=0'),
    ('BatchNorm', 'axis 1 = 0'), ('MVN', 'N=0'), ('MVN', 'axis 1 = 0'), ('ArgMax', 'N=0'),
    ('Softmax', 'N=0'), ('Softmax', 'axis 1 = 0'), ('LRN', 'N=0'), ('LRN', 'axis 1 = 0'),
    ('Convolution', 'N=0'), ('Deconvolution', 'N=0'), ('InnerProduct', 'N=0'),
    ('InnerProduct', 'axis 1 = 0'), ('Pooling', 'N=0'), ('Concat', 'N=0'), ('Slice', 'N=0'),
    ('Tile', 'N=0'), ('Embed', 'N=0'), ('LSTM', 'N=0'), ('RNN', 'N=0'), ('ReLU', 'N=0'),
    ('Scale', 'N=0'), ('Bias', 'N=0'), ('SoftmaxWithLoss', 'N=0'), ('Reshape', 'N=0'),
    ('Flatten', 'N=0'), ('Split', 'N=0'), ('Eltwise', 'N=0'), ('Crop', 'N=0'),
}


def test_must_run_names_real_variants():
    assert MUST_RUN <= {(t, v) for t, v, _ in zero_variants()}


@pytest.mark.parametrize('type_name, variant, shapes', zero_variants(),
                         ids=['%s-%s' % (t, v) for t, v, _ in zero_variants()])
def test_zero_size_bottom_runs_or_is_refused_naming_the_layer(tmp_path, run_mode, type_name, variant,
                                                              shapes):
    if shapes is None:
        pytest.skip('%s reads no bottoms (its zero-size tops are covered by test_zero_size_tops)'
                    % type_name)
    with warnings.catch_warnings(), run_mode():
        warnings.simplefilter('ignore')
        try:
            net = LC.make_net(type_name, shapes, tmp=tmp_path)
            net.forward()
            net.backward()
        except MinicaffeError as e:
            assert (type_name, variant) not in MUST_RUN, str(e)
            assert 'layer "l" (%s)' % type_name in str(e)
            return
    for name, blob in net.blobs.items():
        assert blob.data.shape == blob.diff.shape, name


def test_empty_batch_losses_are_caffes_values():
    # Caffe divides by the batch size: 0 / 0 is NaN, and backward writes nothing
    net = LC.make_net('EuclideanLoss', [(0, 4), (0, 4)])
    out = net.forward()
    assert np.isnan(out['t0'])
    net.backward()
    assert net.blobs['b0'].diff.shape == (0, 4)
    # normalized losses divide by max(1, count), as Caffe's get_normalizer
    net = LC.make_net('SoftmaxWithLoss', [(0, 5), (0,)])
    assert net.forward()['t0'] == 0


@pytest.mark.parametrize('type_name, param', [
    ('Input', 'input_param { shape { dim: 0 dim: 3 } }'),
    ('DummyData', 'dummy_data_param { shape { dim: 0 dim: 3 } }'),
    ('Parameter', 'parameter_param { shape { dim: 0 dim: 3 } }'),
])
def test_zero_size_tops(type_name, param):
    text = 'force_backward: true\n' + LC.layer_text(type_name, [], ['y'], param)
    text += '\n' + LC.layer_text('ReLU', ['y'], ['z'], '', name='relu')
    net = caffe.Net(net_param=protoio.parse_text(text, pb.NetParameter()), phase=caffe.TRAIN)
    net.forward()
    net.backward()
    assert net.blobs['z'].shape == (0, 3)


@pytest.mark.parametrize('type_name', ['MemoryData', 'Data', 'ImageData', 'WindowData', 'HDF5Data'])
def test_zero_batch_data_layers_are_refused_naming_the_layer(type_name):
    case = LC.CASES[type_name]
    param = case.param.replace('batch_size: 2', 'batch_size: 0')
    text = LC.layer_text(type_name, [], ['t%d' % i for i in range(case.n_top)], param)
    with pytest.raises(MinicaffeError, match='layer "l" \\(%s\\)' % type_name):
        caffe.Net(net_param=protoio.parse_text(text, pb.NetParameter()), phase=caffe.TRAIN)


# ---------------------------------------------------------------- in-place use
IN_PLACE_TYPES = sorted(t for t, c in LC.CASES.items() if c.bottoms and c.n_top)

# In place, Caffe computes these neuron layers' gradients from the top data (the
# bottom data is overwritten), and so do we (minicaffe/layers/neuron.py): the
# forward is the same as out of place, the gradient is Caffe's in-place one.
CAFFE_IN_PLACE_GRADIENT = {'BNLL', 'Clip', 'Log', 'Power'}


def _pair(type_name, tmp_path):
    caffe.set_random_seed(1)
    a = LC.make_net(type_name, tmp=tmp_path)
    caffe.set_random_seed(1)
    b = LC.make_net(type_name, in_place=True, tmp=tmp_path)
    for x, y in zip(a.layers[1].blobs, b.layers[1].blobs):
        y.data[...] = x.data
    return a, b


def test_layers_without_bottoms_or_tops_have_nothing_to_run_in_place():
    for t, c in LC.CASES.items():
        if t not in IN_PLACE_TYPES:
            assert not c.bottoms or not c.n_top


@pytest.mark.parametrize('type_name', IN_PLACE_TYPES)
def test_in_place_is_correct_or_refused_at_construction(tmp_path, run_mode, type_name):
    with run_mode():
        _check_in_place(tmp_path, type_name)


def _check_in_place(tmp_path, type_name):
    case = LC.CASES[type_name]
    cls = layer_class(type_name)
    lp = protoio.parse_text(LC.layer_text(type_name, [], [], case.param), pb.NetParameter()).layer[0]
    if not cls.allows_in_place(lp):
        with pytest.raises(NetDefinitionError, match=r'layer "l" \(%s\): this layer type does not support'
                                                     r' in-place computation \(top 0 "b0"' % type_name):
            LC.make_net(type_name, in_place=True, tmp=tmp_path)
        return
    if type_name == 'Python':
        pytest.skip('a Python layer runs in place if its own code allows it, as in Caffe')
    a, b = _pair(type_name, tmp_path)
    tops = ['t%d' % i for i in range(case.n_top)]
    in_place_tops = ['b0'] + tops[1:]
    caffe.set_random_seed(3)
    a.forward()
    caffe.set_random_seed(3)
    b.forward()
    for x, y in zip(tops, in_place_tops):
        np.testing.assert_allclose(b.blobs[y].data, a.blobs[x].data, rtol=1e-5, atol=1e-6)
    if type_name in CAFFE_IN_PLACE_GRADIENT:
        return
    rng = np.random.default_rng(5)
    for x, y in zip(tops, in_place_tops):
        d = rng.standard_normal(a.blobs[x].shape).astype(np.float32)
        a.blobs[x].diff[...] = d
        b.blobs[y].diff[...] = d
    try:
        a.backward()
    except MinicaffeError:            # a forward-only layer (Threshold): nothing more to compare
        with pytest.raises(MinicaffeError):
            b.backward()
        return
    b.backward()
    for i in range(len(case.bottoms)):
        np.testing.assert_allclose(b.blobs['b%d' % i].diff, a.blobs['b%d' % i].diff, rtol=1e-4, atol=1e-5)
    for x, y in zip(a.layers[1].blobs, b.layers[1].blobs):
        np.testing.assert_allclose(y.diff, x.diff, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('text', [
    'layer { name: "t" type: "Tile" bottom: "x" top: "x" tile_param { tiles: 2 } }',
    'layer { name: "c" type: "Convolution" bottom: "x" top: "x" convolution_param {'
    ' num_output: 4 group: 2 kernel_size: 1 } }',
    'layer { name: "ip" type: "InnerProduct" bottom: "x" top: "x" inner_product_param { num_output: 4 } }',
    'layer { name: "i" type: "Im2col" bottom: "x" top: "x" convolution_param { kernel_size: 1 } }',
    'layer { name: "cat" type: "Concat" bottom: "x" bottom: "x2" top: "x" }',
    'layer { name: "e" type: "Eltwise" bottom: "x" bottom: "x2" top: "x"'
    ' eltwise_param { operation: PROD } }',
])
def test_issue_reproducers_in_place(tmp_path, text):
    path = tmp_path / 'net.prototxt'
    path.write_text('layer { name: "in" type: "Input" top: "x" top: "x2" input_param {'
                    ' shape { dim: 2 dim: 4 dim: 1 dim: 1 } shape { dim: 2 dim: 4 dim: 1 dim: 1 } } }\n'
                    + text + '\n')
    with pytest.raises(NetDefinitionError, match=r'net\.prototxt:2: layer "\w+" .*does not support in-place'):
        caffe.Net(str(path), caffe.TEST)
