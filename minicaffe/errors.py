"""Errors minicaffe raises for bad input.

Every user-facing failure is a :class:`MinicaffeError` whose message names the
file, line, layer and what was expected, so a user never has to read a
traceback from deep inside the library to find out what is wrong.
"""


class MinicaffeError(Exception):
    """Base class of all errors caused by user input (nets, weights, data)."""


class PrototxtError(MinicaffeError):
    """A prototxt (text protobuf) file that does not parse."""


class NetDefinitionError(MinicaffeError):
    """A net that parses but cannot be built (unknown type, bad wiring, bad shape)."""


class WeightsError(MinicaffeError):
    """A weights/snapshot/mean file that is missing, corrupt or does not fit the net."""


class IncompleteWeightsError(WeightsError):
    """A weights file that fits the net but lacks some of its learnable layers,
    loaded with ``strict=True`` (or a snapshot, which must hold every layer)."""


class DataSourceError(MinicaffeError):
    """A data layer whose source is missing or unreadable."""


class NonFiniteLossError(MinicaffeError):
    """Training stopped at a NaN/inf loss (``--halt-on-nan``, Solver.halt_on_nonfinite)."""


def layer_context(layer_param):
    """'layer "conv1" (Convolution)' for error messages."""
    return 'layer "%s" (%s)' % (layer_param.name, layer_param.type)


class ExportError(MinicaffeError):
    """A net that cannot be written in another format (e.g. layers ONNX cannot express)."""
