"""Loading and saving weights (Caffe's CopyTrainedLayersFrom, ToProto, ToHDF5):
Caffe-written caffemodels, round trips in both formats, shape/count checks,
legacy and V1 files, shared parameters, corrupt files, a large file."""
import os
import shutil

import h5py
import numpy as np
import pytest

import minicaffe as caffe
from minicaffe import protoio, weights
from minicaffe.errors import WeightsError
from minicaffe.protoio import pb

from conformance import CONFORMANCE

SOLVERS = CONFORMANCE / 'solvers'
CASES = sorted(p.name for p in SOLVERS.iterdir()) if SOLVERS.is_dir() else []


def param_net(layers, phase=caffe.TEST):
    """A net of Parameter layers: {name: shape} or [(name, shape, param_name)]."""
    text = ''
    items = layers.items() if isinstance(layers, dict) else layers
    for item in items:
        name, shape = item[0], item[1]
        spec = ' param { name: "%s" }' % item[2] if len(item) > 2 and item[2] else ''
        text += ('layer { name: "%s" type: "Parameter" top: "%s"%s parameter_param { shape { %s } } }\n'
                 % (name, name + '_top', spec, ' '.join('dim: %d' % d for d in shape)))
    return caffe.Net(net_param=protoio.parse_text(text, pb.NetParameter()), phase=phase)


def randomize(net, seed=0):
    r = np.random.default_rng(seed)
    for blobs in net.params.values():
        for b in blobs:
            b.data[...] = r.standard_normal(b.shape)
            b.diff[...] = r.standard_normal(b.shape)


def params_of(net):
    return {k: [b.data.copy() for b in v] for k, v in net.params.items()}


def assert_same_params(a, b):
    assert list(a) == list(b)
    for k in a:
        assert len(a[k]) == len(b[k])
        for x, y in zip(a[k], b[k]):
            assert x.shape == y.shape
            np.testing.assert_array_equal(x, y)


@pytest.fixture
def case_dir(tmp_path, monkeypatch):
    def make(name):
        d = tmp_path / name
        shutil.copytree(SOLVERS / name, d)
        monkeypatch.chdir(d)         # HDF5Data's data_list.txt is relative to the case folder
        return d
    return make


# ------------------------------------------------------------ Caffe's own caffemodels
@pytest.mark.parametrize('case', CASES)
def test_caffe_init_caffemodel_loads_and_round_trips(case, case_dir):
    d = case_dir(case)
    ref = pb.NetParameter.FromString((d / 'init.caffemodel').read_bytes())
    net = caffe.Net('net.prototxt', caffe.TRAIN, weights='init.caffemodel')
    n_blobs = 0
    for lp in ref.layer:
        for i, bp in enumerate(lp.blobs):
            want = np.asarray(bp.data, np.float32).reshape(tuple(bp.shape.dim))
            np.testing.assert_array_equal(net.params[lp.name][i].data, want)
            n_blobs += 1
    assert n_blobs == sum(len(v) for v in net.params.values()) > 0
    loaded = params_of(net)

    net.save('copy.caffemodel')
    net.save_hdf5('copy.caffemodel.h5')
    for path in ('copy.caffemodel', 'copy.caffemodel.h5'):
        other = caffe.Net('net.prototxt', caffe.TRAIN)
        other.copy_from(path)
        assert_same_params(params_of(other), loaded)
    other = caffe.Net('net.prototxt', caffe.TRAIN)
    other.load_hdf5('copy.caffemodel.h5')
    assert_same_params(params_of(other), loaded)
    # The binary file is exactly Caffe's Net::ToProto of the net.
    assert pb.NetParameter.FromString(open('copy.caffemodel', 'rb').read()) == net.to_proto()


def test_save_writes_layer_definitions_and_shapes(case_dir):
    case_dir('sgd_step')
    net = caffe.Net('net.prototxt', caffe.TRAIN, weights='init.caffemodel')
    net.save('out.caffemodel')
    msg = pb.NetParameter.FromString(open('out.caffemodel', 'rb').read())
    assert msg.name == net.name
    assert [l.name for l in msg.layer] == list(net._layer_names)
    conv = [l for l in msg.layer if l.name == 'conv'][0]
    assert conv.type == 'Convolution' and conv.convolution_param.num_output == 4
    assert [list(b.shape.dim) for b in conv.blobs] == [[4, 1, 3, 3], [4]]
    assert all(len(b.diff) == 0 for b in conv.blobs)


