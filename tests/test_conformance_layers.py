"""Every case of ../shared/conformance/layers and /nets must match real Caffe."""
import pytest

from conformance import case_dirs, run_case

LAYER_CASES = case_dirs('layers')
NET_CASES = case_dirs('nets')


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
