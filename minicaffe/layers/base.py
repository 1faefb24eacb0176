"""The Layer base class and the layer-type registry.

Lifecycle (as Caffe's Layer::SetUp / Forward / Backward), driven by the Net:

* ``setup(bottom, top)``    -- Caffe's LayerSetUp: read ``self.layer_param``,
                               create learnable ``self.blobs`` (with fillers)
                               unless weights were given in the prototxt.
* ``reshape(bottom, top)``  -- size the tops from the bottoms; called before
                               every forward.
* ``forward(bottom, top)``  -- write ``top[i].data``.
* ``backward(top, propagate_down, bottom)`` -- write ``bottom[i].diff`` for
  each i with ``propagate_down[i]``; ACCUMULATE (+=) into
  ``self.blobs[j].diff`` when ``self.param_propagate_down[j]``.

``bottom``/``top`` are lists of :class:`minicaffe.blob.Blob`.  In-place layers
get the same Blob object as bottom[i] and top[i].  The Net, not the layer,
handles loss weights: it multiplies and sums loss tops and seeds their diffs.

A subclass registers itself with ``@register_layer('TypeName')``.  Blob-count
checks use the class attributes below (Caffe's ExactNumBottomBlobs etc.).
This class is also the base of user Python layers (pycaffe's ``caffe.Layer``):
those override setup/reshape/forward/backward and read ``self.param_str``.
"""
import difflib

import numpy as np

from ..blob import Blob, DTYPE
from ..errors import NetDefinitionError, layer_context

_REGISTRY = {}


def register_layer(type_name):
    def deco(cls):
        if type_name in _REGISTRY:
            raise RuntimeError('layer type %s registered twice' % type_name)
        _REGISTRY[type_name] = cls
        cls.type_name = type_name
        return cls
    return deco


def layer_type_list():
    return sorted(_REGISTRY)


def layer_class(type_name, layer_param=None):
    try:
        return _REGISTRY[type_name]
    except KeyError:
        close = difflib.get_close_matches(type_name, list(_REGISTRY), n=1, cutoff=0.5)
        if not close:  # also try case-insensitive ("relu" -> "ReLU")
            lower = {k.lower(): k for k in _REGISTRY}
            if type_name.lower() in lower:
                close = [lower[type_name.lower()]]
        hint = ' (did you mean "%s"?)' % close[0] if close else ''
        where = (' in ' + layer_context(layer_param)) if layer_param is not None else ''
        raise NetDefinitionError('unknown layer type "%s"%s%s; known types: %s'
                                 % (type_name, where, hint, ', '.join(sorted(_REGISTRY))))