def test_shape_mismatch_names_file_layer_index_and_shapes(case_dir, tmp_path):
    case_dir('sgd_step')
    text = open('net.prototxt').read().replace('num_output: 4', 'num_output: 3')
    open('net3.prototxt', 'w').write(text)
    net = caffe.Net('net3.prototxt', caffe.TRAIN)
    before = params_of(net)
    with pytest.raises(WeightsError) as e:
        net.copy_from('init.caffemodel')
    msg = str(e.value)
    assert 'init.caffemodel' in msg and 'layer "conv"' in msg and 'param 0' in msg
    assert '(4, 1, 3, 3)' in msg and '(3, 1, 3, 3)' in msg
    assert_same_params(params_of(net), before)      # nothing was copied
    # the same through HDF5
    good = caffe.Net('net.prototxt', caffe.TRAIN, weights='init.caffemodel')
    good.save_hdf5('w.h5')
    with pytest.raises(WeightsError, match=r'w\.h5.*layer "conv".*\(4, 1, 3, 3\).*\(3, 1, 3, 3\)'):
        net.copy_from('w.h5')


def test_blob_count_mismatch(tmp_path):
    msg = pb.NetParameter()
    lp = msg.layer.add(name='a', type='Parameter')
    for _ in range(2):
        bp = lp.blobs.add()
        bp.shape.dim.append(2)
        bp.data.extend([1.0, 2.0])
    _write_net_param(tmp_path / 'two.caffemodel', msg)
    with pytest.raises(WeightsError, match=r'two\.caffemodel.*number of blobs.*"a".*file has 2.*has 1'):
        param_net({'a': (2,)}).copy_from(str(tmp_path / 'two.caffemodel'))
    with h5py.File(tmp_path / 'two.h5', 'w') as f:
        f['data/a/0'] = np.zeros(2, np.float32)
        f['data/a/1'] = np.zeros(2, np.float32)
    with pytest.raises(WeightsError, match=r'two\.h5.*number of blobs.*"a"'):
        param_net({'a': (2,)}).copy_from(str(tmp_path / 'two.h5'))


def test_source_layers_missing_from_the_net_are_skipped(tmp_path):
    src = param_net({'a': (2, 3), 'b': (4,)})
    randomize(src)
    src.save(str(tmp_path / 'w.caffemodel'))
    src.save_hdf5(str(tmp_path / 'w.h5'))
    for f in ('w.caffemodel', 'w.h5'):
        dst = param_net({'b': (4,), 'c': (5,)})
        dst.copy_from(str(tmp_path / f))
        np.testing.assert_array_equal(dst.params['b'][0].data, src.params['b'][0].data)
        assert not dst.params['c'][0].data.any()     # not in the file: untouched


def test_write_diff_stores_diffs(tmp_path):
    src = param_net({'a': (2, 3)})
    randomize(src)
    src.save(str(tmp_path / 'd.caffemodel'), write_diff=True)
    msg = pb.NetParameter.FromString((tmp_path / 'd.caffemodel').read_bytes())
    np.testing.assert_array_equal(np.asarray(msg.layer[0].blobs[0].diff).reshape(2, 3),
                                  src.params['a'][0].diff)
    # Caffe's Blob::FromProto copies stored diffs as well
    dst = param_net({'a': (2, 3)})
    dst.copy_from(str(tmp_path / 'd.caffemodel'))
    np.testing.assert_array_equal(dst.params['a'][0].diff, src.params['a'][0].diff)
    src.save_hdf5(str(tmp_path / 'd.h5'), write_diff=True)
    with h5py.File(tmp_path / 'd.h5', 'r') as f:
        np.testing.assert_array_equal(f['diff/a/0'][...], src.params['a'][0].diff)
        np.testing.assert_array_equal(f['data/a/0'][...], src.params['a'][0].data)
    src.save_hdf5(str(tmp_path / 'n.h5'))
    with h5py.File(tmp_path / 'n.h5', 'r') as f:
        assert 'diff' not in f and sorted(f['data']) == ['a']


# ------------------------------------------------------------ legacy encodings
def _write_net_param(path, msg):
    with open(path, 'wb') as f:
        f.write(msg.SerializeToString())


