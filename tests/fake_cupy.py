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
import weakref

import numpy as np

import fake_nccl

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

    @property
    def data(self):
        """CuPy's ``a.data`` (a MemoryPointer): ``.ptr`` is the address the raw
        APIs (NCCL) take.  Each address handed out is remembered, so the fake NCCL
        can refuse pointers that did not come from a device array."""
        ptr = self.ctypes.data
        _device_ranges[ptr] = (self.nbytes, weakref.ref(self))
        return _MemoryPointer(ptr)

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


class _MemoryPointer(object):
    __slots__ = ('ptr',)

    def __init__(self, ptr):
        self.ptr = ptr


_device_ranges = {}     # address -> (nbytes, weakref to the array) for every a.data handed out


def device_buffer(ptr, count, itemsize, where):
    """The host memory behind a device pointer a raw API was given: ``count``
    items of ``itemsize`` bytes at ``ptr``, which must lie inside a live device
    array whose ``.data.ptr`` was taken (a host pointer is refused, as CUDA would
    fault on it)."""
    if type(ptr) is not int:
        raise TypeError('%s: a device pointer is an int (array.data.ptr), got %s' % (where, type(ptr).__name__))
    need = count * itemsize
    for base, (nbytes, ref) in list(_device_ranges.items()):
        if ref() is None:
            del _device_ranges[base]
            continue
        if base <= ptr and ptr + need <= base + nbytes:
            return (ctypes.c_char * need).from_address(ptr)
    raise ValueError('%s: %d bytes at 0x%x are not inside a device array' % (where, need, ptr))


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
            # FAKE_CUPY_BUILD_DIR: one build folder shared by the processes of a
            # multi-rank test (each .so is named by its source's hash)
            _BUILD_DIR = os.environ.get('FAKE_CUPY_BUILD_DIR') or tempfile.mkdtemp(prefix='fake_cupy_')
            os.makedirs(_BUILD_DIR, exist_ok=True)
        includes = [o for o in options if o.startswith('-I')]
        key = hashlib.sha1((code + repr(includes)).encode()).hexdigest()[:16]
        so = os.path.join(_BUILD_DIR, key + '.so')
        if not os.path.exists(so):
            src = os.path.join(_BUILD_DIR, '%s.%d.cpp' % (key, os.getpid()))
            with open(src, 'w') as f:
                f.write(code)
            tmp_so = '%s.%d.tmp' % (so, os.getpid())
            r = subprocess.run([_CXX, '-O2', '-x', 'c++', '-std=c++14', '-DMINICAFFE_CPU_EMULATION',
                                '-shared', '-fPIC'] + includes + ['-o', tmp_so, src],
                               capture_output=True, text=True)
            if r.returncode != 0:
                raise RuntimeError('kernel build failed:\n' + r.stderr)
            os.replace(tmp_so, so)      # atomic: another process may load it at once
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


def _device_count():
    """One device, or FAKE_CUPY_DEVICES of them (multi-GPU tests)."""
    return int(os.environ.get('FAKE_CUPY_DEVICES', '1'))


class _Device(object):
    _current = [0]

    def __init__(self, i=None):
        self.id = _Device._current[0] if i is None else int(i)

    def use(self):
        if not 0 <= self.id < _device_count():
            raise RuntimeError('cudaErrorInvalidDevice: invalid device ordinal %d' % self.id)
        _Device._current[0] = self.id

    def synchronize(self):
        pass


class Event(object):
    """cupy.cuda.Event: the stand-in runs every operation when it is queued,
    so a recorded event is complete at once."""

    def __init__(self, block=False, disable_timing=False, interprocess=False):
        self.recorded = False

    def record(self, stream=None):
        if stream is not None and not isinstance(stream, Stream):
            raise TypeError('Event.record(stream): a Stream is needed, got %s' % type(stream).__name__)
        self.recorded = True

    @property
    def done(self):
        return True

    def synchronize(self):
        pass


class Stream(object):
    """cupy.cuda.Stream: ``ptr`` (0 for the default stream), events, ``with stream:``."""
    _next_ptr = [0x5000]
    _current = []

    def __init__(self, null=False, non_blocking=False, ptds=False):
        if null:
            self.ptr = 0
        else:
            Stream._next_ptr[0] += 0x10
            self.ptr = Stream._next_ptr[0]
        self.non_blocking = non_blocking

    def record(self, event=None):
        event = Event() if event is None else event
        event.record(self)
        return event

    def wait_event(self, event):
        if not isinstance(event, Event):
            raise TypeError('Stream.wait_event: an Event is needed, got %s' % type(event).__name__)
        if not event.recorded:
            raise ValueError('Stream.wait_event: the event was never recorded')

    def synchronize(self):
        pass

    @property
    def done(self):
        return True

    def __enter__(self):
        Stream._current.append(self)
        return self

    def __exit__(self, *exc):
        Stream._current.pop()


_NULL_STREAM = Stream(null=True)


def get_current_stream():
    return Stream._current[-1] if Stream._current else _NULL_STREAM


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
    _Device._current[0] = 0
    m.cuda = types.ModuleType('cupy.cuda')
    m.cuda.runtime = types.SimpleNamespace(getDeviceCount=_device_count)
    m.cuda.Device = _Device
    m.cuda.Stream = Stream
    m.cuda.Event = Event
    m.cuda.get_current_stream = get_current_stream
    m.cuda.nccl = fake_nccl.make_module(device_buffer)
    m.get_array_module = lambda *args: m if any(isinstance(a, ndarray) for a in args) else np
    m.__fake__ = True
    return m


@contextlib.contextmanager
def installed():
    """Make `import cupy` give the stand-in (and reset minicaffe's GPU caches)."""
    from minicaffe import mode
    from minicaffe.gpu import backend
    names = ('cupy', 'cupy.cuda', 'cupy.cuda.nccl')
    saved = {name: sys.modules.get(name) for name in names}
    module = register(make_module())
    backend.reset()
    try:
        yield module
    finally:
        mode.set_mode_cpu()
        for name, value in saved.items():
            if value is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = value
        backend.reset()


def register(module):
    """Make ``import cupy`` / ``import cupy.cuda.nccl`` give ``module``."""
    sys.modules['cupy'] = module
    sys.modules['cupy.cuda'] = module.cuda
    sys.modules['cupy.cuda.nccl'] = module.cuda.nccl
    return module


def write_shim(folder):
    """A folder to put first on PYTHONPATH so that ``import cupy`` in a child
    process (``minicaffe train --gpu 0,1`` spawns its ranks; mpiexec) gives this
    stand-in.  Returns the PYTHONPATH entries: the shim and this tests folder."""
    pkg = os.path.join(folder, 'cupy')
    os.makedirs(pkg, exist_ok=True)
    with open(os.path.join(pkg, '__init__.py'), 'w') as f:
        f.write('import fake_cupy\nfake_cupy.register(fake_cupy.make_module())\n')
    return [folder, os.path.dirname(os.path.abspath(__file__))]
