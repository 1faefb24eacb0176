"""Python net specification (pycaffe's caffe.net_spec), same rules as Caffe's.

    from minicaffe import layers as L, params as P, NetSpec
    n = NetSpec()
    n.data, n.label = L.Data(source='x_lmdb', backend=P.Data.LMDB, batch_size=64, ntop=2,
                             transform_param=dict(scale=1. / 255))
    n.conv1 = L.Convolution(n.data, kernel_size=5, num_output=20, weight_filler=dict(type='xavier'))
    n.relu1 = L.ReLU(n.conv1, in_place=True)
    print(n.to_proto())

Rules (python/caffe/net_spec.py):
* ``L.<Type>(*bottoms, **kwargs)`` makes a layer of that type; it returns its
  Top, a tuple of Tops when ``ntop`` > 1, or the layer itself when ``ntop=0``.
  Bottoms must be Tops.
* ``in_place=True`` names the tops like the bottoms.
* A keyword ending in ``param`` is set on the LayerParameter (``param=[...]``,
  ``transform_param={...}``, ``loss_param``...); any other keyword goes to the
  type's own ``<type>_param`` message when the type has one and the field
  exists there, else to the LayerParameter (``loss_weight``, ``include``,
  ``propagate_down``...).  Dicts become messages, lists repeated fields, and a
  single value for a repeated field becomes a one-element list.
* Names: a Top assigned to a NetSpec attribute gets that name, and a layer is
  named after its first top; unnamed tops and top-less layers are named
  ``<Type><k>`` with one counter per type, in the order ``to_proto`` visits them.
* ``to_proto`` emits every layer needed for the assigned tops, each once,
  dependencies first.
"""
from collections import Counter, OrderedDict

from .protoio import pb

caffe_pb2 = pb


def param_name_dict():
    """{'Convolution': 'convolution', ...}: parameter message type -> field prefix."""
    layer = pb.LayerParameter()
    names = [f.name for f in layer.DESCRIPTOR.fields if f.name.endswith('_param')]
    type_names = [f.message_type.name for f in layer.DESCRIPTOR.fields if f.name.endswith('_param')]
    names = [s[:-len('_param')] for s in names]
    type_names = [s[:-len('Parameter')] for s in type_names]
    return dict(zip(type_names, names))


def to_proto(*tops):
    """A NetParameter with every layer needed to compute ``tops`` (auto names)."""
    layers = OrderedDict()
    autonames = Counter()
    for top in tops:
        top.fn._to_proto(layers, {}, autonames)
    net = pb.NetParameter()
    net.layer.extend(layers.values())
    return net


def assign_proto(proto, name, val):
    """Assign a Python value to field ``name`` of a protobuf message, recursively:
    dicts become messages, lists repeated fields (lists of dicts repeated
    messages); a single value for a repeated field becomes a one-element list."""
    is_repeated_field = hasattr(getattr(proto, name), 'extend')
    if is_repeated_field and not isinstance(val, list):
        val = [val]
    if isinstance(val, list):
        if val and isinstance(val[0], dict):
            for item in val:
                proto_item = getattr(proto, name).add()
                for k, v in item.items():
                    assign_proto(proto_item, k, v)
        else:
            getattr(proto, name).extend(val)
    elif isinstance(val, dict):
        for k, v in val.items():
            assign_proto(getattr(proto, name), k, v)
    else:
        setattr(proto, name, val)


class Top(object):
    """One output blob of a layer (a Function)."""

    def __init__(self, fn, n):
        self.fn = fn
        self.n = n

    def to_proto(self):
        """A NetParameter with every layer needed to compute this top."""
        return to_proto(self)

    def _update(self, params):
        self.fn._update(params)

    def _to_proto(self, layers, names, autonames):
        return self.fn._to_proto(layers, names, autonames)


