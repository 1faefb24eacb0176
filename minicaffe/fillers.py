"""Caffe's weight fillers (filler.hpp), chosen by FillerParameter.type.

constant  value                      uniform   U(min, max)
gaussian  N(mean, std), optional sparse: each weight kept with p = sparse / shape[0]
positive_unitball  U(0,1) then each of the shape[0] rows scaled to sum 1
xavier    U(-a, a), a = sqrt(3 / n)     msra  N(0, sqrt(2 / n))
          n = fan_in = count/shape[0], fan_out = count/shape[1], or their mean
          (variance_norm FAN_IN / FAN_OUT / AVERAGE)
bilinear  upsampling kernel for Deconvolution (4-D, square)
"""
import numpy as np

from .errors import NetDefinitionError
from .protoio import pb
from .rng import rng


def _fan(shape, norm):
    count = int(np.prod(shape)) if shape else 1
    fan_in = count // shape[0] if shape and shape[0] else count
    fan_out = count // shape[1] if len(shape) > 1 and shape[1] else count
    if norm == pb.FillerParameter.FAN_OUT:
        return fan_out
    if norm == pb.FillerParameter.AVERAGE:
        return (fan_in + fan_out) / 2.0
    return fan_in


def fill(blob, filler_param, context=''):
    """Fill ``blob.data`` according to ``filler_param`` (a FillerParameter).

    Values NumPy cannot draw from (min > max, a range or std that overflows,
    a negative std) are a NetDefinitionError naming ``context``."""
    f = filler_param
    if f.type == 'uniform' and not f.min <= f.max:
        raise NetDefinitionError('%s: uniform filler needs min <= max, got min %g, max %g'
                                 % (context, f.min, f.max))
    try:
        with np.errstate(over='ignore', invalid='ignore'):
            return _fill(blob, f, context)
    except (OverflowError, ValueError) as e:
        raise NetDefinitionError('%s: %s filler cannot draw values with these parameters (%s)'
                                 % (context, f.type, e)) from None


def _fill(blob, f, context):
    shape = blob.shape
    t = f.type
    r = rng()
    if t == 'constant':
        blob.data[...] = f.value
    elif t == 'uniform':
        blob.data[...] = r.uniform(f.min, f.max, shape)
    elif t == 'gaussian':
        data = r.normal(f.mean, f.std, shape)
        if f.sparse >= 0:
            if len(shape) < 1:
                raise NetDefinitionError('%s: sparse gaussian filler needs a blob with axes' % context)
            p = f.sparse / float(shape[0])
            data *= r.random(shape) < p
        blob.data[...] = data
    elif t == 'positive_unitball':
        data = r.uniform(0, 1, shape).reshape(shape[0] if shape else 1, -1)
        data /= data.sum(axis=1, keepdims=True)
        blob.data[...] = data.reshape(shape)
    elif t == 'xavier':
        a = np.sqrt(3.0 / _fan(shape, f.variance_norm))
        blob.data[...] = r.uniform(-a, a, shape)
    elif t == 'msra':
        blob.data[...] = r.normal(0.0, np.sqrt(2.0 / _fan(shape, f.variance_norm)), shape)
    elif t == 'bilinear':
        if len(shape) != 4 or shape[2] != shape[3]:
            raise NetDefinitionError('%s: bilinear filler needs a 4-D blob with square kernels,'
                                     ' got %s' % (context, shape))
        k = shape[3]
        fc = np.ceil(k / 2.0)
        c = (2 * fc - 1 - fc % 2) / (2.0 * fc)
        x = np.arange(k)
        w = 1 - np.abs(x / fc - c)
        blob.data[...] = np.outer(w, w)[None, None]
    else:
        raise NetDefinitionError('%s: unknown filler type "%s" (known: constant, uniform,'
                                 ' gaussian, positive_unitball, xavier, msra, bilinear)' % (context, t))
    return blob
