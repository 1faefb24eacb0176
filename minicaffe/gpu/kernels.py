"""Loading and launching the CUDA kernels in ``kernels/*.cu``.

Each .cu file is one module (Caffe's one-file-per-layer layout) compiled on first
use by ``cupy.RawModule`` with the kernels directory on the include path (for
``common.cuh``).  Launches use Caffe's sizing: 512 threads per block and enough
blocks to cover n, capped because every kernel is a grid-stride loop.
"""
import os

from .backend import cupy_module, on_reset

KERNEL_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'kernels')
THREADS_PER_BLOCK = 512
MAX_BLOCKS = 65535

_modules = {}
on_reset(_modules.clear)          # compiled for the module backend.reset() forgets


def kernel_files():
    """The .cu sources, sorted."""
    return sorted(os.path.join(KERNEL_DIR, f) for f in os.listdir(KERNEL_DIR) if f.endswith('.cu'))


def load_module(name):
    """The compiled cupy.RawModule for kernels/<name>.cu (cached)."""
    mod = _modules.get(name)
    if mod is None:
        cupy = cupy_module()
        path = os.path.join(KERNEL_DIR, name + '.cu')
        with open(path) as f:
            code = f.read()
        mod = cupy.RawModule(code=code, options=('--std=c++14', '-I' + KERNEL_DIR))
        _modules[name] = mod
    return mod


def blocks_for(n):
    return max(1, min((int(n) + THREADS_PER_BLOCK - 1) // THREADS_PER_BLOCK, MAX_BLOCKS))


def kernel_args(args):
    """CuPy passes a Python int as a 64-bit and a float as a double: every scalar
    parameter of our kernels is an ``int`` or a ``float``, so convert them here."""
    import numpy as np
    out = []
    for a in args:
        if isinstance(a, (bool, int, np.integer)):
            out.append(np.int32(a))
        elif isinstance(a, (float, np.floating)):
            out.append(np.float32(a))
        else:
            out.append(a)
    return tuple(out)


def launch(module_name, kernel_name, n, args):
    """Run kernel ``kernel_name`` of ``module_name`` over n items (grid-stride).

    ``args`` follow the kernel's C signature: device arrays (C-contiguous,
    float32 for ``float*``, int32 for ``int*``) and Python/NumPy scalars."""
    n = int(n)
    if n <= 0:
        return
    kernel = load_module(module_name).get_function(kernel_name)
    kernel((blocks_for(n),), (THREADS_PER_BLOCK,), kernel_args(args))
