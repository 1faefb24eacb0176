"""ImageData, Data (LMDB), WindowData, HDF5Output and the LMDB tools."""

import h5py
import numpy as np
import pytest
from PIL import Image

import minicaffe as caffe
from minicaffe.errors import DataSourceError, MinicaffeError, NetDefinitionError
from minicaffe.protoio import pb

lmdb = pytest.importorskip('lmdb')
from minicaffe.commands import lmdb_tools  # noqa: E402


def rgb_image(h, w, seed):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture
def images(tmp_path):
    """Five PNGs in a folder with spaces; list.txt uses paths with spaces."""
    root = tmp_path / 'imgs'
    (root / 'a dir').mkdir(parents=True)
    lines, arrays = [], []
    for i in range(5):
        arr = rgb_image(6 + i, 8, i)
        name = 'a dir/img %d.png' % i
        Image.fromarray(arr).save(str(root / name))
        arrays.append(arr)
        lines.append('%s %d' % (name, 10 + i))
    (tmp_path / 'list.txt').write_text('\n'.join(lines) + '\n')
    return tmp_path, arrays


def write_net(tmp_path, text, name='net.prototxt'):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def image_net(tmp_path, extra='', transform='', batch=2, prefetch=''):
    return write_net(tmp_path, '''
layer { name: "data" type: "ImageData" top: "data" top: "label"
  transform_param { %s }
  image_data_param { source: "%s" root_folder: "%s/" batch_size: %d %s }
  %s }''' % (transform, tmp_path / 'list.txt', tmp_path / 'imgs', batch, extra, prefetch))


def test_image_data_bgr_0_255_labels_and_order(images, monkeypatch):
    tmp_path, arrays = images
    net = caffe.Net(image_net(tmp_path, 'new_height: 4 new_width: 5'), caffe.TEST)
    assert net.blobs['data'].shape == (2, 3, 4, 5) and net.blobs['label'].shape == (2,)
    from minicaffe.transform import resize_bilinear
    labels = []
    for it in range(3):
        net.forward()
        labels.extend(net.blobs['label'].data.tolist())
        for j in range(2):
            idx = (2 * it + j) % 5
            want = resize_bilinear(arrays[idx], 4, 5)[:, :, ::-1].transpose(2, 0, 1)
            np.testing.assert_array_equal(net.blobs['data'].data[j], want.astype(np.float32))
    assert labels == [10, 11, 12, 13, 14, 10]     # wraps around after the last line


def test_image_data_gray_and_batch_shape_from_first_image(images):
    tmp_path, arrays = images
    net = caffe.Net(image_net(tmp_path, 'is_color: false', batch=1), caffe.TEST)
    assert net.blobs['data'].shape == (1, 1, 6, 8)
    net.forward()
    net.forward()
    assert net.blobs['data'].shape == (1, 1, 7, 8)     # each batch takes its first image's shape


def test_image_data_mixed_sizes_in_one_batch_is_a_clear_error(images):
    tmp_path, _ = images
    net = caffe.Net(image_net(tmp_path, '', batch=2), caffe.TEST)
    with pytest.raises(DataSourceError, match='img 1.png'):
        net.forward()


def test_image_data_shuffle_is_seeded_and_reshuffles_each_epoch(images):
    tmp_path, _ = images
    path = image_net(tmp_path, 'new_height: 4 new_width: 4 shuffle: true', batch=5)

    def epochs(seed):
        caffe.set_random_seed(seed)
        net = caffe.Net(path, caffe.TRAIN)
        out = []
        for _ in range(4):
            net.forward()
            out.append(tuple(net.blobs['label'].data.astype(int)))
        return out
    a, b = epochs(7), epochs(7)
    assert a == b                                       # repeatable with the prefetch thread
    assert all(sorted(e) == [10, 11, 12, 13, 14] for e in a)
    assert len(set(a)) > 1                              # a new order each epoch


