"""Layer implementations; importing ``all_layers`` registers every type."""
from .base import Layer, register_layer, layer_type_list, layer_class  # noqa: F401
