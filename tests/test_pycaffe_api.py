"""pycaffe's API as minicaffe exposes it (``import minicaffe as caffe``): every
name upstream's python/caffe/__init__.py, pycaffe.py and _caffe.cpp export,
and the behaviour of each as Caffe defines it.  (caffe.io's functions have
their own tests in test_io.py, coord_map in test_coord_map.py.)"""
import importlib
import os
import sys
import types

import numpy as np
import pytest

import minicaffe as caffe
from minicaffe import draw
from minicaffe.errors import MinicaffeError
from minicaffe.protoio import parse_text, pb

# Names owned by the scale-out work (NCCL, solver count/rank, Timer, logging, Net
# hooks) are checked by its own tests.
MODULE_NAMES = '''Net SGDSolver NesterovSolver AdaGradSolver RMSPropSolver AdaDeltaSolver AdamSolver
    set_mode_cpu set_mode_gpu set_device Layer get_solver layer_type_list set_random_seed __version__
    TRAIN TEST Classifier Detector io layers params NetSpec to_proto'''.split()
SUBMODULES = ['io', 'draw', 'net_spec', 'coord_map', 'proto.caffe_pb2', 'classifier', 'detector',
              'pycaffe']
NET_NAMES = '''_forward _backward reshape clear_param_diffs copy_from share_with _blob_loss_weights
    _bottom_ids _top_ids _blobs layers _blob_names _layer_names _inputs _outputs _set_input_arrays
    save save_hdf5 load_hdf5 blobs blob_loss_weights layer_dict params forward backward forward_all
    forward_backward_all set_input_arrays _batch inputs outputs top_names bottom_names'''.split()
SOLVER_NAMES = '''net test_nets iter add_callback solve step restore snapshot share_weights apply_update
    param lr'''.split()
DRAW_NAMES = '''get_pooling_types_dict get_edge_label get_layer_lr_mult get_layer_label
    choose_color_by_layertype get_pydot_graph draw_net draw_net_to_file'''.split()

NET = '''name: "n"
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 4 dim: 3 } shape { dim: 4 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "relu" type: "ReLU" bottom: "ip" top: "ip" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip" top: "out"
        inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "out" bottom: "label" top: "loss"
        loss_weight: 2 }
'''
DEPLOY = '''name: "d"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 4 dim: 3 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "relu" type: "ReLU" bottom: "ip" top: "ip" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip" top: "out"
        inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.3 } } }
'''


def net_file(tmp_path, text=NET, name='net.prototxt'):
    path = tmp_path / name
    path.write_text(text)
    return os.fspath(path)


def solver_file(tmp_path, extra=''):
    net = net_file(tmp_path)
    path = tmp_path / 'solver.prototxt'
    path.write_text('net: "%s" base_lr: 0.1 lr_policy: "step" gamma: 0.5 stepsize: 2 momentum: 0.9'
                    ' max_iter: 4 snapshot_prefix: "%s" random_seed: 3 %s'
                    % (net, tmp_path / 'snap', extra))
    return os.fspath(path)


def fill(net, seed=0):
    r = np.random.default_rng(seed)
    net.blobs['data'].data[...] = r.normal(size=net.blobs['data'].data.shape)
    if 'label' in net.blobs:
        net.blobs['label'].data[...] = r.integers(0, 2, size=net.blobs['label'].data.shape)