def test_prefetch_and_synchronous_reading_agree(images):
    tmp_path, _ = images
    t = 'mirror: true crop_size: 3'
    outs = []
    for prefetch in ('', 'data_param { prefetch: 0 }'):
        caffe.set_random_seed(11)
        net = caffe.Net(image_net(tmp_path, 'new_height: 5 new_width: 5', t, 2, prefetch), caffe.TRAIN)
        batches = []
        for _ in range(3):
            net.forward()
            batches.append(net.blobs['data'].data.copy())
        outs.append(np.stack(batches))
    np.testing.assert_array_equal(outs[0], outs[1])


def test_image_list_split_at_last_space(tmp_path):
    from minicaffe.layers.image_data import parse_image_list
    p = tmp_path / 'l.txt'
    p.write_text('my file.jpg 3\r\nnolabel.jpg\nx y z -2\n')
    assert parse_image_list(str(p)) == [('my file.jpg', 3), ('nolabel.jpg', 0), ('x y z', -2)]
    p.write_text('')
    with pytest.raises(DataSourceError, match='empty'):
        parse_image_list(str(p))


def test_missing_sources_fail_at_construction_naming_the_path(tmp_path):
    net = write_net(tmp_path, 'layer { name: "d" type: "ImageData" top: "d" top: "l"'
                              ' image_data_param { source: "no/such/list.txt" batch_size: 1 } }')
    with pytest.raises(DataSourceError, match=r'layer "d" \(ImageData\): .*no/such/list.txt'):
        caffe.Net(net, caffe.TEST)
    net = write_net(tmp_path, 'layer { name: "d" type: "Data" top: "d" top: "l"'
                              ' data_param { source: "no/such_lmdb" batch_size: 1 backend: LMDB } }')
    with pytest.raises(DataSourceError, match='no/such_lmdb'):
        caffe.Net(net, caffe.TEST)
    net = write_net(tmp_path, 'layer { name: "d" type: "WindowData" top: "d" top: "l"'
                              ' transform_param { crop_size: 4 }'
                              ' window_data_param { source: "no/windows.txt" batch_size: 1 } }')
    with pytest.raises(DataSourceError, match='no/windows.txt'):
        caffe.Net(net, caffe.TEST)
    net = write_net(tmp_path, 'layer { name: "d" type: "ImageData" top: "d" top: "l"'
                              ' transform_param { mean_file: "no/mean.binaryproto" }'
                              ' image_data_param { source: "no/such/list.txt" batch_size: 1 } }')
    with pytest.raises(DataSourceError, match=r'layer "d" \(ImageData\): .*no/'):
        caffe.Net(net, caffe.TEST)


def test_missing_image_in_list_is_named(images):
    tmp_path, _ = images
    with open(tmp_path / 'list.txt', 'a') as f:
        f.write('a dir/gone.png 1\n')
    net = caffe.Net(image_net(tmp_path, 'new_height: 4 new_width: 4', batch=3), caffe.TEST)
    net.forward()
    with pytest.raises(DataSourceError, match='gone.png'):
        net.forward()


def test_new_height_without_new_width_is_refused(images):
    tmp_path, _ = images
    with pytest.raises(NetDefinitionError, match='new_height and new_width'):
        caffe.Net(image_net(tmp_path, 'new_height: 4'), caffe.TEST)


# ---------------------------------------------------------------- LMDB
@pytest.fixture
def lmdb_db(images):
    tmp_path, arrays = images
    db = str(tmp_path / 'train_lmdb')
    n = lmdb_tools.convert_imageset(str(tmp_path / 'imgs') + '/', str(tmp_path / 'list.txt'), db,
                                    resize_height=4, resize_width=6, show_progress=False)
    assert n == 5
    return tmp_path, db


def data_net(tmp_path, db, transform='', tops=('data', 'label'), batch=3, backend='backend: LMDB'):
    return write_net(tmp_path, '''
layer { name: "d" type: "Data" %s transform_param { %s }
  data_param { source: "%s" batch_size: %d %s } }''' % (
        ' '.join('top: "%s"' % t for t in tops), transform, db, batch, backend), 'data.prototxt')


