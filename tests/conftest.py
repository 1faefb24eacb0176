import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


import logging
import os
import tempfile

import pytest


@pytest.fixture(autouse=True, scope='session')
def _session_temp_folder(tmp_path_factory):
    """Temporary files of the tests and of every process they start (the fake NCCL's
    rendezvous folders, fake_cupy's kernel builds, mpiexec's ranks) go under pytest's
    own base folder, which pytest prunes to its last few runs, instead of piling up
    in /tmp run after run."""
    folder = str(tmp_path_factory.mktemp('tmp'))
    saved = os.environ.get('TMPDIR'), tempfile.tempdir
    os.environ['TMPDIR'] = tempfile.tempdir = folder
    yield
    if saved[0] is None:
        os.environ.pop('TMPDIR', None)
    else:
        os.environ['TMPDIR'] = saved[0]
    tempfile.tempdir = saved[1]


@pytest.fixture(autouse=True)
def _restore_minicaffe_logger():
    """The CLI owns the 'minicaffe' logger of its process (own handler, no propagation).
    Tests run it in-process, so put the logger back afterwards; otherwise a later test's
    caplog (attached to the root logger) would see nothing, depending on test order."""
    logger = logging.getLogger('minicaffe')
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    for h in list(logger.handlers):
        if h not in saved[0]:
            logger.removeHandler(h)
    logger.setLevel(saved[1])
    logger.propagate = saved[2]


@pytest.fixture
def set_threads(monkeypatch):
    """set_threads(n, split_small=False): minicaffe computes on n threads for this
    test (restored afterwards); split_small also cuts work of any size into
    chunks, so that tiny test arrays take the threaded paths."""
    from minicaffe import threads
    saved, chosen = threads.num_threads(), threads._state['chosen']

    def set_(n, split_small=False):
        if split_small:
            monkeypatch.setattr(threads, 'PARALLEL_MIN_ELEMS', 0)
            monkeypatch.setattr(threads, 'PARALLEL_CHUNK_ELEMS', 1)
        threads.set_num_threads(n)
    yield set_
    threads.set_num_threads(saved)
    threads._state['chosen'] = chosen


@pytest.fixture(params=['openblas', 'mkl'])
def blas_backend(request):
    """Runs the test once on each BLAS minicaffe can call (minicaffe.blas.select),
    skipping MKL where it is not installed; the run-time choice (MINICAFFE_BLAS or
    auto) is made again afterwards."""
    from minicaffe import blas
    try:
        if blas.select(request.param)['name'] != request.param:
            pytest.skip('%s is not available here (pip install mkl)' % request.param)
        yield request.param
    finally:
        blas.select()
