"""CuPy detection: minicaffe runs without CuPy; asking for the GPU then says why not."""
from ..errors import MinicaffeError

INSTALL_HINT = ('install the CuPy extra for your CUDA version: pip install -e ".[cuda13]"'
                ' (or ".[cuda12]")')


def _import_cupy():
    try:
        import cupy
    except ImportError:
        return None
    return cupy


def available():
    """True when CuPy imports and sees at least one CUDA device."""
    cupy = _import_cupy()
    if cupy is None:
        return False
    try:
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:      # CUDA driver missing or broken: CuPy raises its own types
        return False


_cache = {}
_reset_hooks = []      # callables that drop state built on the cached module


def on_reset(hook):
    """Call ``hook()`` on :func:`reset` (kernels and rng register their caches here,
    so that this module imports neither: they import it)."""
    if hook not in _reset_hooks:
        _reset_hooks.append(hook)


def cupy_module():
    """The cupy module for the GPU path (checked once, then cached)."""
    cp = _cache.get('cupy')
    if cp is None:
        cp = _cache['cupy'] = require_cupy()
    return cp


def reset():
    """Forget the cached module and compiled kernels (tests swap CuPy stand-ins)."""
    _cache.clear()
    for hook in _reset_hooks:
        hook()


def require_cupy():
    """The cupy module, or a MinicaffeError explaining what is missing."""
    cupy = _import_cupy()
    if cupy is None:
        raise MinicaffeError('GPU mode needs CuPy, which is not installed; ' + INSTALL_HINT)
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:
        raise MinicaffeError('GPU mode: CuPy is installed but CUDA is not usable here (%s)' % e)
    if count == 0:
        raise MinicaffeError('GPU mode: CuPy is installed but this machine has no CUDA device')
    return cupy
