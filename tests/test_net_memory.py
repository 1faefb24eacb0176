"""Sizes that drive allocations (issue 11, section 1): every size a layer
allocates from -- pad, kernel, dilation, local_size, num_output, tiles,
input_dim, DummyData/Input shapes -- is checked before anything is allocated,
and the whole net's memory is estimated at construction and refused, with the
estimate in the message, when it exceeds the limit (MINICAFFE_MEMORY_LIMIT).
No test here allocates more than a few MB."""
import numpy as np
import pytest

import minicaffe as caffe
from minicaffe.commands import cli
from minicaffe import memory, protoio
from minicaffe.errors import MinicaffeError, NetDefinitionError
from minicaffe.protoio import pb

INPUT = 'layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 7 dim: 8 } } }\n'


def build(text, inp=INPUT, phase=caffe.TRAIN):
    return caffe.Net(net_param=protoio.parse_text(inp + text, pb.NetParameter()), phase=phase,
                     source='sizes.prototxt')


@pytest.mark.parametrize('layer, what', [
    ('type: "Convolution" convolution_param { num_output: 2 kernel_size: 3 pad: 100000 }',
     r'blob shape \(2, 2, 200005, 200006\) has 160008800120 elements'),
    ('type: "Convolution" convolution_param { num_output: 2 kernel_size: 3 dilation: 100000'
     ' pad: 100000 }', r'one zero-padded image \(pad \(100000, 100000\)\).*more than Caffe allows'),
    ('type: "Convolution" convolution_param { num_output: 2 kernel_size: 3 pad: 8000 }',
     r'im2col columns of one image .*pad \(8000, 8000\).*more than Caffe allows'),
    ('type: "Deconvolution" convolution_param { num_output: 2 kernel_size: 3 stride: 100000 }',
     'more than Caffe allows'),
    ('type: "Pooling" pooling_param { kernel_size: 3 pad: 100000 }', 'must be smaller than the kernel'),
    ('type: "LRN" lrn_param { local_size: 4294967295 }',
     r'channel-padded squares \(local_size 4294967295\).*more than Caffe allows'),
    ('type: "LRN" lrn_param { local_size: 100001 norm_region: WITHIN_CHANNEL }',
     r'zero-padded squares \(local_size 100001\).*more than Caffe allows'),
    ('type: "Im2col" convolution_param { kernel_size: 3 pad: 30000 }', 'more than Caffe allows'),
    ('type: "Im2col" convolution_param { kernel_size: 3 dilation: 30000 pad: 30000 }',
     r'the zero-padded input \(pad \(30000, 30000\)\).*more than Caffe allows'),
    ('type: "InnerProduct" inner_product_param { num_output: 2000000000 }', 'more than Caffe allows'),
    ('type: "Tile" tile_param { tiles: 2000000000 }', 'more than Caffe allows'),
    ('type: "Embed" embed_param { input_dim: 4000000000 num_output: 10 }', 'more than Caffe allows'),
])
def test_sizes_are_checked_before_allocating(layer, what):
    with pytest.raises(NetDefinitionError, match=r'sizes\.prototxt: layer "l" \(\w+\): .*' + what):
        build('layer { name: "l" bottom: "x" top: "y" %s }' % layer)


def test_dummy_data_shape_is_checked():
    with pytest.raises(NetDefinitionError, match=r'layer "d" \(DummyData\).*10000000000 elements'):
        build('layer { name: "d" type: "DummyData" top: "z" dummy_data_param {'
              ' shape { dim: 100000 dim: 100000 } } }')


def test_the_net_is_refused_when_it_exceeds_the_limit(monkeypatch):
    # three Input blobs under the per-blob cap that together do not fit (the issue's
    # 3 x 1.5e9; scaled down against a small limit)
    text = ('layer { name: "in" type: "Input" top: "a" top: "b" top: "c"'
            ' input_param { shape { dim: 1000 dim: 100 } } }')
    monkeypatch.setenv(memory.ENV, str(2 << 20))
    with pytest.raises(NetDefinitionError, match=r'sizes\.prototxt: the net needs about 0\.00 GiB \(blob'
                                                 r' data and diffs 0\.00 GiB.*more than the 0\.00 GiB limit'
                                                 r' \(MINICAFFE_MEMORY_LIMIT=2097152\)'):
        build(text, inp='')
    monkeypatch.setenv(memory.ENV, str(3 << 20))
    net = build(text, inp='')
    assert memory.estimate(net)['blobs'] == 3 * 2 * 1000 * 100 * 4
    monkeypatch.setenv(memory.ENV, 'none')
    build(text, inp='')


def test_default_limit_is_the_available_memory(monkeypatch):
    monkeypatch.delenv(memory.ENV, raising=False)
    monkeypatch.setattr(memory, 'available_bytes', lambda: 1 << 20)
    with pytest.raises(NetDefinitionError, match='the memory this machine has available now'):
        build('layer { name: "in2" type: "Input" top: "a" input_param { shape { dim: 1000 dim: 1000 } } }',
              inp='')
    monkeypatch.setattr(memory, 'available_bytes', lambda: 1 << 30)
    build('layer { name: "in2" type: "Input" top: "a" input_param { shape { dim: 1000 dim: 1000 } } }',
          inp='')


