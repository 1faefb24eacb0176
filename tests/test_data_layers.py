"""DummyData, HDF5Data and MemoryData: Caffe's batching, shapes, fillers and
the errors for missing or bad sources."""
import h5py
import numpy as np
import pytest

import minicaffe as caffe
from minicaffe import protoio
from minicaffe.errors import DataSourceError, MinicaffeError, NetDefinitionError
from minicaffe.protoio import pb

from conformance import CONFORMANCE


def net_from(text, phase=caffe.TRAIN):
    return caffe.Net(net_param=protoio.parse_text(text, pb.NetParameter()), phase=phase)


# ================================================================ DummyData
def test_dummy_constant_fills_once_and_keeps_user_values():
    net = net_from('layer { name: "d" type: "DummyData" top: "a" top: "b"'
                   ' dummy_data_param { shape { dim: 2 dim: 3 } data_filler { type: "constant" value: 7 } } }')
    assert net.blobs['a'].shape == (2, 3) and net.blobs['b'].shape == (2, 3)
    assert np.all(net.blobs['a'].data == 7) and np.all(net.blobs['b'].data == 7)
    net.blobs['a'].data[...] = 5
    net.forward()
    assert np.all(net.blobs['a'].data == 5)        # Caffe does not refill constant tops


def test_dummy_random_fillers_refill_every_forward():
    caffe.set_random_seed(3)
    net = net_from('layer { name: "d" type: "DummyData" top: "g" top: "c"'
                   ' dummy_data_param { shape { dim: 4 dim: 5 } shape { dim: 3 }'
                   ' data_filler { type: "gaussian" std: 2 } data_filler { type: "constant" value: -1 } } }')
    assert net.blobs['g'].shape == (4, 5) and net.blobs['c'].shape == (3,)
    net.forward()
    first = net.blobs['g'].data.copy()
    net.forward()
    assert not np.array_equal(first, net.blobs['g'].data)
    assert np.all(net.blobs['c'].data == -1)
    u = net_from('layer { name: "d" type: "DummyData" top: "u"'
                 ' dummy_data_param { shape { dim: 1000 } data_filler { type: "uniform" min: 2 max: 3 } } }')
    u.forward()
    assert u.blobs['u'].data.min() >= 2 and u.blobs['u'].data.max() <= 3


def test_dummy_defaults_to_zero_and_legacy_dims():
    net = net_from('layer { name: "d" type: "DummyData" top: "a" top: "b"'
                   ' dummy_data_param { num: 2 channels: 3 channels: 1 height: 4 width: 5 } }')
    assert net.blobs['a'].shape == (2, 3, 4, 5) and net.blobs['b'].shape == (2, 1, 4, 5)
    net.forward()
    assert not net.blobs['a'].data.any()


@pytest.mark.parametrize('param,msg', [
    ('shape { dim: 2 } shape { dim: 2 } shape { dim: 2 }', 'shape must be given once, or once per top'),
    ('shape { dim: 2 } data_filler { } data_filler { } data_filler { }', 'number of data_filler'),
    ('shape { dim: 2 } num: 2 channels: 1 height: 1 width: 1', 'not both'),
    ('num: 2 channels: 1 height: 1', 'width must be given once'),
    ('shape { dim: 2 } data_filler { type: "nonsense" }', 'unknown filler type'),
])
def test_dummy_bad_params(param, msg):
    with pytest.raises(NetDefinitionError, match=msg) as e:
        net_from('layer { name: "dummy" type: "DummyData" top: "a" top: "b" dummy_data_param { %s } }'
                 % param)
    assert 'dummy' in str(e.value)


# ================================================================ HDF5Data
def write_h5(path, **arrays):
    with h5py.File(path, 'w') as f:
        for k, v in arrays.items():
            f[k] = v


def hdf5_net(batch, shuffle=False, source='list.txt', tops=('data', 'label'), extra=''):
    return net_from('layer { name: "src" type: "HDF5Data" %s hdf5_data_param { source: "%s" batch_size: %d'
                    ' shuffle: %s } %s }' % (''.join('top: "%s" ' % t for t in tops), source, batch,
                                             'true' if shuffle else 'false', extra))