# --------------------------------------------------------------------- names
def test_every_pycaffe_name_exists(tmp_path):
    missing = [n for n in MODULE_NAMES if not hasattr(caffe, n)]
    for sub in SUBMODULES:
        try:
            importlib.import_module('minicaffe.' + sub)
        except ImportError:
            missing.append('module ' + sub)
    net = caffe.Net(net_file(tmp_path), caffe.TRAIN)
    missing += ['Net.' + n for n in NET_NAMES if not hasattr(net, n)]
    missing += ['Blob.' + n for n in 'shape num channels height width count reshape data diff'.split()
                if not hasattr(net.blobs['data'], n)]
    missing += ['Layer.' + n for n in 'blobs setup reshape type'.split() if not hasattr(net.layers[1], n)]
    solver = caffe.get_solver(solver_file(tmp_path))
    missing += ['Solver.' + n for n in SOLVER_NAMES if not hasattr(solver, n)]
    missing += ['SolverParameter.' + n for n in 'max_iter display layer_wise_reduce base_lr'.split()
                if not hasattr(solver.param, n)]
    missing += ['draw.' + n for n in DRAW_NAMES if not hasattr(draw, n)]
    assert missing == []


def test_module_level_values():
    assert isinstance(caffe.__version__, str) and caffe.__version__.count('.') == 2
    assert (caffe.TRAIN, caffe.TEST) == (pb.TRAIN, pb.TEST)
    types_ = caffe.layer_type_list()
    assert types_ == sorted(types_) and {'Convolution', 'LSTM', 'Python', 'Input'} <= set(types_)
    from minicaffe.detector import Detector
    from minicaffe.pycaffe import Net, SGDSolver
    assert (Detector, Net, SGDSolver) == (caffe.Detector, caffe.Net, caffe.SGDSolver)
    with pytest.raises(AttributeError):
        importlib.import_module('minicaffe.pycaffe').no_such_name
    caffe.set_mode_cpu()
    caffe.set_device(0)                          # remembered for GPU mode; no device needed
    from minicaffe import mode
    assert mode.mode() == 'cpu'


def test_set_random_seed_makes_fillers_repeat(tmp_path):
    path = net_file(tmp_path)
    caffe.set_random_seed(5)
    a = caffe.Net(path, caffe.TRAIN).params['ip'][0].data.copy()
    caffe.set_random_seed(5)
    b = caffe.Net(path, caffe.TRAIN).params['ip'][0].data.copy()
    caffe.set_random_seed(6)
    c = caffe.Net(path, caffe.TRAIN).params['ip'][0].data.copy()
    assert np.array_equal(a, b) and not np.array_equal(a, c)


# ----------------------------------------------------------------------- Net
def test_net_views(tmp_path):
    net = caffe.Net(net_file(tmp_path), caffe.TRAIN)
    assert net._layer_names == ['data', 'ip', 'relu', 'ip2', 'loss']
    assert list(net.layer_dict) == net._layer_names
    assert net.layer_dict['ip'] is net.layers[1] and net.layer_dict['ip'].type == 'InnerProduct'
    assert net.inputs == ['data', 'label'] and net.outputs == ['loss']
    assert [net._blob_names[i] for i in net._inputs] == net.inputs
    assert [net._blob_names[i] for i in net._outputs] == net.outputs
    assert net._blobs[net._blob_names.index('ip')] is net.blobs['ip']
    assert net.top_names['relu'] == ['ip'] and net.bottom_names['loss'] == ['out', 'label']
    assert [net._blob_names[i] for i in net._bottom_ids(4)] == ['out', 'label']
    assert [net._blob_names[i] for i in net._top_ids(1)] == ['ip']
    assert net._blob_loss_weights == [0, 0, 0, 0, 2]
    assert net.blob_loss_weights == dict(zip(net._blob_names, [0, 0, 0, 0, 2]))
    assert list(net.params) == ['ip', 'ip2'] and net.params['ip'][0].shape == (5, 3)


def test_blob_shape_accessors_and_reshape():
    b = caffe.Blob((2, 3, 4, 5))
    assert (b.num, b.channels, b.height, b.width, b.count) == (2, 3, 4, 5, 120)
    b.reshape(6, 7)
    assert b.shape == (6, 7) and b.data.shape == (6, 7) and (b.height, b.width) == (1, 1)
    b.reshape((1, 2, 3))
    assert b.count == 6


