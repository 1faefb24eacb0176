"""Data sharding for data-parallel training (Caffe's Skip()), without MPI: the
process-wide solver count/rank are set by hand, and each rank's net must read
exactly its share of what one process with an N times larger batch reads --
item j of rank r's batch is item j*N + r of the big batch -- for every data
layer that reads a stream: HDF5Data, Data (LMDB), ImageData, WindowData.
TEST nets are not sharded."""
import h5py
import numpy as np
import pytest
from PIL import Image

import minicaffe as caffe
from minicaffe.parallel import state

from test_image_data import data_net, image_net, images, lmdb_db, rgb_image, write_net  # noqa: F401

N = 2           # ranks


@pytest.fixture(autouse=True)
def _one_process_afterwards():
    yield
    state.reset()


def test_keeps_item_is_skip_inverted():
    assert all(state.keeps_item(k) for k in range(10))      # one process keeps everything
    state.set_solver_count(3)
    state.set_solver_rank(1)
    assert [k for k in range(10) if state.keeps_item(k)] == [1, 4, 7]
    assert all(state.keeps_item(k, phase_is_train=False) for k in range(10))
    assert state.shards(True) and not state.shards(False)
    assert not state.root_solver()
    with pytest.raises(ValueError):
        state.set_solver_count(0)


def _batches(make_net, phase, forwards, seed, tops=('data', 'label')):
    caffe.set_random_seed(seed)
    net = caffe.Net(make_net(), phase)
    out = []
    for _ in range(forwards):
        net.forward()
        out.append([net.blobs[t].data.copy() for t in tops])
    return out


def _check_shards(make_net_for_batch, batch, forwards, phase=caffe.TRAIN, seed=5,
                  tops=('data', 'label')):
    """Every rank's batches against one process's batches of N * batch."""
    whole = _batches(lambda: make_net_for_batch(N * batch), phase, forwards, seed, tops)
    state.set_solver_count(N)
    for r in range(N):
        state.set_solver_rank(r)
        mine = _batches(lambda: make_net_for_batch(batch), phase, forwards, seed, tops)
        for it in range(forwards):
            for t in range(len(tops)):
                np.testing.assert_array_equal(mine[it][t], whole[it][t][r::N],
                                              err_msg='rank %d, forward %d, top %s' % (r, it, tops[t]))
    state.reset()


def _hdf5_files(tmp_path):
    """Two files (7 and 9 rows): batches cross from one file into the next."""
    names = []
    start = 0
    for i, rows in enumerate((7, 9)):
        path = tmp_path / ('part%d.h5' % i)
        with h5py.File(path, 'w') as f:
            f['data'] = np.arange(start, start + rows, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
            f['label'] = np.arange(start, start + rows, dtype=np.float32)
        start += rows
        names.append(str(path))
    (tmp_path / 'list.txt').write_text('\n'.join(names) + '\n')
    return tmp_path / 'list.txt'


@pytest.mark.parametrize('shuffle', [False, True])
def test_hdf5_data_ranks_read_their_share(tmp_path, shuffle):
    source = _hdf5_files(tmp_path)

    def net(batch):
        return write_net(tmp_path, 'layer { name: "d" type: "HDF5Data" top: "data" top: "label"'
                         ' hdf5_data_param { source: "%s" batch_size: %d shuffle: %s } }'
                         % (source, batch, 'true' if shuffle else 'false'))
    _check_shards(net, batch=3, forwards=6)       # 36 rows: more than two passes over 16


def test_hdf5_data_test_phase_is_not_sharded(tmp_path):
    source = _hdf5_files(tmp_path)

    def net(batch):
        return write_net(tmp_path, 'layer { name: "d" type: "HDF5Data" top: "data" top: "label"'
                         ' hdf5_data_param { source: "%s" batch_size: %d } }' % (source, batch))
    alone = _batches(lambda: net(4), caffe.TEST, 3, 1)
    state.set_solver_count(N)
    state.set_solver_rank(1)
    ranked = _batches(lambda: net(4), caffe.TEST, 3, 1)
    for a, b in zip(alone, ranked):
        np.testing.assert_array_equal(a[1], b[1])


@pytest.mark.parametrize('shuffle', [False, True])
def test_image_data_ranks_read_their_share(images, shuffle):  # noqa: F811
    tmp_path, _ = images
    extra = 'new_height: 4 new_width: 5' + (' shuffle: true' if shuffle else '')
    _check_shards(lambda batch: image_net(tmp_path, extra, batch=batch), batch=2, forwards=4)


def test_image_data_test_phase_is_not_sharded(images):  # noqa: F811
    tmp_path, _ = images
    make = lambda: image_net(tmp_path, 'new_height: 4 new_width: 5', batch=2)  # noqa: E731
    alone = _batches(make, caffe.TEST, 3, 1)
    state.set_solver_count(N)
    state.set_solver_rank(1)
    for a, b in zip(alone, _batches(make, caffe.TEST, 3, 1)):
        np.testing.assert_array_equal(a[1], b[1])


def test_data_layer_ranks_read_their_share(lmdb_db):  # noqa: F811
    tmp_path, db = lmdb_db
    _check_shards(lambda batch: data_net(tmp_path, db, batch=batch), batch=2, forwards=4)


def test_window_data_ranks_draw_disjoint_windows(tmp_path):
    img = rgb_image(20, 30, 3)
    Image.fromarray(img).save(str(tmp_path / 'w.png'))
    (tmp_path / 'windows.txt').write_text(
        '# 0\nw.png\n3\n20\n30\n4\n'
        '1 0.9 2 3 12 15\n'
        '5 0.1 0 0 29 19\n'
        '5 0.2 3 1 17 11\n'
        '5 0.3 8 4 25 16\n')

    def net(batch):
        # fg_fraction 0: every window comes from the background pool, one draw
        # (window, mirror) per item, so the streams line up item by item.
        return write_net(tmp_path, '''
layer { name: "w" type: "WindowData" top: "data" top: "label"
  transform_param { crop_size: 6 mirror: true }
  window_data_param { source: "%s" root_folder: "%s/" batch_size: %d fg_fraction: 0 } }'''
                         % (tmp_path / 'windows.txt', tmp_path, batch))
    _check_shards(net, batch=3, forwards=3, seed=11)