class Function(object):
    """A layer: its type, parameters and inputs (Tops of other layers)."""

    def __init__(self, type_name, inputs, params):
        self.type_name = type_name
        for index, input in enumerate(inputs):
            if not isinstance(input, Top):
                raise TypeError('%s input %d is not a Top (type is %s)' % (type_name, index, type(input)))
        self.inputs = inputs
        self.params = params
        self.ntop = self.params.get('ntop', 1)
        if 'ntop' in self.params:
            del self.params['ntop']
        self.in_place = self.params.get('in_place', False)
        if 'in_place' in self.params:
            del self.params['in_place']
        self.tops = tuple(Top(self, n) for n in range(self.ntop))

    def _get_name(self, names, autonames):
        if self not in names and self.ntop > 0:
            names[self] = self._get_top_name(self.tops[0], names, autonames)
        elif self not in names:
            autonames[self.type_name] += 1
            names[self] = self.type_name + str(autonames[self.type_name])
        return names[self]

    def _get_top_name(self, top, names, autonames):
        if top not in names:
            autonames[top.fn.type_name] += 1
            names[top] = top.fn.type_name + str(autonames[top.fn.type_name])
        return names[top]

    def _update(self, params):
        self.params.update(params)

    def _to_proto(self, layers, names, autonames):
        if self in layers:
            return
        bottom_names = []
        for inp in self.inputs:
            inp._to_proto(layers, names, autonames)
            bottom_names.append(layers[inp.fn].top[inp.n])
        layer = pb.LayerParameter()
        layer.type = self.type_name
        layer.bottom.extend(bottom_names)
        if self.in_place:
            layer.top.extend(layer.bottom)
        else:
            for top in self.tops:
                layer.top.append(self._get_top_name(top, names, autonames))
        layer.name = self._get_name(names, autonames)
        for k, v in self.params.items():
            if k.endswith('param'):
                assign_proto(layer, k, v)
            else:
                try:
                    assign_proto(getattr(layer, _param_names[self.type_name] + '_param'), k, v)
                except (AttributeError, KeyError):
                    assign_proto(layer, k, v)
        layers[self] = layer


class NetSpec(object):
    """Tops assigned as attributes (or items) by name; ``to_proto`` builds the net."""

    def __init__(self):
        super(NetSpec, self).__setattr__('tops', OrderedDict())

    def __setattr__(self, name, value):
        self.tops[name] = value

    def __getattr__(self, name):
        try:
            return self.tops[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setitem__(self, key, value):
        self.__setattr__(key, value)

    def __getitem__(self, item):
        return self.tops[item]

    def __delitem__(self, name):
        del self.tops[name]

    def keys(self):
        return list(self.tops.keys())

    def vals(self):
        return list(self.tops.values())

    def update(self, name, params):
        self.tops[name]._update(params)

    def to_proto(self):
        names = {v: k for k, v in self.tops.items()}
        autonames = Counter()
        layers = OrderedDict()
        for name, top in self.tops.items():
            top._to_proto(layers, names, autonames)
        net = pb.NetParameter()
        net.layer.extend(layers.values())
        return net


class Layers(object):
    """``L.<Type>(*bottoms, **params)`` makes a layer of that type (see module doc)."""

    def __getattr__(self, name):
        if name.startswith('__'):
            raise AttributeError(name)

        def layer_fn(*args, **kwargs):
            fn = Function(name, args, kwargs)
            if fn.ntop == 0:
                return fn
            elif fn.ntop == 1:
                return fn.tops[0]
            else:
                return fn.tops
        return layer_fn


class Parameters(object):
    """``P.Pooling.MAX`` is PoolingParameter.MAX, ``P.Data.LMDB`` DataParameter.LMDB, ..."""

    def __getattr__(self, name):
        if name.startswith('__'):
            raise AttributeError(name)

        class Param:
            def __getattr__(self, param_name):
                return getattr(getattr(pb, name + 'Parameter'), param_name)
        return Param()


_param_names = param_name_dict()
layers = Layers()
params = Parameters()
