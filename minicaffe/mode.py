"""Compute mode (pycaffe's set_mode_cpu / set_mode_gpu / set_device) and the
layer dispatch that follows it (Caffe's Layer::Forward / Backward).

In GPU mode a layer runs ``forward_gpu`` / ``backward_gpu`` when its class
defines them and its CPU ``forward`` / ``backward`` otherwise, as Caffe's
Forward_gpu falls back to Forward_cpu; blobs copy between host and device only
when the other side is touched (:class:`minicaffe.blob.SyncedMemory`).
"""
from .errors import MinicaffeError

_state = {'mode': 'cpu', 'device': 0}


def set_mode_cpu():
    _state['mode'] = 'cpu'


def set_mode_gpu():
    """GPU mode; without CuPy or a CUDA device a MinicaffeError says what is missing."""
    from .gpu import backend
    cupy = backend.require_cupy()
    backend._cache['cupy'] = cupy
    try:
        cupy.cuda.Device(_state['device']).use()
    except Exception as e:      # CuPy raises its own CUDARuntimeError types
        raise MinicaffeError('GPU mode: cannot use CUDA device %d (%s)' % (_state['device'], e))
    _state['mode'] = 'gpu'


def set_device(device_id):
    _state['device'] = int(device_id)
    if _state['mode'] == 'gpu':
        set_mode_gpu()


def mode():
    return _state['mode']


def is_gpu():
    return _state['mode'] == 'gpu'


def run_forward(layer, bottom, top):
    """Caffe's Layer::Forward dispatch: forward_gpu in GPU mode where the layer has one."""
    if _state['mode'] == 'gpu':
        f = getattr(layer, 'forward_gpu', None)
        if f is not None:
            return f(bottom, top)
    return layer.forward(bottom, top)


def run_backward(layer, top, propagate_down, bottom):
    if _state['mode'] == 'gpu':
        f = getattr(layer, 'backward_gpu', None)
        if f is not None:
            return f(top, propagate_down, bottom)
    return layer.backward(top, propagate_down, bottom)


def synchronize():
    """Wait for the device (timings); nothing in CPU mode."""
    if _state['mode'] == 'gpu':
        from .gpu.backend import cupy_module
        cupy_module().cuda.Device().synchronize()
