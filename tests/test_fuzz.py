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


def test_fuzz_in_subprocesses_with_a_memory_limit_and_a_timeout():
    """The bounded CI campaign: seeded mutations of the shipped (prototxt/) and
    conformance prototxts, Caffe's and minicaffe's weights and states and the
    data files, run by tools/fuzz.py in worker subprocesses (many cases each)
    under RLIMIT_AS and a per-case timeout.  A traceback (any exception but a
    MinicaffeError naming the file, also in a thread), a hang, a crash of the
    worker or a MemoryError under the limit fails the test; the table of
    counts is printed (pytest -s shows it)."""
    cases = max(1, int(600 * SCALE))
    results, tracebacks = fuzz.run_isolated(cases, seed=11, workers=2, timeout=30, mem_mb=3072)
    report = '\n'.join(fuzz.summarize(results))
    print(report)
    assert len(results) == cases, report
    assert {r['target'] for r in results} >= {'shipped_prototxt', 'conformance_net', 'caffemodel',
                                              'solverstate'}, report
    assert not [r for r in results if r['outcome'] in fuzz.FAILURES], report
    assert not tracebacks, '\n'.join(tracebacks)


def test_isolated_runner_reports_crashes_hangs_and_blowups(monkeypatch):
    """The runner itself: a worker killed by a signal mid-case is a crash of
    that case, the next worker goes on with the case after it."""
    monkeypatch.setenv('MINICAFFE_FUZZ_TEST_CRASH_AT', '3')
    results, _ = fuzz.run_isolated(6, seed=11, workers=1, timeout=30, mem_mb=3072)
    assert [r['i'] for r in results] == list(range(6))
    assert [r['outcome'] for r in results][3] == 'crash'
    assert all(r['outcome'] != 'crash' for r in results[:3] + results[4:])


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
