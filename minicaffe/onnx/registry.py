"""The layer-converter registry and what a converter is given.

A converter is ``fn(ctx) -> [onnx value per top]`` registered with
``@converter('CaffeType')``.  It reads the layer's parameters from
``ctx.lp`` (the LayerParameter) and ``ctx.layer`` (the built minicaffe layer,
with its parsed geometry), the learnable blobs as ``ctx.params``, the static
shapes ``ctx.bottom_shapes``/``ctx.top_shapes``, and adds nodes through
``ctx.g`` (a :class:`minicaffe.onnx.graph.GraphBuilder`).  Anything ONNX cannot
express raises :class:`Unsupported`; the exporter collects those of every layer
and reports them together.
"""
import numpy as np

_CONVERTERS = {}


class Unsupported(Exception):
    """This layer (or this configuration of it) has no exact ONNX form."""


def converter(*type_names):
    def deco(fn):
        for t in type_names:
            if t in _CONVERTERS:
                raise RuntimeError('ONNX converter for %s registered twice' % t)
            _CONVERTERS[t] = fn
        return fn
    return deco


def converter_for(type_name):
    return _CONVERTERS.get(type_name)


def supported_types():
    return sorted(_CONVERTERS)


class LayerContext(object):
    """One layer being converted (see the module docstring)."""

    def __init__(self, g, layer, bottoms, bottom_shapes, top_shapes, phase, exporter):
        self.g = g
        self.layer = layer
        self.lp = layer.layer_param
        self.name = self.lp.name
        self.bottoms = bottoms
        self.bottom_shapes = [tuple(s) for s in bottom_shapes]
        self.top_shapes = [tuple(s) for s in top_shapes]
        self.params = [np.array(b.data, dtype=np.float32) for b in layer.blobs]
        self.phase = phase
        self._exporter = exporter

    def fixed_batch(self, why):
        """This layer's ONNX form depends on the size of axis 0: the model's
        inputs get a fixed batch dimension."""
        self._exporter.fixed_batch_reasons.append('layer "%s" (%s): %s'
                                                  % (self.name, self.lp.type, why))

    def hint(self, suffix=''):
        return self.name + ('_' + suffix if suffix else '')

    def param(self, i, hint):
        return self.g.const(self.params[i], self.hint(hint))

    def canonical_axis(self, axis, ndim):
        return axis + ndim if axis < 0 else axis

    def broadcastable(self, value, shape, axis, ndim, hint):
        """A constant of `shape` placed at `axis` of an ndim-D tensor (trailing
        ones appended, leading axes left to broadcasting)."""
        arr = np.asarray(value, np.float32).reshape(tuple(shape) + (1,) * (ndim - axis - len(shape)))
        return self.g.const(arr, self.hint(hint))
