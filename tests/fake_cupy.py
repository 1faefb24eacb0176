"""A CPU stand-in for CuPy, so CI (no GPU) runs minicaffe's whole GPU path.

Device arrays are a NumPy subclass (:class:`ndarray`) that refuses to mix with
host arrays (CuPy raises there too), ``RawModule`` builds the real kernel
sources with g++ and ``-DMINICAFFE_CPU_EMULATION`` (common.cuh turns each
grid-stride loop into a plain loop), and every kernel launch is checked
against the kernel's C signature: device arrays only, float32 for ``float*``,
int32 for ``int*``, C-contiguous, and NumPy int32/float32 scalars (CuPy would
pass a Python int as 64 bits).  What this cannot see: real device timing,
races between threads (the loop is serial), NVRTC-only compile errors (the
nvcc tests cover those) and CuPy API differences from NumPy.

Use :func:`installed` as a context manager (the tests' ``fake_gpu`` fixture).
"""
import contextlib
import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import types

import numpy as np

_CXX = shutil.which('g++') or shutil.which('c++')
_BUILD_DIR = None


class ndarray(np.ndarray):
    """A 'device' array: host memory, but only device operations allowed."""

    def get(self, stream=None, order='C', out=None, blocking=True):
        if out is None:
            return np.array(self.view(np.ndarray), copy=True)
        if isinstance(out, ndarray) or out.shape != self.shape or out.dtype != self.dtype:
            raise ValueError('get(out=): a host array of shape %s dtype %s is needed'
                             % (self.shape, self.dtype))
        np.copyto(out, self.view(np.ndarray))
        return out

    def set(self, arr, stream=None):
        if isinstance(arr, ndarray) or not isinstance(arr, np.ndarray):
            raise TypeError('set() takes a host numpy array')
        if arr.shape != self.shape or arr.dtype != self.dtype:
            raise ValueError('set(): shape/dtype mismatch %s %s vs %s %s'
                             % (arr.shape, arr.dtype, self.shape, self.dtype))
        np.copyto(self.view(np.ndarray), arr)

    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kwargs):
        _no_host(inputs)
        if out is not None:
            _no_host(out)
            kwargs['out'] = tuple(_host_view(o) for o in out)
        res = getattr(ufunc, method)(*[_host_view(x) for x in inputs], **kwargs)
        if out is not None:
            return out[0] if len(out) == 1 else out
        return _wrap(res)

    def __array_function__(self, func, types_, args, kwargs):
        _no_host(_flat(args) + _flat(list(kwargs.values())))
        return _wrap(func(*_unwrap(args), **_unwrap(kwargs)))

    def __repr__(self):
        return 'fake_cupy.' + repr(self.view(np.ndarray))

    def __iter__(self):
        raise TypeError('iterating over a device array copies element by element; '
                        'not supported by this stand-in')

    def tolist(self):
        raise TypeError('tolist() on a device array: use .get() first')


def _host_view(x):
    return x.view(np.ndarray) if isinstance(x, ndarray) else x


def _flat(seq):
    out = []
    for x in seq:
        if isinstance(x, (list, tuple)):
            out.extend(_flat(x))
        else:
            out.append(x)
    return out


def _no_host(items):
    for x in _flat(list(items)):
        if isinstance(x, np.ndarray) and not isinstance(x, ndarray):
            raise TypeError('host numpy array (shape %s) mixed into a device operation'
                            % (x.shape,))


def _unwrap(x):
    if isinstance(x, ndarray):
        return x.view(np.ndarray)
    if isinstance(x, tuple):
        return tuple(_unwrap(v) for v in x)
    if isinstance(x, list):
        return [_unwrap(v) for v in x]
    if isinstance(x, dict):
        return {k: _unwrap(v) for k, v in x.items()}
    return x


def _wrap(res):
    if isinstance(res, np.ndarray) and not isinstance(res, ndarray):
        return res.view(ndarray)
    if isinstance(res, tuple):
        return tuple(_wrap(r) for r in res)
    return res


# ----------------------------------------------------------------- kernels
_SIG = re.compile(r'KERNEL\s+void\s+(\w+)\s*\(([^)]*)\)', re.S)


def _parse_signatures(code):
    sigs = {}
    for name, params in _SIG.findall(code):
        kinds = []
        for p in params.split(','):
            p = ' '.join(p.split())
            base = p.replace('const ', '').split()[0].rstrip('*')
            kinds.append((base, '*' in p))
        sigs[name] = kinds
    return sigs


