"""The conformance cases whose numbers come from GEMMs (convolutions, inner
products, LSTM/RNN, and every net) match real Caffe on each BLAS minicaffe can
call: numpy's OpenBLAS, and Intel MKL where it is installed (minicaffe.blas).
The other conformance tests run on whichever BLAS the run-time choice makes."""
import pytest

from conformance import case_dirs, run_case
from test_conformance_layers import ILL_CONDITIONED

GEMM_LAYERS = ('Convolution', 'Deconvolution', 'InnerProduct', 'LSTM', 'RNN', 'Embed')

CASES = [c for c in case_dirs('layers')
         if any('type: "%s"' % t in (c / 'net.prototxt').read_text() for t in GEMM_LAYERS)]
CASES += case_dirs('nets')


def test_the_gemm_cases_are_there():
    names = {c.name for c in CASES}
    assert {'conv_basic', 'ip_basic', 'ip_transpose', 'lstm', 'rnn', 'net_lenet_train'} <= names
    assert ILL_CONDITIONED <= names


@pytest.mark.parametrize('case', CASES, ids=[c.name for c in CASES])
def test_case_on_each_blas(case, blas_backend):
    problems = run_case(case)
    assert not problems, '\n'.join(problems)
