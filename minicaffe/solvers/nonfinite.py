"""Finding where a training run's numbers went bad (NaN or infinity).

Checked only after the fact: when the loss (or, see :func:`diffs_finite`,
the gradient) of an iteration is not finite, :func:`describe` scans the train
net once, in layer order, for the first layer whose top (forward) and the
first layer whose param diff (backward) holds a non-finite value, so that the
warning can say whether the data, a layer's output or a gradient went bad
first.
"""
import numpy as np


def _finite(array):
    return bool(np.isfinite(array).all())


def first_nonfinite_top(net):
    """(layer name, layer type, top name) of the first layer, in forward order,
    whose top holds NaN/inf; None if every top is finite."""
    names = net._blob_names
    for lid, layer in enumerate(net.layers):
        for blob_id in net.top_ids[lid]:
            if not _finite(net._blob_list[blob_id].data):
                return net._layer_names[lid], layer.type, names[blob_id]
    return None


def first_nonfinite_param_diff(net):
    """(layer name, layer type, param index) of the first layer, in layer order,
    whose param diff holds NaN/inf; None if every param diff is finite."""
    for lid, layer in enumerate(net.layers):
        for j, blob in enumerate(layer.blobs):
            if not _finite(blob.diff):
                return net._layer_names[lid], layer.type, j
    return None


def diffs_finite(net):
    """True when every learnable param's diff is finite: one float64 sum per
    param (NaN and inf survive a sum; float64 cannot overflow on float32
    values), on the device in GPU mode (gpu_diff), one number to the host."""
    from .. import mode
    gpu = mode.is_gpu()
    for b in net.learnable_params:
        d = b.gpu_diff if gpu else b.diff
        if d.size and not np.isfinite(float(d.sum(dtype=np.float64))):
            return False
    return True


def params_finite(net):
    """True when every learnable weight of ``net`` is finite."""
    return all(_finite(b.data) for b in net.learnable_params)


def describe(net):
    """One sentence naming where the values first went non-finite."""
    parts = []
    top = first_nonfinite_top(net)
    if top is not None:
        parts.append('the first layer whose output is not finite is "%s" (%s), top "%s"' % top)
    diff = first_nonfinite_param_diff(net)
    if diff is not None:
        parts.append('the first layer whose param diff is not finite is "%s" (%s), param %d' % diff)
    if not parts:
        return 'every top and param diff of the train net is finite now'
    return '; '.join(parts)