def test_bad_limit_value_is_a_clear_error(monkeypatch):
    monkeypatch.setenv(memory.ENV, 'lots')
    with pytest.raises(MinicaffeError, match='MINICAFFE_MEMORY_LIMIT must be a number of bytes'):
        build('')


def test_estimate_counts_shared_buffers_once_and_the_scratch(monkeypatch):
    monkeypatch.setenv(memory.ENV, 'none')
    net = build('layer { name: "r" type: "ReLU" bottom: "x" top: "x" }\n'
                'layer { name: "f" type: "Flatten" bottom: "x" top: "f" }\n'
                'layer { name: "c" type: "Convolution" bottom: "x" top: "y" convolution_param {'
                ' num_output: 4 kernel_size: 3 pad: 1 } }')
    est = memory.estimate(net)
    x, y = 2 * 3 * 7 * 8, 2 * 4 * 7 * 8
    # x once (ReLU runs in place on it), the two copies the split of x makes for its two
    # consumers, and y: each data and diff; Flatten's top views the first copy's data and
    # has a diff of its own (Caffe's Flatten hands it to its bottom in backward)
    assert est['blobs'] == (3 * x + y) * 8 + x * 4
    assert est['params'] == (4 * 3 * 3 * 3 + 4) * 8
    assert est['workspace'] == (27 * 56 + 3 * 9 * 10) * 4     # columns + padded image
    limit = est['blobs'] + est['params'] + 1
    monkeypatch.setenv(memory.ENV, str(limit))
    with pytest.raises(NetDefinitionError, match='largest scratch array'):
        build('layer { name: "r" type: "ReLU" bottom: "x" top: "x" }\n'
              'layer { name: "f" type: "Flatten" bottom: "x" top: "f" }\n'
              'layer { name: "c" type: "Convolution" bottom: "x" top: "y" convolution_param {'
              ' num_output: 4 kernel_size: 3 pad: 1 } }')


def test_memory_error_in_a_layer_names_it(monkeypatch):
    net = build('force_backward: true\nlayer { name: "r" type: "ReLU" bottom: "x" top: "y" }')

    def exhausted(*args):
        raise MemoryError()
    monkeypatch.setattr(net.layers[1], 'forward', exhausted)
    monkeypatch.setattr(net.layers[1], 'backward', exhausted)
    with pytest.raises(MinicaffeError, match=r'layer "r" \(ReLU\): out of memory in forward'):
        net.forward()
    net.blobs['y'].diff[...] = 1
    with pytest.raises(MinicaffeError, match=r'layer "r" \(ReLU\): out of memory in backward'):
        caffe.Net.backward_from_to(net, 1, 1)


def test_cli_exit_2(tmp_path, capsys, monkeypatch):
    path = tmp_path / 'big.prototxt'
    path.write_text('layer { name: "in" type: "Input" top: "a" top: "b" top: "c"'
                    ' input_param { shape { dim: 1500000000 } } }\n')
    monkeypatch.setenv(memory.ENV, str(1 << 30))
    assert cli.main(['time', str(path)]) == 2
    err = capsys.readouterr().err
    error = err[err.index('minicaffe: error: '):]          # after the net's set-up log lines
    assert error.startswith('minicaffe: error: %s: the net needs about 33.53 GiB' % path)


@pytest.mark.parametrize('phase', [caffe.TRAIN, caffe.TEST])
def test_estimate_counts_the_arrays_convolutions_keep(monkeypatch, phase):
    """In TRAIN phase a convolution keeps its columns for backward; under
    Winograd it keeps the weights' transform U (and the weights it came from)
    in any phase, and in TRAIN its input transform instead of the columns.
    The estimate counts exactly what forward then keeps."""
    from minicaffe import winograd
    monkeypatch.setenv(memory.ENV, 'none')
    conv = ('layer { name: "c" type: "Convolution" bottom: "x" top: "y" convolution_param {'
            ' num_output: 4 kernel_size: 3 pad: 1 } }')
    for force in ('caffe', 'winograd4'):
        monkeypatch.setattr(winograd, 'FORCE', force)
        net = build(conv, phase=phase)
        layer = net.layers[list(net._layer_names).index('c')]
        net.forward()
        net.backward()
        held = [a for a in layer._col_store.values()]
        kept = getattr(layer, '_winograd_kept', None)
        if kept is not None:
            held += [kept[0], kept[3]]
        assert (force == 'winograd4') == (kept is not None)
        assert memory.estimate(net)['kept'] == sum(a.nbytes for a in held)
        assert memory.estimate(net)['kept'] > 0 or (phase == caffe.TEST and force == 'caffe')
    monkeypatch.setenv(memory.ENV, str(memory.estimate(net)['total'] - 1))
    with pytest.raises(NetDefinitionError, match='arrays layers keep between passes'):
        build(conv, phase=phase)
