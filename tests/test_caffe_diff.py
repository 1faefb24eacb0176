"""tools/caffe_diff.py: its random nets are valid, and -- where real Caffe is at hand
(MINICAFFE_CAFFE_BIN=/path/to/caffe) -- minicaffe agrees with it on them."""
import logging
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'tools'))
import caffe_diff  # noqa: E402

import minicaffe as caffe  # noqa: E402

CAFFE = os.environ.get('MINICAFFE_CAFFE_BIN')
needs_caffe = pytest.mark.skipif(not (CAFFE and os.access(CAFFE, os.X_OK)),
                                 reason='set MINICAFFE_CAFFE_BIN to a real Caffe binary')


def _input_net(builder, rs, tmp_path, shape, loss=0):
    """The random net with an Input layer of ``shape`` instead of its HDF5 data."""
    n, c, h, w = shape
    text = caffe_diff.net_text(builder, 'list.txt', n, loss=loss, rs=rs)
    text = text.replace('type: "HDF5Data" top: "data" top: "label" top: "target" top: "target01"'
                        ' hdf5_data_param { source: "list.txt" batch_size: %d }' % n,
                        'type: "Input" top: "data" top: "label" top: "target" top: "target01"'
                        ' input_param { shape { dim: %d dim: %d dim: %d dim: %d } shape { dim: %d }'
                        ' shape { dim: %d dim: 3 } shape { dim: %d dim: 3 } }'
                        % (n, c, h, w, n, n, n))
    assert 'HDF5Data' not in text
    path = tmp_path / 'net.prototxt'
    path.write_text(text)
    logging.getLogger('minicaffe').setLevel(logging.WARNING)
    return caffe.Net(str(path), caffe.TRAIN)


def test_larger_kernels_reach_the_stacked_winograd_forms(monkeypatch, tmp_path):
    """--max-kernel 7 draws 5x5 and strided kernels, which forced Winograd runs by
    winograd.Blocks or F(2x2,5x5) and by winograd.Phases: the forms the default
    draw (kernels up to 4) never reaches.  The default draws what it drew
    before the option, seed for seed."""
    from minicaffe import winograd
    monkeypatch.setattr(winograd, 'FORCE', 'winograd')
    forms = set()
    for seed in range(60):
        rs = np.random.RandomState(seed)
        builder = caffe_diff.NetBuilder(rs, 2, 3, 13, 13, classes=3, max_kernel=7).build(8)
        if builder is None:
            continue
        net = _input_net(builder, rs, tmp_path, (2, 3, 13, 13))
        forms.update(type(L.stacking).__name__ if L.stacking else repr(L.tiling)
                     for L in net.layers if getattr(L, 'winograd', False))
    assert {'Blocks', 'Phases'} <= forms or {'F(2x2,5x5)', 'Phases'} <= forms, forms
    for seed in range(5):
        a = caffe_diff.NetBuilder(np.random.RandomState(seed), 2, 3, 9, 9, classes=3).build(6)
        b = caffe_diff.NetBuilder(np.random.RandomState(seed), 2, 3, 9, 9, classes=3,
                                  max_kernel=4).build(6)
        assert (a is None) == (b is None) and (a is None or a.layers == b.layers)


@pytest.mark.parametrize('seed', range(1, 9))
def test_random_nets_build_and_train_in_minicaffe(seed, tmp_path):
    rs = np.random.RandomState(seed)
    builder = caffe_diff.NetBuilder(rs, 2, 3, 9, 9, classes=3).build(6)
    assert builder is not None and len(builder.layers) >= 3
    net = _input_net(builder, rs, tmp_path, (2, 3, 9, 9), loss=seed % len(caffe_diff.LOSSES))
    net.blobs['data'].data[...] = rs.standard_normal((2, 3, 9, 9))
    net.blobs['label'].data[...] = [0, 2]
    net.blobs['target'].data[...] = rs.standard_normal((2, 3))
    net.blobs['target01'].data[...] = [[0, 1, 1], [1, 0, 0]]
    net.forward()
    net.backward()
    assert np.isfinite(net.blobs['loss'].data).all()