def test_layer_setup_and_reshape_by_hand(tmp_path):
    lp = parse_text('name: "r" type: "ReLU" relu_param { negative_slope: 0.5 }', pb.LayerParameter())
    from minicaffe.layers.base import layer_class
    layer = layer_class('ReLU')(lp)
    x, y = caffe.Blob((2, 3)), caffe.Blob()
    layer.setup([x], [y])
    layer.reshape([x], [y])
    assert layer.type == 'ReLU' and y.shape == (2, 3)
    x.data[...] = [[-2, 1, 0], [4, -1, 3]]
    layer.forward([x], [y])
    np.testing.assert_array_equal(y.data, [[-1, 1, 0], [4, -0.5, 3]])
    layer.blobs.add_blob(2, 2)                   # pycaffe's BlobVec.add_blob
    assert layer.blobs[0].shape == (2, 2)


def test_net_reshape_follows_a_new_input_shape(tmp_path):
    net = caffe.Net(net_file(tmp_path, DEPLOY), caffe.TEST)
    net.blobs['data'].reshape(7, 3)
    net.reshape()
    assert net.blobs['out'].data.shape == (7, 2)
    assert net.forward()['out'].shape == (7, 2)


def test_forward_all_batches_and_drops_the_padding(tmp_path):
    net = caffe.Net(net_file(tmp_path, DEPLOY), caffe.TEST)
    x = np.random.default_rng(1).normal(size=(10, 3)).astype(np.float32)   # batches 4 + 4 + 2
    out = net.forward_all(data=x, blobs=['ip'])
    assert set(out) == {'out', 'ip'} and out['out'].shape == (10, 2)
    for i in range(0, 10, 4):
        chunk = np.zeros((4, 3), np.float32)
        chunk[:len(x[i:i + 4])] = x[i:i + 4]
        ref = net.forward(data=chunk)['out'][:len(x[i:i + 4])]
        np.testing.assert_array_equal(out['out'][i:i + 4], ref)
    batches = list(net._batch({'data': x}))
    assert [b['data'].shape for b in batches] == [(4, 3)] * 3 and not batches[-1]['data'][2:].any()


def test_forward_backward_all_returns_outputs_and_input_diffs(tmp_path):
    text = DEPLOY.replace('name: "d"', 'name: "d" force_backward: true')
    net = caffe.Net(net_file(tmp_path, text), caffe.TEST)
    r = np.random.default_rng(2)
    x = r.normal(size=(8, 3)).astype(np.float32)
    dy = r.normal(size=(8, 2)).astype(np.float32)
    outs, diffs = net.forward_backward_all(data=x, out=dy)
    assert outs['out'].shape == (8, 2) and diffs['data'].shape == (8, 3)
    w2, w1 = net.params['ip2'][0].data, net.params['ip'][0].data
    h = x @ w1.T + net.params['ip'][1].data
    want = ((dy @ w2) * (h > 0)) @ w1
    np.testing.assert_allclose(diffs['data'], want, rtol=1e-5, atol=1e-6)


def test_forward_and_backward_with_start_end_and_kwargs(tmp_path):
    net = caffe.Net(net_file(tmp_path), caffe.TRAIN)
    fill(net)
    out = net.forward(end='ip')
    assert set(out) == {'ip'}
    with pytest.raises(MinicaffeError, match='do not match net inputs'):
        net.forward(data=np.zeros((4, 3)))
    with pytest.raises(MinicaffeError, match='no layer named'):
        net.forward(start='nope')
    net.forward()
    diffs = net.backward(diffs=['ip'])
    assert set(diffs) == {'data', 'label', 'ip'}


def test_set_input_arrays_feeds_a_memory_data_net(tmp_path):
    text = '''layer { name: "m" type: "MemoryData" top: "data" top: "label"
                      memory_data_param { batch_size: 2 channels: 1 height: 1 width: 3 } }'''
    net = caffe.Net(net_file(tmp_path, text), caffe.TEST)
    data = np.arange(12, dtype=np.float32).reshape(4, 1, 1, 3)
    labels = np.array([5, 6, 7, 8], np.float32)
    net.set_input_arrays(data, labels)
    net.forward()
    np.testing.assert_array_equal(net.blobs['data'].data, data[:2])
    net._set_input_arrays(data[2:], labels[2:])
    net.forward()
    np.testing.assert_array_equal(net.blobs['label'].data.ravel(), [7, 8])


