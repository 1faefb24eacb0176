"""The "Python" layer: a user class named by ``python_param { module layer }``.

As in pycaffe, the user class derives :class:`minicaffe.Layer` and defines
``setup(bottom, top)``, ``reshape(bottom, top)``, ``forward(bottom, top)`` and
``backward(top, propagate_down, bottom)``; it reads ``self.param_str``
(python_param.param_str) and ``self.phase`` (0 = TRAIN, 1 = TEST), may create
learnable blobs with ``self.blobs.add_blob(*shape)``, and may set
``exact_num_bottom`` etc. for blob-count checks.  ``net.layers[i]`` is the user
object itself.  The class is constructed as ``cls(layer_param, phase)``: user
classes normally define no ``__init__`` (pycaffe's never do); one that does
must accept those two arguments and call ``super().__init__(layer_param, phase)``.

Importing the module runs its code, so it is refused unless the user opts in,
with the environment variable ``MINICAFFE_ALLOW_PYTHON_LAYERS=1`` or
``minicaffe.allow_python_layers(True)``.  The module is imported with Python's
normal search path (``sys.path``, i.e. PYTHONPATH), as Caffe does.
``share_in_parallel`` has no effect (there is one solver).
"""
import importlib
import os

from ..errors import NetDefinitionError, layer_context
from .base import Layer, register_layer

ENV_VAR = 'MINICAFFE_ALLOW_PYTHON_LAYERS'
_allowed = {'flag': None}     # None: follow the environment variable


def allow_python_layers(allow=True):
    """Allow (or forbid) nets with Python layers to import and run their modules."""
    _allowed['flag'] = bool(allow)


def python_layers_allowed():
    if _allowed['flag'] is not None:
        return _allowed['flag']
    return os.environ.get(ENV_VAR, '').strip().lower() in ('1', 'true', 'yes', 'on')


def _user_class(layer_param):
    ctx = layer_context(layer_param)
    p = layer_param.python_param
    if not p.module or not p.layer:
        raise NetDefinitionError('%s: python_param needs both module and layer (got module "%s",'
                                 ' layer "%s")' % (ctx, p.module, p.layer))
    if not python_layers_allowed():
        raise NetDefinitionError(
            '%s: Python layers import and run the module "%s" (class "%s"), which is not allowed by'
            ' default. If you trust that code, set the environment variable %s=1 or call'
            ' minicaffe.allow_python_layers(True) before building the net.'
            % (ctx, p.module, p.layer, ENV_VAR))
    try:
        module = importlib.import_module(p.module)
    except ImportError as e:
        raise NetDefinitionError('%s: cannot import Python layer module "%s": %s (the module must be'
                                 ' on sys.path; add its folder to PYTHONPATH)'
                                 % (ctx, p.module, e)) from None
    except Exception as e:
        raise NetDefinitionError('%s: importing Python layer module "%s" failed: %s: %s'
                                 % (ctx, p.module, type(e).__name__, e)) from e
    cls = getattr(module, p.layer, None)
    if cls is None:
        raise NetDefinitionError('%s: module "%s" (%s) has no class "%s"'
                                 % (ctx, p.module, getattr(module, '__file__', '?'), p.layer))
    if not (isinstance(cls, type) and issubclass(cls, Layer)):
        raise NetDefinitionError('%s: %s.%s must be a class deriving minicaffe.Layer (caffe.Layer)'
                                 % (ctx, p.module, p.layer))
    return cls


@register_layer('Python')
class PythonLayer(Layer):
    """Factory for user layers: ``PythonLayer(layer_param, phase)`` returns an
    instance of the class named by python_param (see the module docstring).

    forward/backward/shapes: whatever the user class computes.
    """
    supports_in_place = True      # the user's code decides, as in Caffe

    def __new__(cls, layer_param, phase=None):
        user_cls = _user_class(layer_param)
        if phase is None:
            phase = layer_param.phase
        try:
            obj = user_cls(layer_param, phase)
        except TypeError as e:
            raise NetDefinitionError('%s: constructing %s.%s(layer_param, phase) failed: %s'
                                     % (layer_context(layer_param), layer_param.python_param.module,
                                        layer_param.python_param.layer, e)) from None
        # A user __init__ that skipped Layer.__init__: give the object what the Net needs.
        if not hasattr(obj, 'layer_param'):
            Layer.__init__(obj, layer_param, phase)
        obj.param_str = layer_param.python_param.param_str
        obj.phase = phase
        return obj
