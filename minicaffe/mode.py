"""Compute mode (pycaffe's set_mode_cpu / set_mode_gpu / set_device)."""
from .errors import MinicaffeError

_state = {'mode': 'cpu', 'device': 0}


def set_mode_cpu():
    _state['mode'] = 'cpu'


def set_mode_gpu():
    # Without CuPy (or a device) this names what to install; with them it still
    # refuses, because the layers' device path is not wired yet (see minicaffe.gpu).
    from .gpu.backend import require_cupy
    require_cupy()
    raise MinicaffeError('GPU mode is not available in this build of minicaffe: the CUDA'
                         ' kernels exist (minicaffe/gpu/kernels) but the layers do not run'
                         ' on the device yet; use set_mode_cpu()')


def set_device(device_id):
    _state['device'] = int(device_id)


def mode():
    return _state['mode']