def test_weights_round_trip_caffemodel_and_hdf5(tmp_path):
    path = net_file(tmp_path)
    net = caffe.Net(path, caffe.TRAIN)
    net.save(os.fspath(tmp_path / 'w.caffemodel'))
    net.save_hdf5(os.fspath(tmp_path / 'w.h5'))
    for loader in ('copy_from', 'load_hdf5', 'weights'):
        other = caffe.Net(path, caffe.TRAIN)
        if loader == 'copy_from':
            other.copy_from(os.fspath(tmp_path / 'w.caffemodel'))
        elif loader == 'load_hdf5':
            other.load_hdf5(os.fspath(tmp_path / 'w.h5'))
        else:
            other = caffe.Net(path, caffe.TEST, weights=os.fspath(tmp_path / 'w.caffemodel'))
        for name in net.params:
            for a, b in zip(net.params[name], other.params[name]):
                np.testing.assert_array_equal(a.data, b.data)


def test_share_with_shares_data_but_not_diffs(tmp_path):
    # Caffe's ShareTrainedLayersWith: ShareData only; the target keeps its own diffs
    path = net_file(tmp_path)
    src, dst = caffe.Net(path, caffe.TRAIN), caffe.Net(path, caffe.TRAIN)
    dst.share_with(src)
    src.params['ip'][0].data[0, 0] = 42
    assert dst.params['ip'][0].data[0, 0] == 42
    fill(dst)
    dst.forward()
    dst.backward()
    assert np.abs(dst.params['ip'][0].diff).max() > 0 and not src.params['ip'][0].diff.any()


def test_share_with_refuses_mismatched_shapes(tmp_path):
    src = caffe.Net(net_file(tmp_path), caffe.TRAIN)
    other = caffe.Net(net_file(tmp_path, NET.replace('num_output: 5', 'num_output: 6'), 'b.prototxt'),
                      caffe.TRAIN)
    with pytest.raises(MinicaffeError, match='layer "ip" param 0 shape'):
        other.share_with(src)


# -------------------------------------------------------------------- Solver
def test_solver_properties(tmp_path):
    s = caffe.get_solver(solver_file(tmp_path))
    assert s.type == 'SGD' and s.iter == 0 and s.test_nets == []
    assert s.net.phase == caffe.TRAIN and s.param.max_iter == 4
    assert s.lr == pytest.approx(0.1)
    s.step(2)
    assert s.iter == 2 and s.lr == pytest.approx(0.05)      # step policy: gamma at iter 2
    s.param.base_lr = 1.0                                    # pycaffe may set base_lr
    assert s.lr == pytest.approx(0.5)


def test_apply_update_is_one_step_of_training(tmp_path):
    # forward/backward by hand + apply_update() == step(1), iteration counted
    # (momentum and the step lr policy: a missed iteration count would change the rate)
    a = caffe.get_solver(solver_file(tmp_path))
    b = caffe.get_solver(solver_file(tmp_path))     # random_seed: the same fillers
    for name in a.net.params:
        for x, y in zip(a.net.params[name], b.net.params[name]):
            np.testing.assert_array_equal(x.data, y.data)
    for it in range(3):
        a.step(1)
        b.net.clear_param_diffs()
        b.net.forward()
        b.net.backward()
        b.apply_update()
        assert b.iter == a.iter == it + 1
        for name in a.net.params:
            for x, y in zip(a.net.params[name], b.net.params[name]):
                np.testing.assert_array_equal(x.data, y.data)


