"""Helpers for the GPU tests.

``gpu_mode()`` switches minicaffe to GPU mode for a ``with`` block: on the real
device when ``MINICAFFE_TEST_MODE=gpu`` (tools/gpu_check.sh sets it), otherwise
through the CPU stand-in ``fake_cupy`` (kernels built with g++), which is what CI
runs.  ``check_gpu_parity`` runs one layer forward and backward on the CPU and
then in GPU mode from the same inputs and parameters and compares every output.
"""
import contextlib
import os
import sys

import numpy as np

from minicaffe import mode
from minicaffe.gradcheck import make_layer

import fake_cupy

REAL_GPU = os.environ.get('MINICAFFE_TEST_MODE') == 'gpu'


@contextlib.contextmanager
def gpu_mode():
    """GPU mode for the block; yields the cupy module (real or stand-in)."""
    if REAL_GPU:
        mode.set_mode_gpu()
        try:
            yield sys.modules['cupy']
        finally:
            mode.set_mode_cpu()
    else:
        with fake_cupy.installed() as cp:
            mode.set_mode_gpu()
            yield cp


def _run(layer_param, bottoms, phase, seed, params, top_diffs, propagate_down):
    layer, bottom, top = make_layer(layer_param, bottoms, phase=phase, seed=seed)
    if params is not None:
        for blob, value in zip(layer.blobs, params):
            blob.data[...] = value
    initial_params = [p.data.copy() for p in layer.blobs]   # before forward may update them
    mode.run_forward(layer, bottom, top)
    gen = np.random.default_rng(seed + 1)
    diffs = top_diffs if top_diffs is not None else [gen.standard_normal(t.shape) for t in top]
    for t, d in zip(top, diffs):
        t.diff[...] = d
    for b in bottom:
        b.diff[...] = 0
    for p in layer.blobs:
        p.diff[...] = 0
    pd = propagate_down if propagate_down is not None else [True] * len(bottom)
    mode.run_backward(layer, top, pd, bottom)
    out = {'top%d' % i: t.data.copy() for i, t in enumerate(top)}
    out.update({'bottom_diff%d' % i: b.diff.copy() for i, b in enumerate(bottom) if pd[i]})
    out.update({'param_diff%d' % i: p.diff.copy() for i, p in enumerate(layer.blobs)})
    out.update({'param%d' % i: p.data.copy() for i, p in enumerate(layer.blobs)})
    return layer, initial_params, out, [np.array(d, np.float32) for d in diffs]


def check_gpu_parity(layer_param, bottoms, phase='TRAIN', seed=1701, rtol=1e-4, atol=1e-5,
                     propagate_down=None, backward=True, needs_gpu_methods=True):
    """Forward + backward of one layer on the CPU and in GPU mode; every top,
    bottom diff and param diff must agree.  Returns the GPU layer.

    With ``needs_gpu_methods`` the layer class must define forward_gpu (and
    backward_gpu when ``backward``), so a silent CPU fallback cannot pass."""
    mode.set_mode_cpu()     # the reference half runs on the CPU even under gpu_check.sh
    _, params, cpu, diffs = _run(layer_param, bottoms, 'TRAIN' if phase == 'TRAIN' else phase,
                                 seed, None, None, propagate_down if backward else [False] * len(bottoms))
    with gpu_mode():
        layer, _, gpu, _ = _run(layer_param, bottoms, phase, seed, params, diffs,
                                propagate_down if backward else [False] * len(bottoms))
        if needs_gpu_methods:
            assert getattr(type(layer), 'forward_gpu', None) is not None, \
                '%s has no forward_gpu' % type(layer).__name__
            if backward:
                assert getattr(type(layer), 'backward_gpu', None) is not None, \
                    '%s has no backward_gpu' % type(layer).__name__
    assert cpu.keys() == gpu.keys()
    for key in cpu:
        np.testing.assert_allclose(gpu[key], cpu[key], rtol=rtol, atol=atol,
                                   err_msg='%s: %s differs between CPU and GPU'
                                   % (type(layer).__name__, key))
    return layer
