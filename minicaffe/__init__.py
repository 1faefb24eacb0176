"""minicaffe: a Caffe-faithful deep learning framework (NumPy on the CPU).

Use it as pycaffe:  ``import minicaffe as caffe``.
"""
from .blob import Blob  # noqa: F401
from .errors import MinicaffeError  # noqa: F401
from .layers.base import Layer, layer_type_list  # noqa: F401
from .net import Net, TRAIN, TEST  # noqa: F401
from .rng import set_random_seed  # noqa: F401
from . import mode as _mode
from .mode import set_mode_cpu, set_mode_gpu, set_device  # noqa: F401

__version__ = '0.1.0'
from .solvers import (get_solver, SGDSolver, NesterovSolver, AdaGradSolver,  # noqa: F401,E402
                      RMSPropSolver, AdaDeltaSolver, AdamSolver)
