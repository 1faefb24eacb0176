"""ONNX export of minicaffe nets: ``minicaffe.onnx.export(net, path, opset=17)``.

Needs the ``onnx`` package (``pip install -e '.[onnx]'``); ONNX Runtime runs
the exported models in the tests.  See minicaffe/onnx/exporter.py.
"""
try:
    import onnx as _onnx  # noqa: F401  (the library, not this package: absolute import)
except ImportError as e:      # pragma: no cover - depends on the environment
    from minicaffe.errors import MinicaffeError
    raise MinicaffeError("ONNX export needs the onnx package: pip install 'minicaffe[onnx]'"
                         " (or pip install onnx)") from e

from minicaffe.onnx.exporter import DEFAULT_OPSET, export, has_dynamic_batch, to_model  # noqa: E402
from minicaffe.onnx.registry import supported_types  # noqa: E402

__all__ = ['export', 'to_model', 'has_dynamic_batch', 'supported_types', 'DEFAULT_OPSET']
