"""minicaffe.draw: the graph of a net (graphviz)."""
import shutil

import pytest

from minicaffe import draw
from minicaffe.commands import draw_net
from minicaffe.errors import MinicaffeError
from minicaffe.protoio import pb, parse_text

NET = '''name: "toy"
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN }
        data_param { source: "train_lmdb" batch_size: 8 backend: LMDB } }
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TEST }
        data_param { source: "test_lmdb" batch_size: 4 backend: LMDB } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        param { lr_mult: 0 } param { lr_mult: 0 }
        convolution_param { num_output: 16 kernel_size: 5 stride: 2 pad: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "lstm" type: "LSTM" bottom: "conv1" bottom: "label" top: "h"
        recurrent_param { num_output: 32 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "h" bottom: "label" top: "loss" }
'''


def net():
    return parse_text(NET, pb.NetParameter())


def edges(src):
    return [line.strip() for line in src.splitlines() if '->' in line]


def test_all_phases_layout():
    src = draw.get_dot_source(net(), 'TB')
    assert 'rankdir=TB' in src
    # both data layers feed conv1; conv1 -> relu1 (in place) -> lstm, labelled by the blob
    e = edges(src)
    assert 'L0 -> L2 [label="data"];' in e and 'L1 -> L2 [label="data"];' in e
    assert 'L2 -> L3 [label="conv1"];' in e and 'L3 -> L4 [label="conv1"];' in e
    assert not any(x.startswith('L2 -> L4') for x in e)      # the in-place ReLU sits in the chain
    assert 'only TRAIN' in src and 'only TEST' in src and 'dashed' in src
    assert '16 out, 5x5 /2 pad 1' in src and 'frozen (lr_mult 0)' in src and '32 units' in src
    assert 'OUT_loss' in src                                   # the net output is a blob node


def test_phase_filter():
    src = draw.get_dot_source(net(), 'LR', phase='TEST')
    assert 'test_lmdb' in src and 'train_lmdb' not in src
    assert '(TEST)' in src


def test_bad_rankdir():
    with pytest.raises(MinicaffeError, match='rankdir'):
        draw.get_dot_source(net(), 'XY')


@pytest.mark.skipif(shutil.which('dot') is None, reason='graphviz dot is not installed')
@pytest.mark.parametrize('ext,magic', [('png', b'\x89PNG'), ('svg', b'<?xml')])
def test_render(tmp_path, ext, magic):
    p = tmp_path / 'toy.prototxt'
    p.write_text(NET)
    out = tmp_path / ('toy.' + ext)
    assert draw_net.main([str(p), str(out), '--rankdir', 'LR', '--phase', 'TRAIN']) == 0
    assert out.read_bytes().startswith(magic)


def test_missing_dot_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(draw.shutil, 'which', lambda name: None)
    with pytest.raises(MinicaffeError, match='apt-get install graphviz'):
        draw.draw_net(net(), ext='png')
    p = tmp_path / 'toy.prototxt'
    p.write_text(NET)
    assert draw_net.main([str(p), str(tmp_path / 'toy.dot')]) == 0     # .dot needs no graphviz
    assert (tmp_path / 'toy.dot').read_text().startswith('digraph')
    assert draw_net.main([str(p), str(tmp_path / 'toy.png')]) == 2


def test_unreadable_prototxt_names_the_file(tmp_path, capsys):
    p = tmp_path / 'broken.prototxt'
    p.write_text('layer { name: "x" type: }')
    assert draw_net.main([str(p), str(tmp_path / 'x.dot')]) == 2
    assert 'broken.prototxt:1' in capsys.readouterr().err


def test_display_lrm_on_the_command_line(tmp_path):
    p = tmp_path / 'toy.prototxt'
    p.write_text(NET)
    assert draw_net.main([str(p), str(tmp_path / 'a.dot')]) == 0
    assert 'lr mult' not in (tmp_path / 'a.dot').read_text()
    assert draw_net.main([str(p), str(tmp_path / 'b.dot'), '--display-lrm']) == 0
    assert 'lr mult: 0.0, 0.0' in (tmp_path / 'b.dot').read_text()      # conv1's frozen specs