def test_legacy_4d_blob_dims_are_right_aligned(tmp_path):
    vals = np.arange(6, dtype=np.float32)
    msg = pb.NetParameter()
    l = msg.layer.add(name='a', type='Parameter')
    bp = l.blobs.add(num=1, channels=1, height=2, width=3)
    bp.data.extend(vals.tolist())
    _write_net_param(tmp_path / 'legacy.caffemodel', msg)
    net = param_net({'a': (2, 3)})
    net.copy_from(str(tmp_path / 'legacy.caffemodel'))
    np.testing.assert_array_equal(net.params['a'][0].data, vals.reshape(2, 3))
    # 2x1x1x3 is not 1x1x2x3
    bp.Clear()
    bp.num, bp.channels, bp.height, bp.width = 2, 1, 1, 3
    bp.data.extend(vals.tolist())
    _write_net_param(tmp_path / 'legacy2.caffemodel', msg)
    with pytest.raises(WeightsError, match=r'shape mismatch.*\(2, 1, 1, 3\).*\(2, 3\)'):
        net.copy_from(str(tmp_path / 'legacy2.caffemodel'))


def test_modern_shapes_must_match_exactly(tmp_path):
    msg = pb.NetParameter()
    bp = msg.layer.add(name='a').blobs.add()
    bp.shape.dim.extend([1, 2, 3])
    bp.data.extend([0.0] * 6)
    _write_net_param(tmp_path / 'm.caffemodel', msg)
    with pytest.raises(WeightsError, match=r'\(1, 2, 3\).*\(2, 3\)'):
        param_net({'a': (2, 3)}).copy_from(str(tmp_path / 'm.caffemodel'))


def test_v1_layers_and_double_data(tmp_path):
    vals = np.linspace(-1, 1, 6)
    msg = pb.NetParameter()
    v1 = msg.layers.add(name='a', type=pb.V1LayerParameter.INNER_PRODUCT)
    bp = v1.blobs.add()
    bp.shape.dim.extend([2, 3])
    bp.double_data.extend(vals.tolist())
    v0 = msg.layers.add()
    v0.layer.name = 'b'
    v0.layer.type = 'innerproduct'
    b2 = v0.layer.blobs.add(num=1, channels=1, height=1, width=4)
    b2.data.extend([1, 2, 3, 4])
    _write_net_param(tmp_path / 'v1.caffemodel', msg)
    net = param_net({'a': (2, 3), 'b': (4,)})
    net.copy_from(str(tmp_path / 'v1.caffemodel'))
    np.testing.assert_array_equal(net.params['a'][0].data, vals.reshape(2, 3).astype(np.float32))
    np.testing.assert_array_equal(net.params['b'][0].data, [1, 2, 3, 4])


def test_value_count_must_match_shape(tmp_path):
    msg = pb.NetParameter()
    bp = msg.layer.add(name='a').blobs.add()
    bp.shape.dim.extend([2, 3])
    bp.data.extend([1.0] * 5)
    _write_net_param(tmp_path / 'short.caffemodel', msg)
    with pytest.raises(WeightsError, match=r'short\.caffemodel.*param 0 of layer "a".*6 values.*5'):
        param_net({'a': (2, 3)}).copy_from(str(tmp_path / 'short.caffemodel'))


# ------------------------------------------------------------ shared parameters
def test_shared_params_hdf5_saves_owner_only_and_loads(tmp_path):
    layers = [('a', (2, 3), 'w'), ('b', (2, 3), 'w'), ('c', (4,), None)]
    net = param_net(layers)
    assert net.param_owners == [-1, 0, -1]
    randomize(net)
    np.testing.assert_array_equal(net.params['a'][0].data, net.params['b'][0].data)
    net.save_hdf5(str(tmp_path / 's.h5'), write_diff=True)
    with h5py.File(tmp_path / 's.h5', 'r') as f:
        assert sorted(f['data']) == ['a', 'b', 'c']
        assert list(f['data/a']) == ['0'] and list(f['data/b']) == []     # sharer: not saved
        assert list(f['diff/b']) == ['0']                                  # diffs: always
    other = param_net(layers)
    other.copy_from(str(tmp_path / 's.h5'))
    assert_same_params(params_of(other), params_of(net))
    # binary: every layer carries its blobs
    net.save(str(tmp_path / 's.caffemodel'))
    other = param_net(layers)
    other.copy_from(str(tmp_path / 's.caffemodel'))
    assert_same_params(params_of(other), params_of(net))


def test_hdf5_missing_dataset_of_an_owned_param_is_an_error(tmp_path):
    with h5py.File(tmp_path / 'm.h5', 'w') as f:
        f.create_group('data/a')
    with pytest.raises(WeightsError, match=r'm\.h5.*"a".*no /data/a/0'):
        param_net({'a': (2,)}).copy_from(str(tmp_path / 'm.h5'))


