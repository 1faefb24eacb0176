"""No layer with weights allocates a temporary the size of its weights in a
forward + backward pass (CaffeNet's fc6 weights and gradient are 151 MB each:
a temporary that size is a fresh, kernel-zeroed allocation and one more pass
over memory).  Checked with tracemalloc (numpy reports its allocations to it)
on every GEMM layer, on each BLAS and on numpy's fallback products, after a
first pass has set up the layers' reused scratch arrays.

Winograd convolution (minicaffe/winograd.py) is run under engine CAFFE here:
its transforms work in arrays several times the weights' size by design (the
kept transform of the weights, U, is 4x them for 3x3 filters under F(4x4);
the input transforms are reused work arrays plus one chunk's temporaries)."""
import tracemalloc

import numpy as np
import pytest

import minicaffe as caffe
from minicaffe import blas, protoio, winograd
from minicaffe.protoio import pb

FILLER = 'weight_filler { type: "gaussian" std: 0.1 }'
RECURRENT_INPUTS = ('layer { name: "in" type: "Input" top: "x" top: "cont" top: "static" input_param {'
                    ' shape { dim: 3 dim: 2 dim: 1000 } shape { dim: 3 dim: 2 }'
                    ' shape { dim: 2 dim: 800 } } }\n')
IMAGE = 'layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 256 dim: 6 dim: 6 } } }\n'

LAYERS = {
    'ip_few_rows': ('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 4 dim: 1000 } } }\n'
                    'layer { name: "l" type: "InnerProduct" bottom: "x" top: "y"'
                    ' inner_product_param { num_output: 4000 %s } }' % FILLER),
    'ip_transposed_many_rows': (
        'layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 300 dim: 1000 } } }\n'
        'layer { name: "l" type: "InnerProduct" bottom: "x" top: "y"'
        ' inner_product_param { num_output: 4000 transpose: true %s } }' % FILLER),
    'lstm_static_input': (RECURRENT_INPUTS + 'layer { name: "l" type: "LSTM" bottom: "x" bottom: "cont"'
                          ' bottom: "static" top: "y" recurrent_param { num_output: 512 %s } }' % FILLER),
    'rnn_static_input': (RECURRENT_INPUTS + 'layer { name: "l" type: "RNN" bottom: "x" bottom: "cont"'
                         ' bottom: "static" top: "y" recurrent_param { num_output: 1024 %s } }' % FILLER),
    'convolution': (IMAGE + 'layer { name: "l" type: "Convolution" bottom: "x" top: "y"'
                    ' convolution_param { num_output: 512 kernel_size: 3 %s } }' % FILLER),
    'deconvolution': (IMAGE + 'layer { name: "l" type: "Deconvolution" bottom: "x" top: "y"'
                      ' convolution_param { num_output: 512 kernel_size: 3 %s } }' % FILLER),
    'embed': ('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 6 } } }\n'
              'layer { name: "l" type: "Embed" bottom: "x" top: "y"'
              ' embed_param { num_output: 1000 input_dim: 4000 %s } }' % FILLER),
}


@pytest.fixture(params=['openblas', 'mkl', 'numpy'])
def gemm_backend(request, monkeypatch):
    if request.param == 'numpy':
        monkeypatch.setenv('MINICAFFE_NUMPY_GEMM', '1')
    elif blas.select(request.param)['name'] != request.param:
        pytest.skip('%s is not available here' % request.param)
    try:
        if request.param == 'numpy':
            assert blas.select()['name'] == 'numpy'
        yield request.param
    finally:
        monkeypatch.delenv('MINICAFFE_NUMPY_GEMM', raising=False)
        blas.select()


@pytest.mark.parametrize('name', sorted(LAYERS))
def test_forward_backward_allocate_nothing_weight_sized(name, gemm_backend, monkeypatch):
    monkeypatch.setattr(winograd, 'FORCE', 'caffe')
    net = caffe.Net(net_param=protoio.parse_text('force_backward: true\n' + LAYERS[name],
                                                 pb.NetParameter()),
                    phase=caffe.TRAIN, source=name + '.prototxt')
    rng = np.random.default_rng(0)
    for blob_name, blob in net.blobs.items():
        blob.data[...] = rng.integers(0, 3, blob.shape) if blob_name != 'cont' else 1
    weights = net.layers[-1].blobs
    weight_bytes = max(b.data.nbytes for b in weights)
    assert weight_bytes >= 4 << 20
    net.forward()
    net.backward()          # the first pass sets up the reused scratch arrays
    before = [b.diff.copy() for b in weights]
    tracemalloc.start()
    try:
        net.forward()
        net.backward()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < weight_bytes / 4, '%s: peak %d bytes, weights %d' % (name, peak, weight_bytes)
    # the gradients did accumulate (a second backward adds the same again)
    for b, d in zip(weights, before):
        np.testing.assert_allclose(b.diff, 2 * d, rtol=1e-4, atol=1e-3 * max(1.0, np.abs(d).max()))
