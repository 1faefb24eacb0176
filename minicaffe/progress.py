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
