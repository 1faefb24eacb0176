"""Export a minicaffe Net to ONNX: one converter per layer type (the modules
``layers_*`` register them), the exact forward of the net's current phase.

Inputs are the net's inputs, named and shaped as in the net; axis 0 is a
symbolic ``N`` unless some layer's ONNX form depends on it (then every input
keeps its size and the reasons are in ``model.doc_string``).  Outputs are the
net's outputs (or the blobs asked for), named as the blobs.  Layers ONNX cannot
express are collected and refused together in one :class:`ExportError`.
"""
import os
import tempfile

import onnx

from minicaffe.errors import ExportError
from minicaffe.onnx import graph as G
from minicaffe.onnx.registry import LayerContext, Unsupported, converter_for
# The converter modules register themselves on import.
from minicaffe.onnx import (layers_common, layers_loss, layers_neuron,  # noqa: F401
                            layers_recurrent, layers_vision)

DEFAULT_OPSET = 17
MIN_OPSET = 13
# Layers that produce nothing a consumer of the model can see.
_SKIPPED = {'Input', 'Silence'}


def max_opset():
    return onnx.defs.onnx_opset_version()


class _Exporter(object):
    def __init__(self, net, opset, outputs, dynamic_batch):
        if not MIN_OPSET <= opset <= max_opset():
            raise ExportError('ONNX opset %d is not supported: choose %d to %d (the installed onnx'
                              ' %s knows up to %d)' % (opset, MIN_OPSET, max_opset(),
                                                       onnx.__version__, max_opset()))
        self.net = net
        self.opset = opset
        self.outputs = list(net.outputs if outputs is None else outputs)
        self.dynamic_batch = dynamic_batch
        self.fixed_batch_reasons = []

    def build(self):
        net = self.net
        names = net._blob_names
        g = G.GraphBuilder(self.opset, reserved=set(names))
        value = {}
        for n in net.inputs:
            value[n] = n
        refused = []
        for lid, layer in enumerate(net.layers):
            lp = layer.layer_param
            tops = [names[i] for i in net.top_ids[lid]]
            if lp.type in _SKIPPED:
                continue
            bottoms = [names[i] for i in net.bottom_ids[lid]]
            fn = converter_for(lp.type)
            if fn is not None and any(value.get(b) is None for b in bottoms):
                # below a refused layer: that layer is the one to report
                for t in tops:
                    value[t] = None
                continue
            try:
                if fn is None:
                    raise Unsupported('no ONNX converter for this layer type')
                ctx = LayerContext(g, layer, [value[b] for b in bottoms],
                                   [net._blob_list[i].shape for i in net.bottom_ids[lid]],
                                   [net._blob_list[i].shape for i in net.top_ids[lid]],
                                   net.phase, self)
                outs = fn(ctx)
                if len(outs) != len(tops):
                    raise RuntimeError('converter for %s made %d outputs for %d tops'
                                       % (lp.type, len(outs), len(tops)))
            except Unsupported as e:
                refused.append((lp, str(e)))
                outs = [None] * len(tops)
            for t, v in zip(tops, outs):
                value[t] = v
        if refused:
            lines = ['  %s: layer "%s" (%s): %s' % (self._where(lp), lp.name, lp.type, why)
                     for lp, why in refused]
            raise ExportError('%s: cannot export to ONNX: %d layer%s ONNX cannot express:\n%s'
                              % (net.source, len(refused), '' if len(refused) == 1 else 's',
                                 '\n'.join(lines)))
        return self._model(g, value)

    def _where(self, lp):
        from minicaffe.net import _layer_line
        line = _layer_line(self.net.source, lp.name)
        return '%s:%d' % (self.net.source, line) if line else self.net.source

    def _batch_dim(self):
        shapes = [self.net.blobs[n].shape for n in self.net.inputs]
        if not self.dynamic_batch or self.fixed_batch_reasons or not shapes:
            return None
        if any(len(s) == 0 for s in shapes) or len({s[0] for s in shapes}) != 1:
            self.fixed_batch_reasons.append('the inputs differ in the size of axis 0')
            return None
        return shapes[0][0]

    def _model(self, g, value):
        net = self.net
        batch = self._batch_dim()

        def dims(shape, output=False):
            shape = list(shape)
            if batch is not None and shape:
                # an output's axis 0 other than the batch (a concat over it, say)
                # is left unknown: it follows N in some way the model computes
                shape[0] = 'N' if shape[0] == batch else (None if output else shape[0])
            return shape

        inputs = [G.value_info(n, dims(net.blobs[n].shape)) for n in net.inputs]
        outputs = []
        renames = {}
        for n in self.outputs:
            if n not in net.blobs:
                raise ExportError('%s: no blob named "%s" to export as an output'
                                  % (net.source, n))
            v = value.get(n)
            if v is None:
                raise ExportError('%s: blob "%s" has no ONNX value (its layer is skipped)'
                                  % (net.source, n))
            if v != n:
                if v in renames or v in net.inputs:
                    g.node('Identity', [v], outputs=[n])
                else:
                    # The producing node writes the output itself: ONNX Runtime's
                    # identity elimination mishandles an Identity graph output whose
                    # input has other consumers.
                    renames[v] = n
            shape = net.blobs[n].shape
            outputs.append(G.value_info(n, dims(shape, output=True)))
        G.rename_values(g.nodes, renames)
        model = G.make_model(g, inputs, outputs, net.name, self.opset)
        notes = ['exported by minicaffe from %s (phase %s)'
                 % (net.source, 'TRAIN' if net.phase == 0 else 'TEST')]
        if batch is None and self.dynamic_batch:
            notes.append('fixed batch: ' + '; '.join(self.fixed_batch_reasons))
        model.doc_string = '\n'.join(notes)
        return model


def to_model(net, opset=DEFAULT_OPSET, outputs=None, dynamic_batch=True):
    """The ONNX ModelProto of net's forward (see the module docstring)."""
    return _Exporter(net, int(opset), outputs, dynamic_batch).build()


def has_dynamic_batch(model):
    """Whether the model's inputs have a symbolic axis 0."""
    return any(i.type.tensor_type.shape.dim and i.type.tensor_type.shape.dim[0].dim_param
               for i in model.graph.input)


def export(net, path, opset=DEFAULT_OPSET, outputs=None, dynamic_batch=True):
    """Write net as an ONNX model to path (atomically) and return the model.

    net: a minicaffe Net (its phase, stages and weights are what is exported);
    opset: the ONNX opset (13 up to what the installed onnx knows);
    outputs: blob names to output (default: the net's outputs);
    dynamic_batch: make axis 0 of the inputs symbolic where the net allows it.
    """
    model = to_model(net, opset, outputs, dynamic_batch)
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=d, prefix='.' + os.path.basename(path) + '.', suffix='.tmp')
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(model.SerializeToString())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return model