def test_data_layer_reads_datums_in_key_order_and_wraps(lmdb_db, images):
    tmp_path, db = lmdb_db
    arrays = images[1]
    from minicaffe.transform import resize_bilinear
    net = caffe.Net(data_net(tmp_path, db), caffe.TEST)
    assert net.blobs['data'].shape == (3, 3, 4, 6)
    net.forward()
    np.testing.assert_array_equal(net.blobs['label'].data, [10, 11, 12])
    want = resize_bilinear(arrays[1], 4, 6)[:, :, ::-1].transpose(2, 0, 1)
    np.testing.assert_array_equal(net.blobs['data'].data[1], want)
    net.forward()
    np.testing.assert_array_equal(net.blobs['label'].data, [13, 14, 10])


def test_data_layer_without_label_top_and_with_mean_file(lmdb_db):
    tmp_path, db = lmdb_db
    mean_path = str(tmp_path / 'mean.binaryproto')
    mean = lmdb_tools.compute_image_mean(db, mean_path)
    assert mean.shape == (1, 3, 4, 6)
    net = caffe.Net(data_net(tmp_path, db, 'mean_file: "%s"' % mean_path, tops=('data',), batch=5),
                    caffe.TEST)
    net.forward()
    # the mean of the 5 mean-subtracted images is ~0 everywhere
    assert np.abs(net.blobs['data'].data.mean(axis=0)).max() < 1e-3


def test_compute_mean_accumulates_like_caffe(lmdb_db):
    tmp_path, db = lmdb_db
    items = []
    env = lmdb.open(db, readonly=True, lock=False)
    with env.begin() as txn:
        for _, v in txn.cursor():
            d = pb.Datum.FromString(v)
            items.append(np.frombuffer(d.data, np.uint8).astype(np.float32))
    env.close()
    acc = np.zeros_like(items[0])
    for x in items:
        acc = (acc + x).astype(np.float32)
    want = acc / np.float32(len(items))
    got = lmdb_tools.compute_image_mean(db)
    np.testing.assert_array_equal(got.ravel(), want)
    bp = pb.BlobProto()
    lmdb_tools.compute_image_mean(db, str(tmp_path / 'm.binaryproto'))
    bp.ParseFromString((tmp_path / 'm.binaryproto').read_bytes())
    assert (bp.num, bp.channels, bp.height, bp.width) == (1, 3, 4, 6)


def test_encoded_lmdb_with_force_gray_and_keys(images):
    tmp_path, arrays = images
    db = str(tmp_path / 'enc_lmdb')
    lmdb_tools.convert_imageset(str(tmp_path / 'imgs') + '/', str(tmp_path / 'list.txt'), db,
                                encoded=True, show_progress=False)
    env = lmdb.open(db, readonly=True, lock=False)
    with env.begin() as txn:
        keys = [k.decode() for k, _ in txn.cursor()]
        first = pb.Datum.FromString(txn.get(keys[0].encode()))
    env.close()
    assert keys[0] == '00000000_a dir/img 0.png' and len(keys) == 5
    assert first.encoded and first.data[:4] == b'\x89PNG'
    net = caffe.Net(data_net(tmp_path, db, 'force_gray: true crop_size: 5', batch=1), caffe.TEST)
    assert net.blobs['data'].shape == (1, 1, 5, 5)
    net = caffe.Net(data_net(tmp_path, db, '', batch=1), caffe.TEST)
    net.forward()
    np.testing.assert_array_equal(net.blobs['data'].data[0], arrays[0][:, :, ::-1].transpose(2, 0, 1))


def test_float_datums(tmp_path):
    db = str(tmp_path / 'f_lmdb')
    env = lmdb.open(db, map_size=1 << 24)
    with env.begin(write=True) as txn:
        for i in range(2):
            d = pb.Datum(channels=1, height=2, width=2, label=i)
            d.float_data.extend([i + 0.5, 2, 3, 4])
            txn.put(b'%08d' % i, d.SerializeToString())
    env.close()
    net = caffe.Net(data_net(tmp_path, db, 'scale: 2', batch=2), caffe.TEST)
    net.forward()
    np.testing.assert_array_equal(net.blobs['data'].data[:, 0, 0, 0], [1.0, 3.0])


