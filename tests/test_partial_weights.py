"""Silent partial loads (issue 11, section 2): a weights file that lacks some of
the net's learnable layers -- a .caffemodel truncated at a layer boundary decodes
cleanly -- is reported: a warning names the layers left at their fillers,
``strict=True`` makes it an error before anything is copied, a solver state's
weights must be complete, and the CLI's ``--weights`` warns."""
import logging

import numpy as np
import pytest

import minicaffe as caffe
from minicaffe.commands import cli
from minicaffe import protoio
from minicaffe.errors import IncompleteWeightsError, WeightsError
from minicaffe.protoio import pb
from minicaffe.solvers import Solver

from test_solve import make_case

NET = '''name: "three"
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "x" top: "h"
        inner_product_param { num_output: 4 weight_filler { type: "gaussian" } } }
layer { name: "relu" type: "ReLU" bottom: "h" top: "h" }
layer { name: "ip2" type: "InnerProduct" bottom: "h" top: "h2"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" } } }
layer { name: "ip3" type: "InnerProduct" bottom: "h2" top: "y"
        param { name: "w3" } inner_product_param { num_output: 3 bias_term: false } }
layer { name: "ip3b" type: "InnerProduct" bottom: "y" top: "z"
        param { name: "w3" } inner_product_param { num_output: 3 bias_term: false } }
'''


@pytest.fixture
def files(tmp_path):
    path = tmp_path / 'net.prototxt'
    path.write_text(NET)
    net = caffe.Net(str(path), caffe.TEST)
    rng = np.random.default_rng(0)
    for blobs in net.params.values():
        for b in blobs:
            b.data[...] = rng.standard_normal(b.shape)
    full = tmp_path / 'full.caffemodel'
    net.save(str(full))
    net.save_hdf5(str(tmp_path / 'full.h5'))
    return path, full, net


def _varint(raw, i):
    shift = value = 0
    while True:
        b = raw[i]
        value |= (b & 0x7F) << shift
        i += 1
        shift += 7
        if not b & 0x80:
            return value, i


def layer_offsets(raw):
    """Byte offsets where each top-level ``layer`` (field 100) record starts."""
    offsets, i = [], 0
    while i < len(raw):
        start = i
        tag, i = _varint(raw, i)
        assert tag & 7 == 2            # a NetParameter's fields here are all length-delimited
        n, i = _varint(raw, i)
        i += n
        if tag >> 3 == 100:
            offsets.append(start)
    return offsets


def truncate_after(full, out, keep_layers):
    """``full`` cut at the byte boundary after its first ``keep_layers`` layers."""
    raw = full.read_bytes()
    cut = raw[:layer_offsets(raw)[keep_layers]]
    assert len(pb.NetParameter.FromString(cut).layer) == keep_layers
    out.write_bytes(cut)
    return out


def fresh_values(path):
    net = caffe.Net(str(path), caffe.TEST)
    return net, {k: [b.data.copy() for b in v] for k, v in net.params.items()}


def test_full_file_loads_without_a_warning(files, caplog):
    path, full, src = files
    net = caffe.Net(str(path), caffe.TEST)
    with caplog.at_level(logging.WARNING, logger='minicaffe'):
        assert net.copy_from(str(full), strict=True) == []
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize('keep, missing', [(2, ['ip2', 'ip3', 'ip3b']), (4, ['ip3', 'ip3b']), (5, [])])
def test_truncated_caffemodel_names_the_unfilled_layers(files, tmp_path, caplog, keep, missing):
    # ip3b shares its only param with ip3: filled when ip3 is, unfilled when not
    path, full, src = files
    cut = truncate_after(full, tmp_path / 'cut.caffemodel', keep)
    net, before = fresh_values(path)
    with caplog.at_level(logging.WARNING, logger='minicaffe'):
        assert net.copy_from(str(cut)) == missing
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    if missing:
        assert len(warned) == 1 and ', '.join(missing) in warned[0] and 'filler' in warned[0]
        np.testing.assert_array_equal(net.params['ip3'][0].data, before['ip3'][0])
    else:
        assert not warned
    np.testing.assert_array_equal(net.params['ip1'][0].data, src.params['ip1'][0].data)