@pytest.fixture
def two_files(tmp_path, monkeypatch):
    """a.h5 rows 0..4, b.h5 rows 5..7 (data rows hold their index); list.txt lists both."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'sub').mkdir()
    rows = np.arange(8, dtype=np.float32)
    data = np.repeat(rows[:, None, None], 6, axis=2).reshape(8, 2, 3) + np.arange(6).reshape(2, 3) / 10.
    write_h5('sub/a.h5', data=data[:5], label=rows[:5].astype(np.int32))
    write_h5('sub/b.h5', data=data[5:].astype(np.float64), label=rows[5:].astype(np.int32))
    (tmp_path / 'list.txt').write_text('sub/a.h5\n  sub/b.h5 \n')
    return data.astype(np.float32), rows


def test_hdf5_batches_cross_files_and_wrap(two_files):
    data, rows = two_files
    net = hdf5_net(3)
    assert net.blobs['data'].shape == (3, 2, 3) and net.blobs['label'].shape == (3,)
    seen = []
    for _ in range(6):                       # 18 rows: more than two passes over 8
        net.forward()
        seen.extend(net.blobs['label'].data.tolist())
        np.testing.assert_array_equal(net.blobs['data'].data, data[net.blobs['label'].data.astype(int)])
    assert seen == [i % 8 for i in range(18)]


def test_hdf5_trailing_dims_follow_the_dataset(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_h5('x.h5', x=np.ones((4, 1, 2, 3, 2), np.float32), y=np.zeros((4, 1), np.float32))
    (tmp_path / 'l.txt').write_text('x.h5')
    net = hdf5_net(2, source='l.txt', tops=('x', 'y'))
    assert net.blobs['x'].shape == (2, 1, 2, 3, 2) and net.blobs['y'].shape == (2, 1)


def test_hdf5_shuffle_permutes_rows_and_files(two_files):
    data, rows = two_files
    caffe.set_random_seed(11)
    net = hdf5_net(8, shuffle=True)
    epochs = []
    for _ in range(4):
        net.forward()
        labels = net.blobs['label'].data.astype(int)
        np.testing.assert_array_equal(net.blobs['data'].data, data[labels])   # rows stay paired
        epochs.append(labels.tolist())
    for e in epochs:
        assert sorted(e) == list(range(8))
        first_file = set(e[:5]) if set(e[:5]) == set(range(5)) else set(e[:3])
        assert first_file in (set(range(5)), set(range(5, 8)))   # whole files, in some order
    assert len(set(map(tuple, epochs))) > 1                       # reshuffled between passes
    caffe.set_random_seed(11)
    again = hdf5_net(8, shuffle=True)
    again.forward()
    assert again.blobs['label'].data.astype(int).tolist() == epochs[0]


def test_hdf5_single_file_reshuffles_each_pass(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_h5('one.h5', data=np.arange(10, dtype=np.float32)[:, None])
    (tmp_path / 'l.txt').write_text('one.h5')
    caffe.set_random_seed(5)
    net = hdf5_net(10, shuffle=True, source='l.txt', tops=('data',))
    orders = []
    for _ in range(3):
        net.forward()
        orders.append(net.blobs['data'].data[:, 0].astype(int).tolist())
        assert sorted(orders[-1]) == list(range(10))
    assert len(set(map(tuple, orders))) == 3


def test_hdf5_has_no_backward_and_works_in_a_net(two_files):
    net = net_from('force_backward: true '
                   'layer { name: "src" type: "HDF5Data" top: "data" top: "label"'
                   ' hdf5_data_param { source: "list.txt" batch_size: 4 } }'
                   'layer { name: "r" type: "ReLU" bottom: "data" top: "r" }')
    net.forward()
    net.backward()                   # no error: data layers have no bottoms to propagate to
    assert net.inputs == [] and sorted(net.outputs) == ['label', 'r']


def test_hdf5_missing_source_names_layer_and_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataSourceError) as e:
        hdf5_net(2, source='nowhere/list.txt')
    assert 'nowhere/list.txt' in str(e.value) and 'layer "src"' in str(e.value)


def test_hdf5_missing_listed_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_h5('a.h5', data=np.zeros((2, 1), np.float32), label=np.zeros(2, np.float32))
    (tmp_path / 'list.txt').write_text('a.h5\nmissing.h5\n')
    with pytest.raises(DataSourceError, match=r'layer "src".*missing\.h5.*list\.txt'):
        hdf5_net(2)


def test_hdf5_missing_dataset(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_h5('a.h5', data=np.zeros((2, 1), np.float32), labels=np.zeros(2, np.float32))
    (tmp_path / 'list.txt').write_text('a.h5')
    with pytest.raises(DataSourceError, match=r'a\.h5.*no dataset "label".*has: data, labels'):
        hdf5_net(2)


def test_hdf5_unreadable_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'a.h5').write_bytes(b'this is not hdf5')
    (tmp_path / 'list.txt').write_text('a.h5')
    with pytest.raises(DataSourceError, match=r'cannot open HDF5 file "a\.h5"'):
        hdf5_net(2)


@pytest.mark.parametrize('arrays,msg', [
    (dict(data=np.zeros((3, 2), np.float32), label=np.zeros(2, np.float32)), 'same number of rows'),
    (dict(data=np.zeros((0, 2), np.float32), label=np.zeros(0, np.float32)), 'holds no rows'),
    (dict(data=np.array([b'ab', b'cd']), label=np.zeros(2, np.float32)), 'only float'),
])
def test_hdf5_bad_datasets(tmp_path, monkeypatch, arrays, msg):
    monkeypatch.chdir(tmp_path)
    write_h5('a.h5', **arrays)
    (tmp_path / 'list.txt').write_text('a.h5')
    with pytest.raises(DataSourceError, match=msg):
        hdf5_net(2)


def test_hdf5_later_file_with_other_row_shape(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_h5('a.h5', data=np.zeros((2, 3), np.float32))
    write_h5('b.h5', data=np.zeros((2, 4), np.float32))
    (tmp_path / 'list.txt').write_text('a.h5 b.h5')
    net = hdf5_net(2, tops=('data',))
    with pytest.raises(DataSourceError, match=r'b\.h5.*row shapes'):
        net.forward()


@pytest.mark.parametrize('extra,batch,msg', [
    ('transform_param { scale: 2 }', 2, 'does not transform data'),
    ('', 0, 'batch_size must be positive'),
])
def test_hdf5_bad_params(two_files, extra, batch, msg):
    with pytest.raises(NetDefinitionError, match=msg):
        hdf5_net(batch, extra=extra)


def test_hdf5_empty_list(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'list.txt').write_text('\n\n')
    with pytest.raises(DataSourceError, match='lists no files'):
        hdf5_net(2)


def test_hdf5_upstream_train_net_names_missing_source(tmp_path, monkeypatch):
    path = CONFORMANCE / 'upstream' / 'caffe__examples__coco_caption__lstm_language_model.prototxt'
    if not path.exists():
        pytest.skip('conformance suite not present')
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataSourceError) as e:
        caffe.Net(str(path), caffe.TRAIN)
    assert 'train_unaligned_batches/hdf5_chunk_list.txt' in str(e.value)
    assert str(path) in str(e.value)                      # file:line of the layer


# ================================================================ MemoryData
MEMORY = ('layer { name: "mem" type: "MemoryData" top: "data" top: "label"'
          ' memory_data_param { batch_size: 2 channels: 3 height: 2 width: 1 } }')


def test_memory_data_batches_wrap_around():
    net = net_from(MEMORY)
    assert net.blobs['data'].shape == (2, 3, 2, 1) and net.blobs['label'].shape == (2,)
    data = np.arange(6 * 6, dtype=np.float32).reshape(6, 3, 2, 1)
    labels = np.arange(6, dtype=np.float32) * 10
    net.set_input_arrays(data, labels)
    got = []
    for _ in range(4):
        net.forward()
        np.testing.assert_array_equal(net.blobs['data'].data, data[(net.blobs['label'].data / 10).astype(int)])
        got.extend(net.blobs['label'].data.tolist())
    assert got == [0, 10, 20, 30, 40, 50, 0, 10]


def test_memory_data_uses_the_callers_array_and_4d_labels():
    net = net_from(MEMORY)
    data = np.zeros((2, 3, 2, 1), np.float32)
    labels = np.array([1, 2], np.float32).reshape(2, 1, 1, 1)
    net.set_input_arrays(data, labels)
    data[...] = 4                            # pycaffe keeps a pointer to the array
    net.forward()
    assert np.all(net.blobs['data'].data == 4) and net.blobs['label'].data.tolist() == [1, 2]


@pytest.mark.parametrize('data_shape,labels_shape,msg', [
    ((3, 3, 2, 1), (3,), 'multiple of batch size'),
    ((0, 3, 2, 1), (0,), 'multiple of batch size'),
    ((2, 3, 2), (2,), 'must be 4-d'),
    ((2, 3, 2, 2), (2,), r'rows must be \(3, 2, 1\)'),
    ((2, 3, 2, 1), (4,), 'same first dimension'),
    ((2, 3, 2, 1), (2, 2, 1, 1), r'labels array.*rows must be \(1, 1, 1\)'),
])
def test_memory_data_bad_arrays(data_shape, labels_shape, msg):
    net = net_from(MEMORY)
    with pytest.raises(MinicaffeError, match=msg):
        net.set_input_arrays(np.zeros(data_shape, np.float32), np.zeros(labels_shape, np.float32))


def test_memory_data_needs_arrays_and_a_first_memory_layer():
    net = net_from(MEMORY)
    with pytest.raises(MinicaffeError, match='set_input_arrays'):
        net.forward()
    other = net_from('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 } } }')
    with pytest.raises(MinicaffeError, match='first layer is a MemoryData'):
        other.set_input_arrays(np.zeros((2, 3, 2, 1), np.float32), np.zeros(2, np.float32))
    with pytest.raises(NetDefinitionError, match='must be specified and positive'):
        net_from('layer { name: "mem" type: "MemoryData" top: "data" top: "label"'
                 ' memory_data_param { batch_size: 2 channels: 3 height: 2 } }')


@pytest.mark.parametrize('filler,msg', [
    ('type: "uniform" min: 1 max: -1', 'min <= max'),                     # Caffe: CHECK_LE(a, b)
    ('type: "uniform" min: -inf max: inf', 'cannot draw'),
    ('type: "gaussian" std: -1', 'cannot draw'),
])
def test_filler_parameters_numpy_cannot_draw_from_are_net_errors(filler, msg):
    with pytest.raises(NetDefinitionError, match=msg):
        net_from('layer { name: "d" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }'
                 ' layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y"'
                 ' inner_product_param { num_output: 2 weight_filler { %s } } }' % filler)
    net = net_from('layer { name: "d" type: "DummyData" top: "x" dummy_data_param {'
                   ' shape { dim: 2 dim: 3 } data_filler { %s } } }' % filler)
    with pytest.raises(NetDefinitionError, match=msg):     # DummyData fills at each forward
        net.forward()
