"""Coordinate maps between the tops of a NetSpec graph (pycaffe's caffe.coord_map).

A spatial layer relates output coordinates to input coordinates by an affine
map per spatial axis, ``out = a * in + b``, written ``(axis, a, b)``: ``axis`` is
the first axis the map applies to (None for a point-wise layer, which fits any
axis), ``a`` and ``b`` are arrays with one value per spatial axis (or scalars):

* Convolution / Pooling / Im2col, stride s, extent e = (k - 1) d + 1, pad p:
  ``a = 1 / s``, ``b = (p - (e - 1) / 2) / s`` (window centres);
* Deconvolution: the inverse, ``a = s``, ``b = (e - 1) / 2 - p``;
* Crop with offset o on axes >= axis: ``(axis - 1, 1, -o)``;
* point-wise layers (ReLU, BatchNorm, Eltwise, ...): the identity ``(None, 1, 0)``;
* anything else (InnerProduct, Reshape, global pooling, ...) has no map.

``coord_map_from_to(top_from, top_to)`` walks back from both tops to a common
ancestor, composing maps on the way, and returns the map taking coordinates of
``top_to`` to those of ``top_from``.  ``crop(top_from, top_to)`` uses it to
write the Crop layer that aligns ``top_from`` with ``top_to`` -- how the FCN
nets crop their upsampled scores to the input (``n.score = crop(n.upscore,
n.data)``): it needs scale 1 and a non-negative integer offset.
"""
import numpy as np

from .errors import MinicaffeError
from .net_spec import layers as L

PASS_THROUGH_LAYERS = ['AbsVal', 'BatchNorm', 'Bias', 'BNLL', 'Clip', 'Dropout', 'Eltwise',
                       'ELU', 'Exp', 'Log', 'LRN', 'MVN', 'Power', 'PReLU', 'ReLU', 'Scale',
                       'Sigmoid', 'Split', 'Swish', 'TanH', 'Threshold']

IDENTITY = (None, 1, 0)


class UndefinedMapException(MinicaffeError):
    """The layer has no coordinate map (it is not spatial, or not point-wise)."""


class AxisMismatchException(MinicaffeError):
    """Two maps apply to different first axes and cannot be composed."""


class UnconnectedTopsError(MinicaffeError, RuntimeError):
    """No common ancestor reachable through layers with coordinate maps
    (a RuntimeError, as pycaffe raises)."""


class CropError(MinicaffeError, AssertionError):
    """crop() cannot align the tops: scale is not 1, or the offset is negative or
    fractional (an AssertionError, as pycaffe's asserts raise)."""


def _spatial(params, name, default):
    """A repeated spatial field (kernel_size, stride, pad, dilation) as an array,
    or its legacy ``<name>_h``/``<name>_w`` pair (kernel_size -> kernel_h/_w)."""
    base = 'kernel' if name == 'kernel_size' else name
    if base + '_h' in params or base + '_w' in params:
        if name in params:
            raise MinicaffeError('coord_map: give %s or %s_h/%s_w, not both' % (name, base, base))
        return np.array([params.get(base + '_h', default), params.get(base + '_w', default)],
                        dtype=float)
    return np.array(params.get(name, default), ndmin=1, dtype=float)


def conv_params(fn):
    """(axis, stride, kernel extent (k - 1) * dilation + 1, pad) of a Convolution,
    Deconvolution, Im2col (convolution_param) or Pooling (pooling_param, or the
    layer's keywords) NetSpec layer ``fn``."""
    params = fn.params.get('convolution_param', fn.params.get('pooling_param', fn.params))
    if 'kernel_size' not in params and 'kernel_h' not in params:
        raise UndefinedMapException('coord_map: %s layer without kernel_size has no coordinate'
                                    ' map' % fn.type_name)
    kernel = _spatial(params, 'kernel_size', 1)
    dilation = _spatial(params, 'dilation', 1)
    return (params.get('axis', 1), _spatial(params, 'stride', 1),
            (kernel - 1) * dilation + 1, _spatial(params, 'pad', 0))


def crop_params(fn):
    """(axis, offset) of a Crop NetSpec layer, with Caffe's defaults (axis 2, offset 0)."""
    params = fn.params.get('crop_param', fn.params)
    return params.get('axis', 2), np.array(params.get('offset', 0), ndmin=1)


