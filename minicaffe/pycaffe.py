"""pycaffe's ``caffe.pycaffe`` module name (``from caffe.pycaffe import Net``):
the names upstream's python/caffe/pycaffe.py exports, from where minicaffe keeps them."""
from .net import Net  # noqa: F401
from .solvers import (SGDSolver, NesterovSolver, AdaGradSolver, RMSPropSolver,  # noqa: F401
                      AdaDeltaSolver, AdamSolver)


def __getattr__(name):
    # NCCL and Timer: minicaffe's package namespace resolves them (imported lazily there)
    import minicaffe
    if name in ('NCCL', 'Timer'):
        return getattr(minicaffe, name)
    raise AttributeError("module 'minicaffe.pycaffe' has no attribute '%s'" % name)