def test_leveldb_and_bad_lmdb_are_clear_errors(lmdb_db, tmp_path):
    tmp, db = lmdb_db
    fake = tmp_path / 'ldb'
    fake.mkdir()
    (fake / 'CURRENT').write_text('MANIFEST-000001\n')
    with pytest.raises(DataSourceError, match='LevelDB'):
        caffe.Net(data_net(tmp_path, str(fake), backend=''), caffe.TEST)
    # backend left at its LEVELDB default but the folder is an LMDB: read as the LMDB it is
    net = caffe.Net(data_net(tmp_path, db, backend=''), caffe.TEST)
    net.forward()
    assert net.blobs['label'].data.tolist() == [10, 11, 12]
    junk = tmp_path / 'junk_lmdb'
    junk.mkdir()
    (junk / 'data.mdb').write_bytes(b'\0' * 100)
    with pytest.raises(DataSourceError, match='junk_lmdb'):
        caffe.Net(data_net(tmp_path, str(junk)), caffe.TEST)


def test_corrupt_datum_is_named(tmp_path):
    db = str(tmp_path / 'bad_lmdb')
    env = lmdb.open(db, map_size=1 << 24)
    with env.begin(write=True) as txn:
        txn.put(b'k0', pb.Datum(channels=1, height=2, width=2, data=b'abcd').SerializeToString())
        txn.put(b'k1', b'\xff\xff\xff\xff\x0f garbage')
    env.close()
    net = caffe.Net(data_net(tmp_path, db, batch=2), caffe.TEST)
    with pytest.raises(DataSourceError, match="k1"):
        net.forward()


def test_convert_imageset_refuses_existing_db_and_gray(lmdb_db, images):
    tmp_path, db = lmdb_db
    with pytest.raises(MinicaffeError, match='already exists'):
        lmdb_tools.convert_imageset(str(tmp_path / 'imgs') + '/', str(tmp_path / 'list.txt'), db,
                                    show_progress=False)
    gdb = str(tmp_path / 'gray_lmdb')
    lmdb_tools.convert_imageset(str(tmp_path / 'imgs') + '/', str(tmp_path / 'list.txt'), gdb,
                                gray=True, resize_height=3, resize_width=3, shuffle=True, seed=1,
                                show_progress=False)
    net = caffe.Net(data_net(tmp_path, gdb, batch=5), caffe.TEST)
    net.forward()
    assert net.blobs['data'].shape == (5, 1, 3, 3)
    assert sorted(net.blobs['label'].data.tolist()) == [10, 11, 12, 13, 14]


# ---------------------------------------------------------------- WindowData
def test_window_data(tmp_path):
    img = rgb_image(20, 30, 3)
    Image.fromarray(img).save(str(tmp_path / 'w.png'))
    (tmp_path / 'windows.txt').write_text(
        '# 0\nw.png\n3\n20\n30\n3\n'
        '1 0.9 2 3 12 15\n'     # foreground, class 1
        '2 0.7 5 5 20 18\n'     # foreground, class 2
        '5 0.1 0 0 29 19\n')    # background (label forced to 0)
    net = write_net(tmp_path, '''
layer { name: "w" type: "WindowData" top: "data" top: "label"
  transform_param { crop_size: 8 mean_value: 100 }
  window_data_param { source: "%s" root_folder: "%s/" batch_size: 4 fg_fraction: 0.5 } }'''
                    % (tmp_path / 'windows.txt', tmp_path))
    caffe.set_random_seed(2)
    n = caffe.Net(net, caffe.TRAIN)
    assert n.blobs['data'].shape == (4, 3, 8, 8)
    n.forward()
    labels = n.blobs['label'].data
    assert list(labels[:2]) == [0, 0] and set(labels[2:]) <= {1, 2}
    from minicaffe.transform import resize_bilinear
    bg = resize_bilinear(img[0:20, 0:30][:, :, ::-1], 8, 8).transpose(2, 0, 1).astype(np.float32) - 100
    np.testing.assert_array_equal(n.blobs['data'].data[0], bg)