# ------------------------------------------------------------ bad files
def test_missing_file(tmp_path):
    with pytest.raises(WeightsError, match='nothere.caffemodel.*does not exist'):
        param_net({'a': (2,)}).copy_from(str(tmp_path / 'nothere.caffemodel'))


@pytest.mark.parametrize('how', ['truncated', 'garbage', 'empty', 'text'])
def test_corrupt_caffemodel_names_the_file(tmp_path, how):
    net = param_net({'a': (50, 40)})
    randomize(net)
    good = tmp_path / 'good.caffemodel'
    net.save(str(good))
    raw = good.read_bytes()
    bad = tmp_path / ('%s.caffemodel' % how)
    if how == 'truncated':
        bad.write_bytes(raw[:len(raw) // 2])
    elif how == 'garbage':
        bad.write_bytes(np.random.default_rng(3).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    elif how == 'empty':
        bad.write_bytes(b'')
    else:
        bad.write_text('name: "net"\nlayer { name: "a" type: "Parameter" }\n')
    before = params_of(net)
    with pytest.raises(WeightsError) as e:
        net.copy_from(str(bad))
    assert str(bad) in str(e.value)
    if how == 'text':
        assert 'text prototxt' in str(e.value)
    assert_same_params(params_of(net), before)


def test_corrupt_hdf5_names_the_file(tmp_path):
    net = param_net({'a': (50, 40)})
    net.save_hdf5(str(tmp_path / 'good.h5'))
    raw = (tmp_path / 'good.h5').read_bytes()
    (tmp_path / 'bad.h5').write_bytes(raw[:len(raw) // 3])
    with pytest.raises(WeightsError, match='bad.h5'):
        net.copy_from(str(tmp_path / 'bad.h5'))
    with h5py.File(tmp_path / 'nodata.h5', 'w') as f:
        f['x'] = np.zeros(3)
    with pytest.raises(WeightsError, match='nodata.h5.*no "data" group'):
        net.copy_from(str(tmp_path / 'nodata.h5'))


def test_saving_is_atomic(tmp_path, monkeypatch):
    net = param_net({'a': (3,)})
    target = tmp_path / 'w.caffemodel'
    target.write_bytes(b'old')

    def boom(*a, **k):
        raise RuntimeError('disk on fire')
        yield b''
    monkeypatch.setattr(weights, '_net_chunks', boom)
    with pytest.raises(RuntimeError):
        net.save(str(target))
    assert target.read_bytes() == b'old'
    assert os.listdir(tmp_path) == ['w.caffemodel']     # no temp file left behind


def test_unwritable_target_is_a_weights_error(tmp_path):
    net = param_net({'a': (3,)})
    with pytest.raises(WeightsError, match='cannot write'):
        net.save(str(tmp_path / 'no' / 'such' / 'dir.caffemodel'))


def test_large_file_loads(tmp_path):
    # 150 MB: well past protobuf's historical 64 MB message limit.
    shape = (6400, 6000)
    net = param_net({'big': shape, 'small': (3,)})
    net.params['big'][0].data[...] = np.arange(shape[0] * shape[1], dtype=np.float32).reshape(shape)
    net.params['small'][0].data[...] = [1, 2, 3]
    path = str(tmp_path / 'big.caffemodel')
    net.save(path)
    assert os.path.getsize(path) > 150e6
    other = param_net({'big': shape, 'small': (3,)})
    other.copy_from(path)
    np.testing.assert_array_equal(other.params['big'][0].data, net.params['big'][0].data)
    np.testing.assert_array_equal(other.params['small'][0].data, [1, 2, 3])


def test_fast_blob_proto_helpers_match_protobuf():
    a = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
    d = -a
    slow = protoio.blob_to_proto(type('B', (), {'data': a, 'diff': d})(), write_diff=True)
    fast = weights.fill_blob_proto(pb.BlobProto(), a, d)
    assert fast == slow
    assert pb.BlobProto.FromString(weights.blob_proto_bytes(a)) == protoio.blob_to_proto(a)


def test_binary_caffemodel_named_h5_loads_as_caffe_would(tmp_path):
    # Caffe picks the format with H5Fis_hdf5, not by the name.
    src = param_net({'a': (2, 3)})
    randomize(src)
    src.save(str(tmp_path / 'odd.h5'))
    dst = param_net({'a': (2, 3)})
    dst.copy_from(str(tmp_path / 'odd.h5'))
    np.testing.assert_array_equal(dst.params['a'][0].data, src.params['a'][0].data)
    (tmp_path / 'junk.h5').write_bytes(b'\x07' * 100)
    with pytest.raises(WeightsError, match='junk.h5 is neither a readable HDF5 file'):
        dst.copy_from(str(tmp_path / 'junk.h5'))


def test_solverstate_given_as_weights_gets_a_hint(tmp_path):
    state = pb.SolverState(iter=4, learned_net='x_iter_4.caffemodel')
    bp = state.history.add()
    bp.shape.dim.append(2)
    bp.data.extend([1.0, 2.0])
    (tmp_path / 'x_iter_4.solverstate').write_bytes(state.SerializeToString())
    with pytest.raises(WeightsError, match=r'x_iter_4\.solverstate.*solver\.restore'):
        param_net({'a': (2,)}).copy_from(str(tmp_path / 'x_iter_4.solverstate'))


@pytest.mark.parametrize('field', [140, 134])
def test_lrcn_fork_renumbered_recurrent_param_loads_with_a_warning(tmp_path, field, caplog):
    # The LRCN forks' caffe.proto put recurrent_param at 140 or 134 (here elu_param /
    # log_param): such a caffemodel loads by layer name and blobs, the rest is ignored.
    text = ('layer { name: "x" type: "Input" top: "x" top: "cont" input_param {'
            ' shape { dim: 2 dim: 1 dim: 3 } shape { dim: 2 dim: 1 } } }\n'
            'layer { name: "lstm" type: "LSTM" bottom: "x" bottom: "cont" top: "h"'
            ' recurrent_param { num_output: 4 } }\n')
    net = caffe.Net(net_param=protoio.parse_text(text, pb.NetParameter()), phase=caffe.TEST)
    layer = pb.LayerParameter(name='lstm', type='LSTM')
    values = []
    for i, b in enumerate(net.params['lstm']):
        v = np.full(b.shape, i + 0.5, np.float32)
        values.append(v)
        bp = layer.blobs.add()
        bp.shape.dim.extend(b.shape)
        bp.data.extend(v.ravel().tolist())
    fork = pb.RecurrentParameter(num_output=4)
    fork.weight_filler.type = 'uniform'
    inner = fork.SerializeToString()
    lb = layer.SerializeToString() + weights._tag(field, 2) + weights._varint(len(inner)) + inner
    path = tmp_path / 'lrcn_fork.caffemodel'
    path.write_bytes(weights._tag(100, 2) + weights._varint(len(lb)) + lb)
    with caplog.at_level('WARNING', logger='minicaffe'):
        net.copy_from(str(path))
    for b, v in zip(net.params['lstm'], values):
        np.testing.assert_array_equal(b.data, v)
    msg = ' '.join(r.getMessage() for r in caplog.records)
    assert 'lrcn_fork.caffemodel' in msg and 'lstm' in msg and '(%d)' % field in msg


def test_a_clean_caffemodel_loads_without_the_fork_warning(tmp_path, caplog):
    net = param_net({'a': (2, 3)})
    randomize(net)
    net.save(str(tmp_path / 'w.caffemodel'))
    with caplog.at_level('WARNING', logger='minicaffe'):
        net.copy_from(str(tmp_path / 'w.caffemodel'))
    assert not [r for r in caplog.records if 'does not know' in r.getMessage()]



def test_skipped_source_layers_make_one_log_line(tmp_path, caplog):
    """Caffe logs "Ignoring source layer X" per layer; once per weights file is enough (a
    deploy net loading training weights skips dozens).  Names that are not text still log."""
    import logging
    src = param_net({'extra1': (2,), 'extra2': (3,), 'b': (4,)})
    src.save(str(tmp_path / 'w.caffemodel'))
    src.save_hdf5(str(tmp_path / 'w.h5'))
    for f in ('w.caffemodel', 'w.h5'):
        dst = param_net({'b': (4,)})
        caplog.clear()
        with caplog.at_level(logging.INFO, logger='minicaffe'):
            dst.copy_from(str(tmp_path / f))
        lines = [r.getMessage() for r in caplog.records if 'Ignoring source layer' in r.getMessage()]
        assert lines == ['Ignoring source layers extra1, extra2 (2 layers of %s that net %s does'
                         ' not have)' % (tmp_path / f, dst.source)]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger='minicaffe'):
        weights.log_ignored(['only'], 'w', dst)
        weights.log_ignored([b'\xff', 'x'], 'w', dst)
        weights.log_ignored([], 'w', dst)
    assert [r.getMessage() for r in caplog.records] == [
        'Ignoring source layer only',
        "Ignoring source layers b'\\xff', x (2 layers of w that net %s does not have)" % dst.source]