def test_share_weights_gives_a_net_the_train_weights(tmp_path):
    s = caffe.get_solver(solver_file(tmp_path))
    net = caffe.Net(net_file(tmp_path, DEPLOY, 'deploy.prototxt'), caffe.TEST)
    s.share_weights(net)
    s.step(1)
    for name in net.params:
        for x, y in zip(net.params[name], s.net.params[name]):
            np.testing.assert_array_equal(x.data, y.data)


def test_snapshot_restore_and_solve(tmp_path):
    s = caffe.get_solver(solver_file(tmp_path))
    s.step(2)
    s.snapshot()
    state = tmp_path / 'snap_iter_2.solverstate'
    assert state.exists() and (tmp_path / 'snap_iter_2.caffemodel').exists()
    s.solve()
    assert s.iter == 4
    t = caffe.get_solver(solver_file(tmp_path))
    t.restore(os.fspath(state))
    assert t.iter == 2
    t.solve()
    for name in s.net.params:
        for x, y in zip(s.net.params[name], t.net.params[name]):
            np.testing.assert_array_equal(x.data, y.data)


# ---------------------------------------------------------------------- draw
CONV = parse_text('''name: "c" type: "Convolution" param { lr_mult: 2 }
    convolution_param { num_output: 8 kernel_size: 3 stride: 2 pad: 1 }''', pb.LayerParameter())
POOL = parse_text('name: "p" type: "Pooling" pooling_param { pool: AVE kernel_size: 2 stride: 2 }',
                  pb.LayerParameter())


def test_draw_helpers():
    assert draw.get_pooling_types_dict() == {0: 'MAX', 1: 'AVE', 2: 'STOCHASTIC'}
    assert draw.get_edge_label(CONV) == '8' and draw.get_edge_label(POOL) == '""'
    data = parse_text('name: "d" type: "Data" data_param { batch_size: 64 }', pb.LayerParameter())
    assert draw.get_edge_label(data) == 'Batch 64'
    assert draw.get_layer_lr_mult(CONV) == (2.0, 1.0)
    with pytest.raises(ValueError, match='Pooling layers do not have'):
        draw.get_layer_lr_mult(POOL)
    assert draw.get_layer_label(CONV, 'TB', display_lrm=True) == \
        '"c (Convolution) kernel size: 3 stride: 2 pad: 1 lr mult: 2.0, 1.0"'
    assert draw.get_layer_label(POOL, 'LR') == r'"p\n(Pooling AVE)\nkernel size: 2\nstride: 2\npad: 0"'
    assert draw.choose_color_by_layertype('SoftmaxWithLoss') != draw.choose_color_by_layertype('Pooling')


def test_draw_net_takes_pycaffes_positional_arguments(tmp_path):
    # python/draw_net.py: draw_net_to_file(net, file, rankdir, phase, display_lrm)
    net = parse_text(NET, pb.NetParameter())
    src = draw.draw_net(net, 'LR', 'dot', None, True).decode()
    assert 'lr mult: 1.0, 1.0' in src
    draw.draw_net_to_file(net, os.fspath(tmp_path / 'n.dot'), 'TB', caffe.TRAIN, False)
    text = (tmp_path / 'n.dot').read_text()
    assert 'rankdir=TB' in text and 'lr mult' not in text
    assert '[label="ip"]' in text and '[label="ip"]' not in draw.get_dot_source(net, label_edges=False)


def test_get_pydot_graph(monkeypatch):
    net = parse_text(NET, pb.NetParameter())
    monkeypatch.setitem(sys.modules, 'pydot', None)
    with pytest.raises(MinicaffeError, match='needs the pydot package'):
        draw.get_pydot_graph(net, 'LR')
    seen = []
    fake = types.ModuleType('pydot')
    fake.graph_from_dot_data = lambda src: seen.append(src) or ['graph']
    monkeypatch.setitem(sys.modules, 'pydot', fake)
    assert draw.get_pydot_graph(net, 'BT', label_edges=False) == 'graph'
    assert 'rankdir=BT' in seen[0] and '[label="ip"]' not in seen[0]
