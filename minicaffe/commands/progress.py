"""A dependency-free progress bar: drawn on a terminal, silent otherwise."""
import sys
import time


def progress(iterable, total=None, desc='', stream=None):
    stream = stream or sys.stderr
    if not stream.isatty():
        yield from iterable
        return
    total = total if total is not None else (len(iterable) if hasattr(iterable, '__len__') else None)
    t0 = time.time()
    for i, item in enumerate(iterable):
        yield item
        done = i + 1
        rate = done / max(1e-9, time.time() - t0)
        if total:
            filled = int(30 * done / total)
            stream.write('\r%s [%s%s] %d/%d %.1f/s' % (desc, '#' * filled, '.' * (30 - filled),
                                                       done, total, rate))
        else:
            stream.write('\r%s %d %.1f/s' % (desc, done, rate))
        stream.flush()
    stream.write('\n')


class SmoothedRate(object):
    """Seconds per training iteration, smoothed, for a progress bar's it/s and ETA.

    A sample is the time between the starts of two consecutive iterations, unless
    something that is not a training iteration ran in between (a test pass: the
    caller says so with ``interrupted=True``), and the samples are averaged with an
    exponential moving average (weight ``smoothing`` for the newest), so that one slow
    iteration, or the first ones, do not swing the ETA.  Until a first full sample
    exists, the time from the first iteration's start to :meth:`progress` (its forward
    and backward) stands in; nothing is known before that (``seconds_per_iter`` None).
    """

    def __init__(self, smoothing=0.1, clock=time.monotonic):
        self.smoothing, self.clock = float(smoothing), clock
        self.seconds_per_iter = None
        self._started = None            # clock() at the start of the current iteration
        self._full_samples = 0

    def iteration_started(self, interrupted=False):
        now = self.clock()
        if self._started is not None and not interrupted:
            self._add(now - self._started)
            self._full_samples += 1
        self._started = now

    def progress(self):
        """Within an iteration (e.g. gradients ready): a first estimate if there is none."""
        if self._full_samples == 0 and self._started is not None:
            self.seconds_per_iter = max(1e-9, self.clock() - self._started)

    def _add(self, seconds):
        seconds = max(1e-9, seconds)
        if self._full_samples == 0 or self.seconds_per_iter is None:
            self.seconds_per_iter = seconds         # the first full sample replaces the stand-in
        else:
            a = self.smoothing
            self.seconds_per_iter = a * seconds + (1 - a) * self.seconds_per_iter

    def per_second(self):
        return 1.0 / self.seconds_per_iter if self.seconds_per_iter else 0.0

    def eta(self, remaining):
        """Seconds for ``remaining`` more iterations, or None while unknown."""
        return None if self.seconds_per_iter is None else max(0, remaining) * self.seconds_per_iter