def test_special_nets_cover_every_listed_layer():
    kinds = {k for k, _ in caffe_diff.SPECIAL_LAYERS}
    assert {'ReLU', 'PReLU', 'ELU', 'AbsVal', 'Clip', 'Power', 'LRN', 'Pooling'} <= kinds


@needs_caffe
@pytest.mark.parametrize('seed', range(1, 6))
def test_minicaffe_agrees_with_real_caffe_on_random_nets(seed, tmp_path):
    assert caffe_diff.run_case(CAFFE, seed, str(tmp_path)) == []


@needs_caffe
@pytest.mark.parametrize('index', range(len(caffe_diff.SPECIAL_LAYERS)))
def test_minicaffe_agrees_with_real_caffe_on_special_values(index, tmp_path):
    assert caffe_diff.run_special_case(CAFFE, index, str(tmp_path)) == []


@pytest.mark.parametrize('seed', range(1, 6))
def test_random_recurrent_nets_build_in_minicaffe(seed):
    text, static = caffe_diff.recurrent_text(np.random.RandomState(seed), 3, 2, 4, 3)
    assert ('"LSTM"' in text) or ('"RNN"' in text)
    from minicaffe.protoio import parse_text, pb
    param = parse_text(text, pb.NetParameter())
    assert [lp.type for lp in param.layer][-2:] == ['SoftmaxWithLoss', 'Power']


@needs_caffe
@pytest.mark.parametrize('seed', range(1, 6))
def test_minicaffe_agrees_with_real_caffe_on_random_recurrent_nets(seed, tmp_path):
    assert caffe_diff.run_recurrent_case(CAFFE, seed, str(tmp_path)) == []


@pytest.mark.parametrize('seed', range(1, 13))
def test_random_solvers_are_accepted_by_minicaffe(seed, tmp_path):
    text, kind = caffe_diff.random_solver(np.random.RandomState(seed), 3)
    (tmp_path / 'net.prototxt').write_text(
        'layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 2 } } }\n'
        'layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param {'
        ' num_output: 2 } }')
    (tmp_path / 'solver.prototxt').write_text(text.replace('net.prototxt', str(tmp_path / 'net.prototxt'))
                                              .replace('"caffe"', '"%s"' % (tmp_path / 'caffe')))
    assert caffe.get_solver(str(tmp_path / 'solver.prototxt')).type == kind


@needs_caffe
@pytest.mark.parametrize('seed', range(1, 9))
def test_minicaffe_agrees_with_real_caffe_on_random_solvers(seed, tmp_path):
    assert caffe_diff.run_solver_case(CAFFE, seed, str(tmp_path)) == []


@needs_caffe
@pytest.mark.parametrize('seed', range(1, 41))
def test_minicaffe_accepts_and_refuses_what_real_caffe_does(seed, tmp_path):
    assert caffe_diff.run_validity_case(CAFFE, seed, str(tmp_path)) == []


@pytest.mark.parametrize('seed', range(1, 41))
def test_validity_cases_give_an_answer_or_a_clear_error_in_minicaffe(seed, tmp_path):
    """Without Caffe: each drawn layer either runs or is refused with a MinicaffeError."""
    rs = np.random.RandomState(seed)
    kind, param, bottoms = caffe_diff._random_layer(rs, (2, 3, 4, 5))
    text = ('layer { name: "in" type: "Input" top: "a" top: "b" input_param { shape { dim: 2'
            ' dim: 3 dim: 4 dim: 5 } shape { dim: 2 dim: 3 dim: 4 dim: 5 } } }\n'
            'layer { name: "l" type: "%s" %s top: "t" %s }\n'
            % (kind, ' '.join('bottom: "%s"' % b for b in 'ab'[:bottoms]), param))
    (tmp_path / 'net.prototxt').write_text(text)
    try:
        caffe.Net(str(tmp_path / 'net.prototxt'), caffe.TEST).forward()
    except caffe.MinicaffeError as e:
        assert 'net.prototxt' in str(e)
