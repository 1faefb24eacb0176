"""The process-wide random generator (Caffe's Caffe::rng_stream).

``set_random_seed`` reseeds it; fillers, Dropout and data shuffles draw from it.
"""
import numpy as np

_state = {'rng': np.random.default_rng()}


def set_random_seed(seed):
    _state['rng'] = np.random.default_rng(int(seed))


def rng():
    return _state['rng']