def test_window_file_errors_name_file_and_line(tmp_path):
    (tmp_path / 'w.txt').write_text('# 0\nw.png\n3\n20\nthirty\n0\n')
    net = write_net(tmp_path, '''
layer { name: "w" type: "WindowData" top: "data" top: "label" transform_param { crop_size: 8 }
  window_data_param { source: "%s" batch_size: 4 } }''' % (tmp_path / 'w.txt'))
    with pytest.raises(DataSourceError, match=r'w.txt:5'):
        caffe.Net(net, caffe.TRAIN)


# ---------------------------------------------------------------- HDF5Output
def test_hdf5_output_writes_data_and_label(tmp_path):
    out = tmp_path / 'out.h5'
    net = write_net(tmp_path, '''
layer { name: "in" type: "Input" top: "x" top: "y" input_param { shape { dim: 2 dim: 3 } shape { dim: 2 } } }
layer { name: "o" type: "HDF5Output" bottom: "x" bottom: "y" hdf5_output_param { file_name: "%s" } }'''
                    % out)
    n = caffe.Net(net, caffe.TEST)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    n.blobs['x'].data[...] = x
    n.blobs['y'].data[...] = [4, 5]
    n.forward()
    with h5py.File(str(out), 'r') as f:
        np.testing.assert_array_equal(f['data'][()], x.reshape(2, 3, 1, 1))
        np.testing.assert_array_equal(f['label'][()].ravel(), [4, 5])


def test_hdf5_output_unwritable_path(tmp_path):
    net = write_net(tmp_path, '''
layer { name: "in" type: "Input" top: "x" top: "y" input_param { shape { dim: 2 } } }
layer { name: "o" type: "HDF5Output" bottom: "x" bottom: "y"
        hdf5_output_param { file_name: "%s/no/dir/out.h5" } }''' % tmp_path)
    with pytest.raises(DataSourceError, match='no/dir/out.h5'):
        caffe.Net(net, caffe.TEST)


def test_datasets_drop_threads_with_the_net(images):
    import gc
    import threading
    tmp_path, _ = images
    before = threading.active_count()
    for _ in range(5):
        net = caffe.Net(image_net(tmp_path, 'new_height: 4 new_width: 4'), caffe.TEST)
        net.forward()
        del net
        gc.collect()
    import time
    deadline = time.time() + 5
    while threading.active_count() > before and time.time() < deadline:
        time.sleep(0.05)
    assert threading.active_count() <= before


def test_command_line_tools(images, capsys):
    tmp_path, _ = images
    db = str(tmp_path / 'cli_lmdb')
    assert lmdb_tools.convert_imageset_main([str(tmp_path / 'imgs') + '/', str(tmp_path / 'list.txt'), db,
                                             '--resize_height', '3', '--resize_width', '4', '--gray']) == 0
    assert 'Processed 5 files.' in capsys.readouterr().out
    out = str(tmp_path / 'cli_mean.binaryproto')
    assert lmdb_tools.compute_mean_main([db, out]) == 0
    assert 'mean_value channel [0]' in capsys.readouterr().out
    bp = pb.BlobProto.FromString(open(out, 'rb').read())
    assert (bp.num, bp.channels, bp.height, bp.width) == (1, 1, 3, 4)
    assert lmdb_tools.compute_mean_main([str(tmp_path / 'nope_lmdb')]) == 1
    assert 'nope_lmdb' in capsys.readouterr().err
    assert lmdb_tools.convert_imageset_main([str(tmp_path) + '/', str(tmp_path / 'list.txt'), db]) == 1
    assert 'already exists' in capsys.readouterr().err


def test_a_failed_source_keeps_failing_quickly(images):
    import time
    tmp_path, _ = images
    with open(tmp_path / 'list.txt', 'w') as f:
        f.write('a dir/img 0.png 1\na dir/missing.png 2\n')
    net = caffe.Net(image_net(tmp_path, 'new_height: 4 new_width: 4', batch=2), caffe.TEST)
    for _ in range(2):
        t0 = time.time()
        with pytest.raises(DataSourceError, match='missing.png'):
            net.forward()
        assert time.time() - t0 < 0.9
