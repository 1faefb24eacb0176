"""Helpers of the ONNX export tests: export a built minicaffe Net, run the model
in ONNX Runtime, compare with minicaffe's forward at the conformance tolerance."""
import numpy as np
import pytest

onnx = pytest.importorskip('onnx')
ort = pytest.importorskip('onnxruntime')

import minicaffe.onnx as mo  # noqa: E402
from conformance import mismatch  # noqa: E402


def session(model):
    return ort.InferenceSession(model.SerializeToString(), providers=['CPUExecutionProvider'])


def run_model(model, feeds):
    sess = session(model)
    names = [o.name for o in model.graph.output]
    return dict(zip(names, sess.run(names, {k: np.asarray(v, np.float32) for k, v in feeds.items()})))


def set_inputs(net, feeds):
    for name, value in feeds.items():
        net.blobs[name].reshape(value.shape)
        net.blobs[name].data[...] = value
    net.reshape()


def export_and_compare(net, feeds, outputs=None, opset=mo.DEFAULT_OPSET):
    """Exports net with feeds as its inputs, runs it in ONNX Runtime and
    minicaffe; returns (model, list of mismatch descriptions)."""
    set_inputs(net, feeds)
    model = mo.to_model(net, opset=opset, outputs=outputs)
    net.forward()
    got = run_model(model, feeds)
    problems = []
    for name, value in got.items():
        m = nan_aware_mismatch(value, net.blobs[name].data)
        if m:
            problems.append('%s: %s' % (name, m))
    return model, problems


def nan_aware_mismatch(ours, ref):
    """mismatch(), where NaN in both at the same places counts as equal (Caffe's
    0 / 0 of an AVE pooling window that lies wholly in the padding)."""
    ours, ref = np.asarray(ours), np.asarray(ref)
    if ours.shape == ref.shape:
        nan = np.isnan(ref)
        if nan.any():
            if not np.array_equal(np.isnan(ours), nan):
                return 'NaN at other places than minicaffe'
            ours, ref = np.where(nan, 0, ours), np.where(nan, 0, ref)
    return mismatch(ours, ref)


def doubled_batch(feeds):
    """The inputs with a batch twice as large (the items again, in reverse order)."""
    return {k: np.concatenate([v, v[::-1]], axis=0) for k, v in feeds.items()}


def check_dynamic_batch(net, model, feeds):
    """The model run on a doubled batch matches minicaffe reshaped to it."""
    big = doubled_batch(feeds)
    set_inputs(net, big)
    net.forward()
    got = run_model(model, big)
    return ['batch %d, %s: %s' % (next(iter(big.values())).shape[0], n, m)
            for n, v in got.items() for m in [nan_aware_mismatch(v, net.blobs[n].data)] if m]


def random_inputs(net, rng, ints=None, batch=None):
    """Uniform inputs in [-1, 1); `ints` maps an input to (low, high) integer
    values; a cont* input gets 0 at t = 0 and random 0/1 afterwards; `batch`
    replaces the size of axis 0."""
    feeds = {}
    for name in net.inputs:
        shape = tuple(net.blobs[name].shape)
        if batch is not None:
            shape = (batch,) + shape[1:]
        if name.startswith('cont'):
            v = (rng.uniform(size=shape) > 0.3).astype(np.float32)
            v[0] = 0
        elif ints and name in ints:
            v = rng.randint(*ints[name], size=shape).astype(np.float32)
        else:
            v = rng.uniform(-1, 1, size=shape).astype(np.float32)
        feeds[name] = v
    return feeds
