"""Compute mode (pycaffe's set_mode_cpu / set_mode_gpu / set_device)."""
from .errors import MinicaffeError

_state = {'mode': 'cpu', 'device': 0}


def set_mode_cpu():
    _state['mode'] = 'cpu'


def set_mode_gpu():
    raise MinicaffeError('GPU mode is not available in this build of minicaffe: the CuPy '
                         'backend has not landed yet; use set_mode_cpu()')


def set_device(device_id):
    _state['device'] = int(device_id)


def mode():
    return _state['mode']
