"""Model-zoo check: every upstream prototxt of ../shared/conformance/upstream
that Caffe could instantiate (shapes.json) gets random weights, is saved as a
.caffemodel, reloaded, exported to ONNX and run in ONNX Runtime, which must
match minicaffe's forward -- a new layer type or an export gap shows here.

The ImageNet-sized nets run on one image (their batch is symbolic in the
export).  The two LRCN activity deploy nets (see LARGE) run only with
MINICAFFE_ZOO_LARGE=1.
"""
import json
import os

import numpy as np
import pytest

from onnx_support import export_and_compare, random_inputs

import minicaffe as caffe
from conformance import CONFORMANCE

UPSTREAM = CONFORMANCE / 'upstream'
SHAPES = json.loads((UPSTREAM / 'shapes.json').read_text()) if UPSTREAM.is_dir() else {}
NETS = sorted(n for n, v in SHAPES.items() if 'caffe_error' not in v)
# Integer inputs: (low, high) of their values (the vocabulary of the Embed layers).
INT_INPUTS = {'input_sentence': (0, 1000)}
ONE_IMAGE = {'caffe__models__bvlc_alexnet__deploy.prototxt',
             'caffe__models__bvlc_reference_caffenet__deploy.prototxt',
             'lisa-caffe-public__examples__LRCN_activity_recognition__deploy_singleFrame.prototxt'}
# Too large for CI time and memory (run them with MINICAFFE_ZOO_LARGE=1).
LARGE = {
    'lisa-caffe-public__examples__LRCN_activity_recognition__deploy_lstm.prototxt':
        '160 frames of 227x227 through CaffeNet (the reshapes fix 16 steps x 10 clips)',
    'lisa-caffe-public__examples__LRCN_activity_recognition__deploy_singleFrame.prototxt':
        '78M parameters (~30 s here); its layer types are CaffeNet\'s, which runs',
}


def fill_weights(net, rng):
    """Gaussian weights scaled by 1/sqrt(fan in) (activations stay O(1) through
    the deep nets), small biases."""
    for blobs in net.params.values():
        for b in blobs:
            fan_in = int(np.prod(b.shape[1:])) if len(b.shape) > 1 else 1
            std = 1.0 / np.sqrt(fan_in) if len(b.shape) > 1 else 0.1
            b.data[...] = rng.standard_normal(b.shape, dtype=np.float32) * np.float32(std)


def test_zoo_present():
    assert len(NETS) >= 8


@pytest.mark.parametrize('name', NETS)
def test_zoo_net(name, tmp_path, monkeypatch):
    if name in LARGE and os.environ.get('MINICAFFE_ZOO_LARGE') != '1':
        pytest.skip(LARGE[name] + ': set MINICAFFE_ZOO_LARGE=1')
    monkeypatch.chdir(tmp_path)
    path = str(UPSTREAM / name)
    net = caffe.Net(path, caffe.TEST)
    fill_weights(net, np.random.default_rng(11))
    net.save(str(tmp_path / 'w.caffemodel'))
    loaded = caffe.Net(path, caffe.TEST, weights=str(tmp_path / 'w.caffemodel'))
    for lname, blobs in net.params.items():
        for a, b in zip(blobs, loaded.params[lname]):
            assert np.array_equal(a.data, b.data)
    feeds = random_inputs(loaded, np.random.RandomState(12), INT_INPUTS, batch=1 if name in ONE_IMAGE else None)
    model, problems = export_and_compare(loaded, feeds)
    assert not problems, '\n'.join(problems)
    assert [o.name for o in model.graph.output] == loaded.outputs
