"""`minicaffe upgrade IN OUT` (minicaffe.commands.upgrade_tool): legacy nets and solvers rewritten."""
import pytest

pytest.importorskip('minicaffe.upgrade')

from minicaffe.commands import upgrade_tool  # noqa: E402
from minicaffe.protoio import pb, parse_text  # noqa: E402

V1_NET = '''name: "old"
input: "data"
input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8
layers { name: "conv1" type: CONVOLUTION bottom: "data" top: "conv1"
  blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0
  convolution_param { num_output: 4 kernel_size: 3 } }
layers { name: "relu1" type: RELU bottom: "conv1" top: "conv1" }
'''


def test_text_net(tmp_path):
    src, dst = tmp_path / 'old.prototxt', tmp_path / 'new.prototxt'
    src.write_text(V1_NET)
    assert upgrade_tool.main([str(src), str(dst)]) == 0
    net = parse_text(dst.read_text(), pb.NetParameter())
    assert not len(net.layers) and not len(net.input)
    assert [(l.name, l.type) for l in net.layer] == [('input', 'Input'), ('conv1', 'Convolution'),
                                                     ('relu1', 'ReLU')]
    assert [(p.lr_mult, p.decay_mult) for p in net.layer[1].param] == [(1, 1), (2, 0)]
    assert list(net.layer[0].input_param.shape[0].dim) == [1, 3, 8, 8]


def test_text_solver(tmp_path):
    src, dst = tmp_path / 's.prototxt', tmp_path / 's2.prototxt'
    src.write_text('net: "n.prototxt"\nbase_lr: 0.01\nsolver_type: ADAGRAD\n')
    assert upgrade_tool.main([str(src), str(dst)]) == 0
    sp = parse_text(dst.read_text(), pb.SolverParameter())
    assert sp.type == 'AdaGrad' and not sp.HasField('solver_type')


def test_binary_net_stays_binary(tmp_path):
    old = parse_text(V1_NET, pb.NetParameter())
    blob = old.layers[0].blobs.add(num=1, channels=1, height=4, width=27)
    blob.data.extend([0.5] * 108)
    src, dst = tmp_path / 'old.caffemodel', tmp_path / 'new.caffemodel'
    src.write_bytes(old.SerializeToString())
    assert upgrade_tool.main([str(src), str(dst)]) == 0
    net = pb.NetParameter.FromString(dst.read_bytes())
    conv = [l for l in net.layer if l.name == 'conv1'][0]
    assert conv.type == 'Convolution' and len(conv.blobs[0].data) == 108


def test_errors_name_the_file(tmp_path, capsys):
    src = tmp_path / 'bad.prototxt'
    src.write_text('layers { name: "x" type: NOT_A_TYPE }')
    assert upgrade_tool.main([str(src), str(tmp_path / 'o.prototxt')]) == 2
    assert 'bad.prototxt:1' in capsys.readouterr().err
    assert upgrade_tool.main([str(tmp_path / 'missing.prototxt'), str(tmp_path / 'o.prototxt')]) == 2
    assert 'missing.prototxt' in capsys.readouterr().err


def test_floats_written_as_caffe_writes_them(tmp_path):
    """Caffe's text format (protobuf C++): `lr_mult: 1`, `base_lr: 0.01`, never `1.0`."""
    src, dst = tmp_path / 'old.prototxt', tmp_path / 'new.prototxt'
    src.write_text(V1_NET)
    assert upgrade_tool.main([str(src), str(dst)]) == 0
    text = dst.read_text()
    assert 'lr_mult: 1\n' in text and 'lr_mult: 2\n' in text and 'decay_mult: 0\n' in text
    assert '.0\n' not in text
    s_src, s_dst = tmp_path / 's.prototxt', tmp_path / 's2.prototxt'
    s_src.write_text('net: "n.prototxt"\nbase_lr: 0.01\nweight_decay: 0.0005\ndelta: 1e-8\n'
                     'momentum: 1\nclip_gradients: 0.123456789\nsolver_type: SGD\n')
    assert upgrade_tool.main([str(s_src), str(s_dst)]) == 0
    lines = s_dst.read_text().splitlines()
    for want in ('base_lr: 0.01', 'weight_decay: 0.0005', 'delta: 1e-08', 'momentum: 1',
                 'clip_gradients: 0.12345679', 'net: "n.prototxt"'):
        assert want in lines
    assert parse_text(s_dst.read_text(), pb.SolverParameter()).clip_gradients == \
        parse_text(s_src.read_text(), pb.SolverParameter()).clip_gradients


@pytest.mark.parametrize('text', ['layer { name: "d" type: "Input" top: "d"\n'
                                  '  input_param { shape { dim: 1 dim: 2 } } }\n',
                                  'net: "n.prototxt"\ntype: "Adam"\nbase_lr: 0.01\n'])
def test_a_current_file_is_reported_and_not_rewritten(tmp_path, capsys, text):
    src = tmp_path / 'current.prototxt'
    src.write_text(text)
    mtime = src.stat().st_mtime_ns
    assert upgrade_tool.main([str(src), str(src)]) == 0
    out = capsys.readouterr().out
    assert 'already in latest proto format' in out and 'left unchanged' in out
    assert src.read_text() == text and src.stat().st_mtime_ns == mtime
    dst = tmp_path / 'copy.prototxt'
    assert upgrade_tool.main([str(src), str(dst)]) == 0
    out = capsys.readouterr().out
    assert 'already in latest proto format' in out and str(dst) in out
    assert dst.exists()
    legacy = tmp_path / 'legacy.prototxt'
    legacy.write_text(V1_NET)
    assert upgrade_tool.main([str(legacy), str(legacy)]) == 0
    assert 'Wrote upgraded net' in capsys.readouterr().out


def test_a_current_binary_net_is_reported(tmp_path, capsys):
    net = pb.NetParameter(name='n')
    net.layer.add(name='d', type='Input', top=['d'])
    src = tmp_path / 'n.caffemodel'
    src.write_bytes(net.SerializeToString())
    assert upgrade_tool.main([str(src), str(src)]) == 0
    assert 'already in latest proto format' in capsys.readouterr().out
