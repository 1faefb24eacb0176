"""`minicaffe summary`: shapes, params, FLOPs and memory of every layer, checked on
LeNet with numbers computed by hand, and one case for each FLOP rule."""
import os
import textwrap

import minicaffe as caffe
from minicaffe.commands import cli, summary

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LENET = os.path.join(ROOT, 'prototxt', 'mnist', 'lenet.prototxt')


def _rows(path, phase=caffe.TEST, **kw):
    return {r.name: r for r in summary.summarize(caffe.Net(str(path), phase, **kw))}


def test_lenet_by_hand():
    rows = _rows(LENET)
    # conv1: 64x20x24x24 outputs, 1x5x5 multiply-adds each, plus the bias
    assert rows['conv1'].flops == 2 * (64 * 20 * 24 * 24) * 25 + 64 * 20 * 24 * 24
    assert rows['conv1'].params == 20 * 25 + 20
    # pool1: 2x2 max over 64x20x12x12 outputs
    assert rows['pool1'].flops == 64 * 20 * 12 * 12 * 4 and rows['pool1'].params == 0
    # conv2: 20x5x5 multiply-adds per output
    assert rows['conv2'].flops == 2 * (64 * 50 * 8 * 8) * 500 + 64 * 50 * 8 * 8
    assert rows['conv2'].params == 50 * 500 + 50
    assert rows['pool2'].flops == 64 * 50 * 4 * 4 * 4
    # ip1: 800 inputs per output
    assert rows['ip1'].flops == 2 * 64 * 500 * 800 + 64 * 500
    assert rows['ip1'].params == 800 * 500 + 500
    assert rows['relu1'].flops == 64 * 500                     # element-wise default
    assert rows['relu1'].top_shapes == ['64 500 (in-place)']
    assert rows['ip2'].flops == 2 * 64 * 10 * 500 + 64 * 10
    assert rows['prob'].flops == 3 * 64 * 10
    assert rows['data'].flops == 0 and rows['data'].top_shapes == ['64 1 28 28']
    assert sum(r.params for r in rows.values()) == 431080
    # memory: 4 bytes per top value, in-place tops again: Caffe's "Memory required for data"
    tops = [64 * 784, 64 * 20 * 576, 64 * 20 * 144, 64 * 50 * 64, 64 * 50 * 16, 64 * 500,
            64 * 500, 640, 640]
    assert sum(r.memory for r in rows.values()) == 4 * sum(tops) == 5172224
    assert rows['conv1'].memory == 4 * 64 * 20 * 576