class _Kernel(object):
    def __init__(self, module, name, sig):
        self.module, self.name, self.sig = module, name, sig
        self.fn = getattr(module.lib, name)
        self.fn.restype = None

    def __call__(self, grid, block, args, **kwargs):
        if not (isinstance(grid, tuple) and isinstance(block, tuple)
                and all(isinstance(g, int) and g > 0 for g in grid + block)):
            raise TypeError('%s: grid and block must be tuples of positive ints, got %r %r'
                            % (self.name, grid, block))
        if len(args) != len(self.sig):
            raise TypeError('%s takes %d arguments, got %d' % (self.name, len(self.sig), len(args)))
        conv = []
        for i, (a, (base, ptr)) in enumerate(zip(args, self.sig)):
            where = '%s argument %d' % (self.name, i)
            if ptr:
                if not isinstance(a, ndarray):
                    raise TypeError('%s: a device array is needed, got %s' % (where, type(a)))
                want = {'float': np.float32, 'int': np.int32}[base]
                if a.dtype != want:
                    raise TypeError('%s: %s* needs %s, got %s' % (where, base, np.dtype(want), a.dtype))
                if not a.flags.c_contiguous:
                    raise TypeError('%s: array is not C-contiguous' % where)
                conv.append(ctypes.c_void_p(a.ctypes.data))
            elif base == 'int':
                if type(a) is not np.int32:
                    raise TypeError('%s: int parameter needs numpy.int32, got %s' % (where, type(a)))
                conv.append(ctypes.c_int(int(a)))
            elif base == 'float':
                if type(a) is not np.float32:
                    raise TypeError('%s: float parameter needs numpy.float32, got %s' % (where, type(a)))
                conv.append(ctypes.c_float(float(a)))
            else:
                raise TypeError('%s: unsupported parameter type %s' % (where, base))
        RawModule.launches[self.name] = RawModule.launches.get(self.name, 0) + 1
        self.fn(*conv)


class RawModule(object):
    """cupy.RawModule(code=..., options=...): built with g++ in emulation mode."""
    launches = {}

    def __init__(self, code=None, options=(), **kwargs):
        global _BUILD_DIR
        if _CXX is None:
            raise RuntimeError('fake_cupy needs g++ to build the kernels')
        if _BUILD_DIR is None:
            _BUILD_DIR = tempfile.mkdtemp(prefix='fake_cupy_')
        includes = [o for o in options if o.startswith('-I')]
        key = hashlib.sha1((code + repr(includes)).encode()).hexdigest()[:16]
        so = os.path.join(_BUILD_DIR, key + '.so')
        if not os.path.exists(so):
            src = os.path.join(_BUILD_DIR, key + '.cpp')
            with open(src, 'w') as f:
                f.write(code)
            r = subprocess.run([_CXX, '-O2', '-x', 'c++', '-std=c++14', '-DMINICAFFE_CPU_EMULATION',
                                '-shared', '-fPIC'] + includes + ['-o', so, src],
                               capture_output=True, text=True)
            if r.returncode != 0:
                raise RuntimeError('kernel build failed:\n' + r.stderr)
        self.lib = ctypes.CDLL(so)
        self.sigs = _parse_signatures(code)

    def get_function(self, name):
        if name not in self.sigs:
            raise AttributeError('no kernel %s in this module' % name)
        return _Kernel(self, name, self.sigs[name])


# ----------------------------------------------------------------- module
class _RandomState(object):
    def __init__(self, seed=None):
        self.g = np.random.default_rng(seed)

    def random_sample(self, size=None, dtype=np.float64):
        return self.g.random(size, dtype=dtype).view(ndarray)

    def uniform(self, low=0.0, high=1.0, size=None, dtype=np.float64):
        return (self.g.random(size, dtype=np.float64) * (high - low) + low).astype(dtype).view(ndarray)


class _Device(object):
    def __init__(self, i=0):
        self.id = int(i)

    def use(self):
        pass

    def synchronize(self):
        pass


def asarray(a, dtype=None, order=None):
    if isinstance(a, ndarray):
        return a if dtype is None or a.dtype == np.dtype(dtype) else a.astype(dtype)
    return np.array(a, dtype=dtype, copy=True, order='C').view(ndarray)


def array(a, dtype=None, copy=True, order='K'):
    return np.array(_host_view(a), dtype=dtype, copy=True).view(ndarray)


def asnumpy(a, stream=None, order='C', out=None):
    if isinstance(a, ndarray):
        return a.get(out=out)
    return np.asarray(a)


class _Module(types.ModuleType):
    """`import cupy` inside installed(): NumPy functions on device arrays."""

    def __getattr__(self, name):
        attr = getattr(np, name)
        if isinstance(attr, type) or not callable(attr):
            return attr

        def fn(*args, **kwargs):
            _no_host(_flat(list(args)) + _flat(list(kwargs.values())))
            return _wrap(attr(*_unwrap(args), **_unwrap(kwargs)))
        fn.__name__ = name
        return fn


def make_module():
    m = _Module('cupy')
    m.ndarray = ndarray
    m.asarray = asarray
    m.array = array
    m.asnumpy = asnumpy
    m.RawModule = RawModule
    m.random = types.SimpleNamespace(RandomState=_RandomState)
    m.cuda = types.SimpleNamespace(
        runtime=types.SimpleNamespace(getDeviceCount=lambda: 1),
        Device=_Device)
    m.get_array_module = lambda *args: m if any(isinstance(a, ndarray) for a in args) else np
    m.__fake__ = True
    return m


@contextlib.contextmanager
def installed():
    """Make `import cupy` give the stand-in (and reset minicaffe's GPU caches)."""
    from minicaffe import mode
    from minicaffe.gpu import backend
    saved = sys.modules.get('cupy')
    sys.modules['cupy'] = module = make_module()
    backend.reset()
    try:
        yield module
    finally:
        mode.set_mode_cpu()
        if saved is None:
            sys.modules.pop('cupy', None)
        else:
            sys.modules['cupy'] = saved
        backend.reset()
