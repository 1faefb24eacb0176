"""Hardened input: mutated prototxts and corrupted weight/state/data files
must succeed or raise a MinicaffeError naming the file -- never another
exception, never a hang, never a huge allocation.

Hypothesis draws the mutations (token edits for prototxts, truncation and
byte flips for binary files); the engine and the targets are tools/fuzz.py,
which runs thousands of cases outside CI.  Example counts are bounded so the
whole module stays well under a minute; set MINICAFFE_FUZZ_EXAMPLES to scale
them.
"""
import os
import sys
import tempfile
import traceback
import warnings
from pathlib import Path

import pytest

hypothesis = pytest.importorskip('hypothesis')
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'tools'))
import fuzz  # noqa: E402

SCALE = float(os.environ.get('MINICAFFE_FUZZ_EXAMPLES', '1'))
_TARGETS = {}


def targets():
    if not _TARGETS:
        wd = tempfile.mkdtemp(prefix='minicaffe-fuzz-test-')
        _TARGETS['workdir'] = wd
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            for t in fuzz.build_targets(wd):
                _TARGETS[t.name] = t
    return _TARGETS


def check(name, seed_index, ops):
    ts = targets()
    if name not in ts:
        pytest.skip('target %s is not available here' % name)
    t = ts[name]
    seed_name, data = t.seeds[seed_index % len(t.seeds)]
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        outcome, exc, path = fuzz.run_case(t, seed_name, data, ops, ts['workdir'], timeout=30)
    if outcome not in ('ok', 'error'):
        tb = ''.join(traceback.format_exception(type(exc), exc, exc.__traceback__)) if exc else ''
        pytest.fail('%s: %s from %s with ops %s\n%s' % (name, outcome, seed_name, ops, tb))


def ops_strategy(kind):
    names = fuzz.TEXT_OPS if kind == 'text' else fuzz.BYTE_OPS
    return st.lists(st.tuples(st.sampled_from(names), st.integers(0, 2 ** 30)), min_size=1, max_size=4)


def fuzz_settings(n):
    return settings(max_examples=max(1, int(n * SCALE)), deadline=None, derandomize=True,
                    suppress_health_check=list(HealthCheck), database=None)


@fuzz_settings(200)
@given(st.integers(0, 1000), ops_strategy('text'))
def test_net_prototxt(seed_index, ops):
    check('net_prototxt', seed_index, ops)


@fuzz_settings(100)
@given(st.integers(0, 1000), ops_strategy('text'))
def test_conformance_net(seed_index, ops):
    check('conformance_net', seed_index, ops)


@fuzz_settings(50)
@given(st.integers(0, 1000), ops_strategy('text'))
def test_solver_prototxt(seed_index, ops):
    check('solver_prototxt', seed_index, ops)


@fuzz_settings(80)
@given(st.integers(0, 1000), ops_strategy('bytes'))
def test_caffemodel(seed_index, ops):
    check('caffemodel', seed_index, ops)


@fuzz_settings(60)
@given(st.integers(0, 1000), ops_strategy('bytes'))
def test_caffemodel_tiny(seed_index, ops):
    check('caffemodel_tiny', seed_index, ops)


@fuzz_settings(80)
@given(st.integers(0, 1000), ops_strategy('bytes'))
def test_solverstate(seed_index, ops):
    check('solverstate', seed_index, ops)


@fuzz_settings(60)
@given(st.integers(0, 1000), ops_strategy('bytes'))
def test_solverstate_h5(seed_index, ops):
    check('solverstate_h5', seed_index, ops)


@fuzz_settings(40)
@given(st.integers(0, 1000), ops_strategy('bytes'))
def test_weights_h5(seed_index, ops):
    check('weights_h5', seed_index, ops)


@fuzz_settings(40)
@given(st.integers(0, 1000), ops_strategy('bytes'))
def test_hdf5_data(seed_index, ops):
    check('hdf5_data', seed_index, ops)


@fuzz_settings(60)
@given(st.integers(0, 1000), ops_strategy('bytes'))
def test_mean_file(seed_index, ops):
    check('mean_file', seed_index, ops)


@fuzz_settings(60)
@given(st.integers(0, 1000), ops_strategy('bytes'))
def test_image(seed_index, ops):
    check('image', seed_index, ops)


@fuzz_settings(60)
@given(st.integers(0, 1000), ops_strategy('bytes'))
def test_lmdb_datum(seed_index, ops):
    pytest.importorskip('lmdb')
    check('lmdb_datum', seed_index, ops)


@fuzz_settings(80)
@given(st.integers(0, 1000), ops_strategy('text'))
def test_data_prototxt(seed_index, ops):
    check('data_prototxt', seed_index, ops)


def test_huge_shapes_are_refused_before_allocating(tmp_path):
    import minicaffe as caffe
    from minicaffe.errors import NetDefinitionError
    p = tmp_path / 'huge.prototxt'
    p.write_text('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2000000000 dim: 1 } } }')
    with pytest.raises(NetDefinitionError, match=r'huge.prototxt:1: layer "in"'):
        caffe.Net(str(p), caffe.TEST)
    p.write_text('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 100000 dim: 100000 } } }')
    with pytest.raises(NetDefinitionError, match='more than Caffe allows'):
        caffe.Net(str(p), caffe.TEST)


def test_mutators_are_deterministic_and_change_input():
    text = 'layer { name: "a" type: "ReLU" bottom: "x" top: "x" }\n'
    ops = [('number', 1), ('delete', 2), ('dup_block', 3)]
    assert fuzz.mutate_text(text, ops) == fuzz.mutate_text(text, ops)
    assert fuzz.mutate_bytes(b'abcdef', [('truncate', 4)]) == fuzz.mutate_bytes(b'abcdef', [('truncate', 4)])
    assert fuzz.mutate_text(text, [('rename_bottom', 0)]) != text
    assert len(fuzz.mutate_bytes(b'abcdef' * 10, [('truncate', 4)])) < 60