def test_command_prints_the_table_and_totals(capsys):
    assert cli.main(['-q', 'summary', LENET]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith('Net LeNet (') and out[0].endswith('phase TRAIN')
    assert out[1].split() == ['layer', 'type', 'top', 'shapes', 'params', 'FLOPs', 'memory', '(B)']
    conv1 = [l for l in out if l.startswith('conv1 ')][0].split()
    assert conv1 == ['conv1', 'Convolution', '64', '20', '24', '24', '520', '37,601,280', '2,949,120']
    total = [l for l in out if l.startswith('total ')][0].split()
    assert total == ['total', '9', 'layers', '431,080', '295,454,720', '5,172,224']
    assert 'Memory required for data: 5172224 (4.93 MiB)' in out
    assert 'FLOPs per forward pass: 295,454,720 (295 MFLOP)' in out


def _write(tmp_path, text):
    path = tmp_path / 'net.prototxt'
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_deconvolution_lrn_global_pooling_and_groups(tmp_path):
    path = _write(tmp_path, '''\
        layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 4 dim: 5 dim: 5 } } }
        layer { name: "conv" type: "Convolution" bottom: "x" top: "c"
                convolution_param { num_output: 6 kernel_size: 3 group: 2 bias_term: false } }
        layer { name: "deconv" type: "Deconvolution" bottom: "c" top: "d"
                convolution_param { num_output: 4 kernel_size: 2 stride: 2 } }
        layer { name: "lrn" type: "LRN" bottom: "d" top: "n" lrn_param { local_size: 3 } }
        layer { name: "lrn2" type: "LRN" bottom: "n" top: "n2"
                lrn_param { local_size: 3 norm_region: WITHIN_CHANNEL } }
        layer { name: "gp" type: "Pooling" bottom: "n2" top: "p"
                pooling_param { pool: AVE global_pooling: true } }
        ''')
    rows = _rows(path)
    # conv: top 2x6x3x3, (4/2)x3x3 multiply-adds each, no bias
    assert rows['conv'].flops == 2 * (2 * 6 * 9) * 18 and rows['conv'].params == 6 * 2 * 9
    # deconv: every input value times (4/1)x2x2 weights, plus the bias on the 2x4x6x6 top
    assert rows['deconv'].flops == 2 * (2 * 6 * 9) * 16 + 2 * 4 * 6 * 6
    assert rows['lrn'].flops == (2 * 4 * 6 * 6) * (2 * 3 + 3)
    assert rows['lrn2'].flops == (2 * 4 * 6 * 6) * (2 * 9 + 3)
    assert rows['gp'].flops == 2 * 4 * 36                  # a 6x6 kernel per output
    assert rows['gp'].top_shapes == ['2 4 1 1']


def test_recurrent_layers(tmp_path):
    T, N, D, H = 3, 2, 5, 4
    path = _write(tmp_path, '''\
        layer { name: "in" type: "Input" top: "x" top: "cont" top: "s"
                input_param { shape { dim: %d dim: %d dim: %d } shape { dim: %d dim: %d }
                              shape { dim: %d dim: 7 } } }
        layer { name: "lstm" type: "LSTM" bottom: "x" bottom: "cont" top: "h"
                recurrent_param { num_output: %d } }
        layer { name: "lstm_s" type: "LSTM" bottom: "x" bottom: "cont" bottom: "s" top: "hs"
                recurrent_param { num_output: %d } }
        layer { name: "rnn" type: "RNN" bottom: "x" bottom: "cont" top: "r"
                recurrent_param { num_output: %d } }
        ''' % (T, N, D, T, N, N, H, H, H))
    rows = _rows(path)
    rows_tn = T * N
    lstm = 2 * rows_tn * 4 * H * (D + H) + rows_tn * 4 * H + 10 * rows_tn * H
    assert rows['lstm'].flops == lstm
    assert rows['lstm'].params == 4 * H * D + 4 * H + 4 * H * H
    assert rows['lstm_s'].flops == lstm + 2 * N * 4 * H * 7 + rows_tn * 4 * H
    assert rows['rnn'].flops == (2 * rows_tn * H * (D + H) + 2 * rows_tn * H * H
                                 + 2 * rows_tn * (H + H))
    assert rows['lstm'].top_shapes == ['%d %d %d' % (T, N, H)]


def test_shared_params_are_counted_once_and_splits_cost_nothing(tmp_path):
    path = _write(tmp_path, '''\
        layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
        layer { name: "a" type: "InnerProduct" bottom: "x" top: "a" param { name: "w" }
                param { name: "b" } inner_product_param { num_output: 4 } }
        layer { name: "b" type: "InnerProduct" bottom: "x" top: "b" param { name: "w" }
                param { name: "b" } inner_product_param { num_output: 4 } }
        layer { name: "sum" type: "Eltwise" bottom: "a" bottom: "b" top: "s" }
        layer { name: "loss" type: "EuclideanLoss" bottom: "s" bottom: "a" top: "l" }
        ''')
    rows = summary.summarize(caffe.Net(path, caffe.TRAIN))
    by = {r.name: r for r in rows}
    assert by['a'].params == 16 and by['b'].params is None
    splits = [r for r in rows if r.type == 'Split']
    assert splits and all(r.flops == 0 for r in splits)
    assert by['sum'].flops == 8                              # element-wise: one per top value
    assert by['loss'].top_shapes == ['(scalar)'] and by['loss'].memory == 4
    text = '\n'.join(summary.format_table(rows))
    assert ' shared ' in text


def test_phase_and_stage_select_the_layers(capsys):
    net = os.path.join(ROOT, 'prototxt', 'lrcn', 'caption', 'lrcn_word_to_preds.deploy.prototxt')
    assert cli.main(['-q', 'summary', net, '--phase', 'test', '--stage', 'factored,2-layer']) == 0
    out = capsys.readouterr().out
    assert '\nlstm2 ' in out and 'LSTM' in out
    assert cli.main(['-q', 'summary', net, '--phase', 'TEST', '--stage', 'unfactored']) == 0
    assert '\nlstm2 ' not in capsys.readouterr().out


def test_every_flop_rule_is_a_known_layer_type():
    known = set(caffe.layer_type_list())
    assert set(summary.FLOP_RULES) <= known
    assert {t for t in summary.NO_FLOPS if t in known} >= {'Input', 'Split', 'Reshape', 'Concat'}
