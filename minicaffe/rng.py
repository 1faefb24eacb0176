"""The process-wide random generator (Caffe's Caffe::rng_stream).

``set_random_seed`` reseeds it; fillers, Dropout and data shuffles draw from it.
In GPU mode Dropout draws its masks on the device from ``gpu_rng()``, a CuPy
generator seeded from the same seed (Caffe seeds curand from its seed too), so
GPU runs are repeatable, though their masks differ from the CPU's.
"""
import numpy as np

_state = {'rng': np.random.default_rng(), 'seed': None}


def set_random_seed(seed):
    _state['rng'] = np.random.default_rng(int(seed))
    _state['seed'] = int(seed)
    _state.pop('gpu_rng', None)


def rng():
    return _state['rng']


def _forget_gpu_rng():
    _state.pop('gpu_rng', None)


def gpu_rng():
    """The device generator (cupy.random.RandomState), created on first use."""
    g = _state.get('gpu_rng')
    if g is None:
        from .gpu.backend import cupy_module, on_reset
        on_reset(_forget_gpu_rng)
        seed = _state['seed']
        if seed is None:           # unseeded: draw the device seed from the host stream
            seed = int(_state['rng'].integers(0, 2 ** 31 - 1))
        g = _state['gpu_rng'] = cupy_module().random.RandomState(seed)
    return g