class Layer(object):
    type_name = None
    exact_num_bottom = -1
    min_num_bottom = -1
    max_num_bottom = -1
    exact_num_top = -1
    min_num_top = -1
    max_num_top = -1
    equal_num_bottom_top = False
    auto_top_blobs = False       # loss layers: the net adds a missing top
    is_loss = False              # loss layers get loss_weight 1 on top 0 by default
    # May top i be bottom i (a top named like its bottom)?  Caffe's rule: only where
    # the layer supports it; the Net refuses in-place use of any other layer type.
    # True only where forward and backward give the same numbers in place
    # (tests/test_layer_sweeps.py checks every type).
    supports_in_place = False
    # Whether reshape depends on nothing but the blobs' shapes and the layer's
    # fixed parameters: the Net then skips it while the bottoms and tops keep
    # their arrays (net._Step).  False (reshape before every forward, as Caffe)
    # for layers whose reshape reads data, files or user code.
    static_reshape = False

    @classmethod
    def allows_in_place(cls, layer_param):
        """Whether this layer, as configured, may run in place (default: the class's
        ``supports_in_place``; a type whose support depends on its parameters overrides it)."""
        return cls.supports_in_place

    def __init__(self, layer_param, phase=None):
        from .. import protoio
        self.layer_param = layer_param
        self.phase = phase if phase is not None else layer_param.phase
        self.blobs = BlobList()
        self.param_propagate_down = []
        # Weights written in the prototxt/caffemodel layer itself (rare).
        for i, bp in enumerate(layer_param.blobs):
            self.blobs.append(protoio.blob_from_proto(
                bp, '%s: blob %d written in the net' % (layer_context(layer_param), i)))
        # pycaffe Python layers read these
        self.param_str = layer_param.python_param.param_str if layer_param.HasField('python_param') else ''

    # ---- helpers for subclasses ----------------------------------------
    @property
    def name(self):
        return self.layer_param.name

    @property
    def type(self):
        return self.layer_param.type

    def error(self, msg):
        return NetDefinitionError('%s: %s' % (layer_context(self.layer_param), msg))

    def check(self, cond, msg):
        if not cond:
            raise self.error(msg)

    def allow_force_backward(self, bottom_index):
        return True

    # ---- lifecycle ------------------------------------------------------
    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        raise NotImplementedError

    def forward(self, bottom, top):
        raise NotImplementedError

    def backward(self, top, propagate_down, bottom):
        if any(propagate_down):
            raise self.error('this layer type cannot backpropagate to its inputs')

    def workspace_shapes(self, bottom, top):
        """[(what, shape, dtype)]: the largest scratch arrays forward/backward
        allocate beside the blobs, for the shapes set by the last reshape.  The
        Net checks each against the per-array limits at set-up (so a huge pad or
        local_size is refused naming the layer, before anything is allocated)
        and counts the largest in its memory estimate."""
        return []

    def kept_shapes(self, bottom, top):
        """[(what, shape, dtype)]: the arrays the layer keeps from one pass to the
        next (for backward, or reused), for the shapes set by the last reshape.
        The Net checks each against the per-array limits at set-up and counts
        them all in its memory estimate (each layer keeps its own)."""
        return []

    def check_blob_counts(self, bottom, top):
        nb, nt = len(bottom), len(top)

        def bad(kind, n, rule, want):
            raise self.error('takes %s %d %s blob(s), got %d' % (rule, want, kind, n))
        if self.exact_num_bottom >= 0 and nb != self.exact_num_bottom:
            bad('bottom', nb, 'exactly', self.exact_num_bottom)
        if self.min_num_bottom >= 0 and nb < self.min_num_bottom:
            bad('bottom', nb, 'at least', self.min_num_bottom)
        if self.max_num_bottom >= 0 and nb > self.max_num_bottom:
            bad('bottom', nb, 'at most', self.max_num_bottom)
        if self.exact_num_top >= 0 and nt != self.exact_num_top:
            bad('top', nt, 'exactly', self.exact_num_top)
        if self.min_num_top >= 0 and nt < self.min_num_top:
            bad('top', nt, 'at least', self.min_num_top)
        if self.max_num_top >= 0 and nt > self.max_num_top:
            bad('top', nt, 'at most', self.max_num_top)
        if self.equal_num_bottom_top and nb != nt:
            raise self.error('needs as many tops as bottoms, got %d bottoms and %d tops' % (nb, nt))

    def needed_auto_tops(self):
        return max(self.min_num_top, self.exact_num_top, 0)

    def kept_array(self, name, shape, dtype=DTYPE, xp=np):
        """The array the layer keeps as attribute ``name`` (from forward for
        backward, or a large scratch buffer), reused while its shape and dtype
        hold: a fresh one of AlexNet's size costs page faults on every pass.
        ``xp`` is numpy, or cupy for a device array."""
        arr = getattr(self, name, None)
        if arr is None or arr.shape != tuple(shape) or arr.dtype != dtype:
            arr = xp.empty(shape, dtype=dtype)
            setattr(self, name, arr)
        return arr


class BlobList(list):
    """The list of a layer's learnable blobs (pycaffe's ``layer.blobs``)."""

    def add_blob(self, *shape):
        self.append(Blob(shape))
        return self[-1]
