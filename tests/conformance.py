"""Runs one case of ../shared/conformance (numbers computed by real Caffe)
through minicaffe's pycaffe API and compares at the suite's tolerance:
|ours - caffe| <= 1e-4 * max(1, max|caffe|) + 1e-3 * |caffe|, elementwise.
"""
import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np

import minicaffe as caffe

ROOT = Path(__file__).resolve().parents[1]
CONFORMANCE = Path(os.environ.get('MINICAFFE_CONFORMANCE', ROOT.parent / 'shared' / 'conformance'))
# MINICAFFE_TEST_MODE=gpu runs the suite in GPU mode (tools/gpu_check.sh);
# gpu-emulated does the same through tests/fake_cupy.py (no GPU needed).
TEST_MODE = os.environ.get('MINICAFFE_TEST_MODE', 'cpu')


def apply_test_mode():
    if TEST_MODE == 'cpu':
        return
    if TEST_MODE == 'gpu-emulated':
        import sys
        if not getattr(sys.modules.get('cupy'), '__fake__', False):
            import fake_cupy
            from minicaffe.gpu import backend
            sys.modules['cupy'] = fake_cupy.make_module()
            backend.reset()
    elif TEST_MODE != 'gpu':
        raise ValueError('MINICAFFE_TEST_MODE must be cpu, gpu or gpu-emulated, not %r' % TEST_MODE)
    caffe.set_mode_gpu()


apply_test_mode()


def case_dirs(kind):
    d = CONFORMANCE / kind
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if (p / 'ref.h5').exists() or (p / 'solver.prototxt').exists())


def h5name(name):
    return name.replace('|', '/')


def mismatch(ours, ref):
    """None if ours matches ref at the suite tolerance, else a description."""
    ours = np.asarray(ours, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if ours.shape != ref.shape:
        if ours.size == ref.size and ours.size == 1:
            ours = ours.reshape(ref.shape)
        else:
            return 'shape %s != caffe %s' % (ours.shape, ref.shape)
    if ref.size == 0:
        return None
    tol = 1e-4 * max(1.0, float(np.abs(ref).max())) + 1e-3 * np.abs(ref)
    err = np.abs(ours - ref)
    bad = ~(err <= tol)
    if bad.any():
        i = np.unravel_index(np.argmax(np.where(bad, err - tol, -np.inf)), ref.shape)
        return ('%d of %d elements off; worst at %s: ours %.7g caffe %.7g (max |err| %.3g)'
                % (bad.sum(), ref.size, i, ours[i], ref[i], float(err.max())))
    return None


def _prototxt_tops(net_path):
    from minicaffe.protoio import read_text, pb
    p = read_text(net_path, pb.NetParameter)
    return {t for l in p.layer for t in l.top} | set(p.input)


def run_case(case_dir):
    """Returns a list of mismatch descriptions (empty when the case matches)."""
    case_dir = Path(case_dir)
    ref = h5py.File(case_dir / 'ref.h5', 'r')
    phase = caffe.TRAIN if ref.attrs['phase'] == 'TRAIN' else caffe.TEST
    stages = json.loads(ref.attrs.get('stages', '[]'))
    caffe.set_random_seed(int(ref.attrs.get('seed', 1701)))
    apply_test_mode()
    net = caffe.Net(str(case_dir / 'net.prototxt'), phase, stages=stages)
    named = _prototxt_tops(case_dir / 'net.prototxt')
    problems = []

    def compare(group, getter, label):
        if group not in ref:
            return
        for key in ref[group]:
            name = h5name(key)
            if name not in named:
                continue
            if name not in net.blobs:
                problems.append('%s %s: blob missing in minicaffe' % (label, name))
                continue
            m = mismatch(getter(net.blobs[name]), ref[group][key][()])
            if m:
                problems.append('%s %s: %s' % (label, name, m))

    def compare_params(group, attr, label):
        if group not in ref:
            return
        params = net.params
        for lkey in ref[group]:
            lname = h5name(lkey)
            if lname not in params:
                problems.append('%s %s: layer has no params in minicaffe' % (label, lname))
                continue
            for i in ref[group][lkey]:
                m = mismatch(getattr(params[lname][int(i)], attr), ref[group][lkey][i][()])
                if m:
                    problems.append('%s %s[%s]: %s' % (label, lname, i, m))

    def set_inputs(group):
        for key in ref[group]:
            name = h5name(key)
            val = ref[group][key][()]
            net.blobs[name].reshape(val.shape)
            net.blobs[name].data[...] = val

    set_inputs('input')
    if 'param' in ref:
        params = net.params
        for lkey in ref['param']:
            for i in ref['param'][lkey]:
                params[h5name(lkey)][int(i)].data[...] = ref['param'][lkey][i][()]
    net.forward()
    compare('data', lambda b: b.data, 'forward')
    compare_params('param_after', 'data', 'param after forward')
    if bool(ref.attrs.get('backward', False)):
        if 'top_diff' in ref:
            for key in ref['top_diff']:
                net.blobs[h5name(key)].diff[...] = ref['top_diff'][key][()]
        net.backward()
        compare('diff', lambda b: b.diff, 'backward')
        compare_params('param_diff', 'diff', 'param diff')
    if 'input2' in ref:
        set_inputs('input2')
        net.forward()
        compare('data2', lambda b: b.data, 'second forward')
    return problems


def copy_case(case_dir, tmp_path):
    dst = Path(tmp_path) / Path(case_dir).name
    shutil.copytree(case_dir, dst)
    return dst
