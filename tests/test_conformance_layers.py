"""Every case of ../shared/conformance/layers and /nets must match real Caffe."""
import json

import h5py
import numpy as np
import pytest

import minicaffe as caffe
from conformance import CONFORMANCE, case_dirs, run_case

LAYER_CASES = case_dirs('layers')
NET_CASES = case_dirs('nets')

# These two nets feed raw 0-255 pixels (no mean subtraction) through the CNN, so
# fc8 reaches ~6000 and the LSTM's static-input gate sums (|terms| ~2500, result
# ~ -8) saturate: a last-bit difference upstream grows to a 0.1-0.2% error in the
# gradients that flow back through that gate.  On the CPU they match because the
# upstream numbers are Caffe's bit for bit where it matters (per-image conv GEMMs,
# LRN's saxpy running sum and glibc's powf).  Real CUDA math (powf, expf) rounds
# some last bits differently, so in GPU mode they are expected failures
# (test_gpu_conformance); given Caffe's own fc8, everything downstream matches
# (test_unfactored_lstm_matches_given_caffes_features).
ILL_CONDITIONED = {'net_lrcn_caption_unfactored', 'net_lrcn_caption_unfactored_2layer'}


@pytest.mark.parametrize('case', LAYER_CASES, ids=[c.name for c in LAYER_CASES])
def test_layer_case(case):
    problems = run_case(case)
    assert not problems, '\n'.join(problems)


@pytest.mark.parametrize('case', NET_CASES, ids=[c.name for c in NET_CASES])
def test_net_case(case):
    problems = run_case(case)
    assert not problems, '\n'.join(problems)


def test_conformance_suite_present():
    # The suite lives beside the repo; without it these tests would silently pass.
    assert len(LAYER_CASES) >= 90 and len(NET_CASES) >= 9


@pytest.mark.parametrize('name', sorted(ILL_CONDITIONED))
def test_unfactored_lstm_matches_given_caffes_features(name):
    """From Caffe's fc8 on, the unfactored LRCN nets match Caffe exactly enough."""
    ref = h5py.File(CONFORMANCE / 'nets' / name / 'ref.h5', 'r')
    net = caffe.Net(str(CONFORMANCE / 'nets' / name / 'net.prototxt'), caffe.TEST,
                    stages=json.loads(ref.attrs['stages']))
    for k in ref['input']:
        net.blobs[k].data[...] = ref['input'][k][()]
    for lname in ref['param']:
        for i in ref['param'][lname]:
            net.params[lname][int(i)].data[...] = ref['param'][lname][i][()]
    net.forward(end='fc8')
    net.blobs['fc8'].data[...] = ref['data/fc8'][()]
    net.forward(start='embedding')
    net.backward(end='embedding')
    downstream = [n for n in ('lstm1', 'lstm2', 'predict', 'cross_entropy_loss') if n in net.blobs]
    for n in downstream + ['fc8']:
        ours = net.blobs[n].diff if n == 'fc8' else net.blobs[n].data
        want = ref['diff/fc8'][()] if n == 'fc8' else ref['data'][n][()]
        tol = 1e-4 * max(1.0, np.abs(want).max()) + 1e-3 * np.abs(want)
        assert np.all(np.abs(ours - want) <= tol), n
    for lname in ('lstm1', 'lstm2', 'predict'):
        if lname in net.params:
            for i, blob in enumerate(net.params[lname]):
                want = ref['param_diff'][lname][str(i)][()]
                tol = 1e-4 * max(1.0, np.abs(want).max()) + 1e-3 * np.abs(want)
                assert np.all(np.abs(blob.diff - want) <= tol), (lname, i)
