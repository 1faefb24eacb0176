"""A small ONNX graph builder: unique value names, nodes, initializers and the
few ops whose signature changed between opsets (Reduce*, Split, Squeeze), so
the layer converters never deal with opset differences themselves.

Absolute imports only: this package is ``minicaffe.onnx`` and must not shadow
the ``onnx`` library it uses.
"""
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FLOAT = TensorProto.FLOAT
INT64 = TensorProto.INT64
# Caffe's -FLT_MAX: the value MAX pooling and ArgMax treat as "below everything".
FLT_MAX = float(np.finfo(np.float32).max)


class GraphBuilder(object):
    """Collects the nodes and initializers of one ONNX graph (or Scan body)."""

    def __init__(self, opset, reserved=(), parent=None):
        self.opset = opset
        self.nodes = []
        self.initializers = []
        # Names are unique across a graph and its subgraphs (ONNX requires a
        # body's names not to shadow the outer scope's).
        self._taken = parent._taken if parent is not None else set(reserved)
        self._consts = parent._consts if parent is not None else {}
        self._root = parent._root if parent is not None else self

    def fresh(self, hint):
        hint = hint.replace('/', '_') or 'v'
        name, i = hint, 1
        while name in self._taken:
            name = '%s_%d' % (hint, i)
            i += 1
        self._taken.add(name)
        return name

    def reserve(self, name):
        self._taken.add(name)
        return name

    def node(self, op, inputs, hint=None, outputs=1, **attrs):
        """Appends one node; returns its output name (or list of names when
        outputs is a number > 1 or a list of names)."""
        hint = hint or op.lower()
        if isinstance(outputs, int):
            names = [self.fresh(hint) for _ in range(outputs)]
        else:
            names = list(outputs)
        self.nodes.append(helper.make_node(op, list(inputs), names, name=self.fresh('n_' + hint),
                                           **attrs))
        return names[0] if isinstance(outputs, int) and outputs == 1 else names

    def const(self, value, hint='const', dtype=np.float32):
        """An initializer holding value (float32 unless dtype says otherwise);
        equal small constants are shared."""
        arr = np.asarray(value, dtype=dtype)
        key = None
        if arr.size <= 16:
            key = (arr.dtype.str, arr.shape, arr.tobytes())
            if key in self._consts:
                return self._consts[key]
        name = self.fresh(hint)
        # Initializers live in the main graph: Scan bodies read them from the outer scope.
        self._root.initializers.append(numpy_helper.from_array(arr, name))
        if key is not None:
            self._consts[key] = name
        return name

    def ints(self, values, hint='shape'):
        return self.const(np.asarray(values, np.int64).reshape(-1), hint, np.int64)

    # ---- ops whose form depends on the opset --------------------------------
    def reduce(self, op, x, axes, keepdims, hint=None):
        """ReduceSum/ReduceMean/ReduceMax over axes (attribute before opset 18,
        input after; ReduceSum takes an input since 13)."""
        if op == 'ReduceSum' or self.opset >= 18:
            return self.node(op, [x, self.ints(axes, 'axes')], hint, keepdims=int(keepdims))
        return self.node(op, [x], hint, axes=list(axes), keepdims=int(keepdims))

    def split(self, x, sizes, axis, hint=None):
        outs = self.node('Split', [x, self.ints(sizes, 'split')], hint, outputs=len(sizes),
                         axis=int(axis))
        return outs if len(sizes) > 1 else [outs]

    def unsqueeze(self, x, axes, hint=None):
        return self.node('Unsqueeze', [x, self.ints(axes, 'axes')], hint)

    def squeeze(self, x, axes, hint=None):
        return self.node('Squeeze', [x, self.ints(axes, 'axes')], hint)

    def reshape(self, x, shape, hint=None):
        return self.node('Reshape', [x, self.ints(shape)], hint)

    def slice(self, x, starts, ends, axes, hint=None):
        return self.node('Slice', [x, self.ints(starts, 'starts'), self.ints(ends, 'ends'),
                                   self.ints(axes, 'axes')], hint)

    def cast_float(self, x, hint=None):
        return self.node('Cast', [x], hint, to=FLOAT)

    def cast_int(self, x, hint=None):
        return self.node('Cast', [x], hint, to=INT64)

    def mul_const(self, x, c, hint=None):
        return self.node('Mul', [x, self.const(c)], hint)

    def add_const(self, x, c, hint=None):
        return self.node('Add', [x, self.const(c)], hint)


def rename_values(nodes, renames):
    """Renames values (node inputs and outputs, in subgraphs too) in place."""
    if not renames:
        return
    for n in nodes:
        n.input[:] = [renames.get(v, v) for v in n.input]
        n.output[:] = [renames.get(v, v) for v in n.output]
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                rename_values(a.g.node, renames)


def value_info(name, shape, elem_type=FLOAT):
    """A tensor type; dims given as ints, strings (symbolic) or None (unknown)."""
    return helper.make_tensor_value_info(name, elem_type, None if shape is None else list(shape))


def make_model(builder, inputs, outputs, name, opset):
    graph = helper.make_graph(builder.nodes, name or 'minicaffe', inputs, outputs,
                              initializer=builder.initializers)
    model = helper.make_model(graph, producer_name='minicaffe',
                              opset_imports=[helper.make_opsetid('', opset)])
    # Stay loadable by ONNX Runtimes that predate the installed onnx library.
    model.ir_version = min(model.ir_version, 8 if opset <= 18 else model.ir_version)
    onnx.checker.check_model(model)
    return model
