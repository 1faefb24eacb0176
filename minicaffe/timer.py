"""pycaffe's ``caffe.Timer`` (Caffe's caffe/util/benchmark.hpp Timer)."""
import time

from . import mode as _mode


class Timer(object):
    """pycaffe's ``caffe.Timer`` (Caffe's Timer): ``start()``, ``stop()`` and
    ``ms``, the milliseconds between the last start and stop (a running timer
    is stopped first; 0 before it has run).  In GPU mode start and stop wait
    for the device, so the time is of finished device work, as Caffe's CUDA
    events measure it."""

    def __init__(self):
        self.running = False
        self.has_run = False
        self._start = 0.0
        self._elapsed_ms = 0.0

    def start(self):
        if not self.running:
            _mode.synchronize()
            self._start = time.perf_counter()
            self.running = True
            self.has_run = True

    def stop(self):
        if self.running:
            _mode.synchronize()
            self._elapsed_ms = (time.perf_counter() - self._start) * 1e3
            self.running = False

    @property
    def ms(self):
        if not self.has_run:
            return 0.0
        if self.running:
            self.stop()
        return self._elapsed_ms

    @property
    def seconds(self):
        return self.ms / 1e3