def coord_map(fn):
    """The map (axis, a, b) of one NetSpec layer: output coordinate = a * input + b."""
    t = fn.type_name
    if t in ('Convolution', 'Pooling', 'Im2col'):
        pp = fn.params.get('pooling_param', fn.params)
        if t == 'Pooling' and pp.get('global_pooling'):
            raise UndefinedMapException('coord_map: global pooling has no coordinate map')
        axis, stride, extent, pad = conv_params(fn)
        return axis, 1 / stride, (pad - (extent - 1) / 2) / stride
    if t == 'Deconvolution':
        axis, stride, extent, pad = conv_params(fn)
        return axis, stride, (extent - 1) / 2 - pad
    if t in PASS_THROUGH_LAYERS:
        return IDENTITY
    if t == 'Crop':
        axis, offset = crop_params(fn)
        return axis - 1, 1, -offset     # axis - 1: the last axis that is not cropped
    raise UndefinedMapException('coord_map: layer type %s has no coordinate map' % t)


def compose(base_map, next_map):
    """The map of ``base_map`` applied after ``next_map``: scales multiply, and
    next's shift is scaled by base's scale."""
    ax1, a1, b1 = base_map
    ax2, a2, b2 = next_map
    if ax1 is not None and ax2 is not None and ax1 != ax2:
        raise AxisMismatchException('coord_map: cannot compose maps on axis %s and axis %s'
                                    % (ax1, ax2))
    return (ax2 if ax1 is None else ax1), a1 * a2, a1 * b2 + b1


def inverse(coord_map):
    """The inverse map (input from output): the backward direction."""
    ax, a, b = coord_map
    return ax, 1 / a, -b / a


def _mappable_bottoms(top):
    # Every bottom of a layer maps the same way, except Crop's second bottom, which
    # only gives the shape.
    inputs = top.fn.inputs
    return inputs[:1] if top.fn.type_name == 'Crop' else inputs


def _ancestor_maps(top):
    """{ancestor top: map from that ancestor's coordinates to ``top``'s}, walking
    back through layers that have maps (the others end the walk)."""
    maps = {top: IDENTITY}
    frontier = [top]
    while frontier:
        t = frontier.pop()
        try:
            m = coord_map(t.fn)
        except UndefinedMapException:
            continue
        for bottom in _mappable_bottoms(t):
            if bottom not in maps:
                maps[bottom] = compose(maps[t], m)
                frontier.append(bottom)
    return maps


def coord_map_from_to(top_from, top_to):
    """The map (axis, a, b) from coordinates of ``top_to`` to those of ``top_from``:
    the two are walked back to a common ancestor top, whose map from ``top_from``
    is inverted."""
    from_maps = _ancestor_maps(top_from)
    to_maps = {top_to: IDENTITY}
    frontier = [top_to]
    while frontier:
        t = frontier.pop(0)             # breadth first: the nearest common ancestor
        if t in from_maps:
            return compose(to_maps[t], inverse(from_maps[t]))
        try:
            m = coord_map(t.fn)
        except UndefinedMapException:
            continue
        for bottom in _mappable_bottoms(t):
            if bottom not in to_maps:
                to_maps[bottom] = compose(to_maps[t], m)
                frontier.append(bottom)
    raise UnconnectedTopsError(
        'coord_map: no common ancestor of the %s top and the %s top through layers with'
        ' coordinate maps; are they connected by spatial layers?'
        % (top_from.fn.type_name, top_to.fn.type_name))


def crop(top_from, top_to):
    """A Crop layer (NetSpec Top) cropping ``top_from`` to align with ``top_to``."""
    ax, a, b = coord_map_from_to(top_from, top_to)
    a, b = np.asarray(a), np.asarray(b)
    if not (a == 1).all():
        raise CropError('crop: scale mismatch between the tops (a = %s); they must have the'
                        ' same resolution' % a)
    if not (b <= 0).all():
        raise CropError('crop: cannot crop a negative offset (b = %s): the top to crop is'
                        ' smaller than the reference' % b)
    if not (np.round(b) == b).all():
        raise CropError('crop: cannot crop a non-integer offset (b = %s)' % b)
    # ax + 1: the first cropped axis; point-wise layers only (ax None): Caffe's default 2
    return L.Crop(top_from, top_to,
                  crop_param=dict(axis=2 if ax is None else ax + 1,
                                  offset=[int(v) for v in -np.round(b).ravel()]))
