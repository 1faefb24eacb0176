"""minicaffe: a Caffe-faithful deep learning framework (NumPy on the CPU).

Use it as pycaffe:  ``import minicaffe as caffe``.
"""
import os as _os

# First of all: Ctrl-C while the imports below run ends the minicaffe command
# with "minicaffe: interrupted" and exit 130 (see interrupt.py).
from . import interrupt as _interrupt
_interrupt.install_early_handler()

# OpenBLAS's threads spin for ~2^28 cycles after each call before they sleep.
# minicaffe sets the BLAS to one thread (minicaffe/threads.py), so they get no
# work; this only matters where that is impossible (threadpoolctl missing).
# OpenBLAS reads it when it loads (before numpy is imported); a set value wins.
_os.environ.setdefault('OPENBLAS_THREAD_TIMEOUT', '4')

from .glog import install_default_handler as _install_default_handler
_install_default_handler()          # log lines on stderr as pycaffe's glog writes them

from .blob import Blob  # noqa: F401
from .errors import MinicaffeError  # noqa: F401
from .layers.base import Layer, layer_type_list  # noqa: F401
from .net import Net, TRAIN, TEST  # noqa: F401
from .rng import set_random_seed  # noqa: F401
from .threads import set_num_threads, get_num_threads  # noqa: F401
from .blas import blas_info, select as select_blas  # noqa: F401
from . import threads as _threads
from . import mode as _mode
from .mode import set_mode_cpu, set_mode_gpu, set_device  # noqa: F401

__version__ = '0.1.0'
from .solvers import (get_solver, SGDSolver, NesterovSolver, AdaGradSolver,  # noqa: F401,E402
                      RMSPropSolver, AdaDeltaSolver, AdamSolver)

# pycaffe's module-level names: caffe.io, caffe.draw, caffe.net_spec, Classifier, Detector,
# NetSpec, and ``from caffe import layers as L, params as P``.
from . import io, draw, net_spec  # noqa: F401,E402
from .classifier import Classifier, Detector  # noqa: F401,E402
from .net_spec import NetSpec, to_proto, params  # noqa: F401,E402
from .layers.python_layer import allow_python_layers  # noqa: F401,E402


class _NetSpecLayers(net_spec.Layers):
    """``minicaffe.layers`` is pycaffe's net_spec ``L`` (``L.Convolution(...)``);
    lower-case names (``minicaffe.layers.base``, ``.vision``...) still reach the
    package of layer implementations."""

    def __getattr__(self, name):
        if name[:1].islower() or name.startswith('_'):
            import importlib
            pkg = importlib.import_module(__name__ + '.layers')
            try:
                return getattr(pkg, name)
            except AttributeError:
                return importlib.import_module(__name__ + '.layers.' + name)
        return net_spec.Layers.__getattr__(self, name)


layers = _NetSpecLayers()

# The BLAS runs one thread per minicaffe worker (see minicaffe/threads.py); set
# now, at run time, so it holds however numpy was loaded.
_threads.limit_blas_threads()


# pycaffe's multi-GPU API and utilities, imported on first use so that
# `import minicaffe` never imports CuPy or mpi4py.
_LAZY = {
    'NCCL': 'minicaffe.parallel.nccl',
    'has_nccl': 'minicaffe.parallel.nccl_comm',
    'set_solver_count': 'minicaffe.parallel.state',
    'set_solver_rank': 'minicaffe.parallel.state',
    'solver_count': 'minicaffe.parallel.state',
    'solver_rank': 'minicaffe.parallel.state',
    'set_multiprocess': 'minicaffe.parallel.state',
    'Timer': 'minicaffe.timer',
    'init_log': 'minicaffe.glog',
    'log': 'minicaffe.glog',
}


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError("module 'minicaffe' has no attribute '%s'" % name)
    import importlib
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