def test_strict_is_an_error_and_copies_nothing(files, tmp_path):
    path, full, src = files
    cut = truncate_after(full, tmp_path / 'cut.caffemodel', 2)
    net, before = fresh_values(path)
    with pytest.raises(IncompleteWeightsError, match=r'cut\.caffemodel.*lacks 3 learnable layer.*ip2, ip3, ip3b'):
        net.copy_from(str(cut), strict=True)
    np.testing.assert_array_equal(net.params['ip1'][0].data, before['ip1'][0])
    with pytest.raises(IncompleteWeightsError, match='ip2, ip3'):
        caffe.Net(str(path), caffe.TEST, weights=str(cut), strict=True)
    caffe.Net(str(path), caffe.TEST, weights=str(full), strict=True)


def test_hdf5_weights_lacking_a_layer(files, tmp_path, caplog):
    import h5py
    path, full, src = files
    cut = tmp_path / 'cut.h5'
    with h5py.File(str(tmp_path / 'full.h5'), 'r') as a, h5py.File(str(cut), 'w') as b:
        g = b.create_group('data')
        for name in a['data']:
            if name != 'ip2':
                a.copy('data/' + name, g)
    net, _ = fresh_values(path)
    with caplog.at_level(logging.WARNING, logger='minicaffe'):
        assert net.copy_from(str(cut)) == ['ip2']
    assert any('ip2' in r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
    with pytest.raises(IncompleteWeightsError, match='ip2'):
        net.copy_from(str(cut), strict=True)
    # a .h5-named caffemodel that is incomplete says so (not "neither HDF5 nor caffemodel")
    named_h5 = truncate_after(full, tmp_path / 'cut2.h5', 2)
    with pytest.raises(IncompleteWeightsError, match='ip2, ip3'):
        net.copy_from(str(named_h5), strict=True)


def test_several_files_fill_each_others_gaps(files, tmp_path, caplog):
    from minicaffe import weights
    path, full, src = files
    first = truncate_after(full, tmp_path / 'first.caffemodel', 2)
    net, _ = fresh_values(path)
    with caplog.at_level(logging.WARNING, logger='minicaffe'):
        assert weights.load_weight_files(net, [str(first), str(full)]) == []
        assert weights.load_weight_files(net, [str(first), str(first)]) == ['ip2', 'ip3', 'ip3b']
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warned) == 1 and 'ip2, ip3, ip3b' in warned[0]


@pytest.mark.parametrize('command', ['test', 'time'])
def test_cli_weights_warns_with_the_list(files, tmp_path, capsys, command):
    path, full, src = files
    cut = truncate_after(full, tmp_path / 'cut.caffemodel', 4)
    argv = (['test', '--model', str(path), '--weights', str(cut), '--iterations', '1']
            if command == 'test' else ['time', str(path), '--weights', str(cut), '--iterations', '1'])
    assert cli.main(argv) == 0
    err = capsys.readouterr().err
    assert 'keep their filler values: ip3, ip3b' in err


def test_train_weights_warns_with_the_list(tmp_path, capsys):
    solver_path = make_case(tmp_path, solver_extra='max_iter: 1')
    solver = Solver(solver_path)
    empty = pb.NetParameter(name='other')
    empty.layer.add(name='nothing_here', type='ReLU')
    w = tmp_path / 'other.caffemodel'
    protoio.write_binary_atomic(str(w), empty)
    assert cli.main(['train', '--solver', solver_path, '--weights', str(w)]) == 0
    err = capsys.readouterr().err
    learnable = [n for n, v in solver.net.params.items()]
    assert learnable and 'keep their filler values: %s' % ', '.join(learnable) in err


def test_restore_with_truncated_learned_net_is_an_error(tmp_path):
    solver = Solver(make_case(tmp_path))
    solver.step(1)
    model, state = solver.snapshot()
    msg = pb.NetParameter.FromString(open(model, 'rb').read())
    learnable = [i for i, l in enumerate(msg.layer) if len(l.blobs)]
    del msg.layer[learnable[-1]:]
    protoio.write_binary_atomic(model, msg)
    fresh = Solver(make_case(tmp_path / 'b'))
    with pytest.raises(WeightsError, match='learned_net: .*lacks 1 learnable layer'):
        fresh.restore(state)
    assert fresh.iter == 0
