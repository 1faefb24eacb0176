"""Layer implementations.  Importing the package imports every layer module
(all_layers.py), and each registers its types with base.register_layer."""
from .base import Layer, register_layer, layer_type_list, layer_class  # noqa: F401
from . import all_layers  # noqa: F401,E402  (last: every module registers through base)
