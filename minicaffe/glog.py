"""glog's log lines for the ``minicaffe`` logger, in the command and in Python.

Caffe logs through glog: ``I1124 13:45:06.123456  4242 net.cpp:84] Creating Layer conv1``.
minicaffe's log records carry the file and line of the Python statement that logged
them (wrappers that log on behalf of their caller pass ``stacklevel``), and
:class:`GlogFormatter` writes them in glog's format.

Two ways the lines reach stderr:

* ``minicaffe COMMAND`` calls :func:`setup_logging`, which gives the
  logger its own handler (levels from ``-q``/``-v`` and ``GLOG_minloglevel``).
* ``import minicaffe`` in a script behaves as pycaffe, whose glog writes INFO lines to
  stderr (``solver.step(100)`` prints the iteration lines): :func:`install_default_handler`
  adds :class:`PycaffeHandler`, which honours ``GLOG_minloglevel`` (0 INFO, 1 WARNING,
  2 ERROR, 3 FATAL) and stands aside as soon as someone else handles the records -- the
  command's handler, or any handler of the root logger (``logging.basicConfig``, pytest's
  caplog) -- so that no line is written twice.
"""
import logging
import os
import sys
import time

from .errors import MinicaffeError

LOGGER_NAME = 'minicaffe'

# GLOG_minloglevel -> the lowest level shown (glog: 0 INFO, 1 WARNING, 2 ERROR, 3 FATAL).
_MIN_LEVELS = {0: logging.INFO, 1: logging.WARNING, 2: logging.ERROR}


def env_min_level(default=logging.INFO):
    """The level ``GLOG_minloglevel`` asks for (``default`` when unset or not a number)."""
    text = os.environ.get('GLOG_minloglevel')
    if text is None:
        return default
    try:
        return _MIN_LEVELS.get(int(text), logging.CRITICAL)
    except ValueError:
        return default


class GlogFormatter(logging.Formatter):
    """``I1124 13:45:06.123456  4242 file.py:120] message`` (glog's line prefix), with the
    file and line the record itself carries (where the logging call was made)."""

    LEVELS = {logging.DEBUG: 'I', logging.INFO: 'I', logging.WARNING: 'W',
              logging.ERROR: 'E', logging.CRITICAL: 'F'}

    def format(self, record):
        t = time.localtime(record.created)
        micro = int((record.created - int(record.created)) * 1e6)
        prefix = '%s%02d%02d %02d:%02d:%02d.%06d %5d %s:%d] ' % (
            self.LEVELS.get(record.levelno, 'I'), t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min,
            t.tm_sec, micro, record.process or os.getpid(), record.filename, record.lineno)
        msg = record.getMessage()
        if record.exc_info:
            msg += '\n' + self.formatException(record.exc_info)
        return prefix + msg


class StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time of each record (callers such
    as test harnesses and progress bars may swap sys.stderr after setup)."""

    def __init__(self):
        logging.Handler.__init__(self)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


class PycaffeHandler(StderrHandler):
    """The handler ``import minicaffe`` installs: glog lines on stderr, as pycaffe
    writes them, unless another handler takes the records (see the module docstring)."""

    def __init__(self):
        StderrHandler.__init__(self)
        self.setFormatter(GlogFormatter())

    def handle(self, record):
        if record.levelno < env_min_level():
            return False
        logger = logging.getLogger(LOGGER_NAME)
        if any(h is not self for h in logger.handlers) or logging.getLogger().handlers:
            return False            # someone else writes these records
        return StderrHandler.handle(self, record)


def install_default_handler():
    """Give the ``minicaffe`` logger pycaffe's behaviour (once; idempotent): a
    :class:`PycaffeHandler` and level INFO, so that INFO records are made at all
    (an unset level would inherit the root logger's WARNING)."""
    logger = logging.getLogger(LOGGER_NAME)
    if not any(isinstance(h, PycaffeHandler) for h in logger.handlers):
        logger.addHandler(PycaffeHandler())
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    return logger


# ---------------------------------------------------------------- the command's handlers
def open_log_file(path):
    """A log file as glog writes one (its header lines first), so that Caffe's
    tools/extra/parse_log.py (which reads the year from the header) accepts it."""
    f = open(path, 'a', buffering=1)
    _write_log_header(f)
    return f


def _write_log_header(f):
    import platform
    now = time.localtime()
    f.write('Log file created at: %s\n' % time.strftime('%Y/%m/%d %H:%M:%S', now))
    f.write('Running on machine: %s\n' % platform.node())
    f.write('Log line format: [IWEF]mmdd hh:mm:ss.uuuuuu threadid file:line] msg\n')


class _LogFileHandler(logging.StreamHandler):
    """``--log-file PATH``.  A path that cannot be opened is an error at start;
    a write that fails later (a full disk, an I/O error) gives ONE warning on
    stderr and the file is not written again (logging's default would print a
    ``--- Logging error ---`` block for every record and go on)."""

    def __init__(self, path):
        try:
            stream = open(path, 'a', buffering=1)
        except OSError as e:
            raise MinicaffeError('--log-file %s: cannot open it for writing: %s'
                                 % (path, e.strerror or e)) from None
        logging.StreamHandler.__init__(self, stream)
        self.path, self.failed = path, False
        try:
            _write_log_header(stream)
        except OSError as e:
            self._give_up(e)

    def emit(self, record):
        if not self.failed:
            logging.StreamHandler.emit(self, record)

    def flush(self):
        if self.failed:
            return
        try:
            logging.StreamHandler.flush(self)
        except OSError as e:
            self._give_up(e)

    def handleError(self, record):
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            self._give_up(exc)
        else:
            logging.StreamHandler.handleError(self, record)

    def _give_up(self, exc):
        if self.failed:
            return
        self.failed = True
        try:
            self.stream.close()         # drops what could not be written
        except (OSError, ValueError):
            pass
        logger = logging.getLogger('minicaffe')
        logger.removeHandler(self)
        logger.warning('--log-file %s: writing failed (%s); the log is no longer written to it'
                       ' (stderr still has it)', self.path, getattr(exc, 'strerror', None) or exc)


def setup_logging(verbosity=0, stream=None, log_file=None):
    """Route the ``minicaffe`` logger to stderr in glog format.

    Level: INFO by default; ``GLOG_minloglevel`` (0 INFO, 1 WARNING, 2 ERROR,
    3 FATAL) as in Caffe; ``verbosity`` < 0 (-q) forces WARNING, > 0 (-v) DEBUG.
    """
    level = env_min_level()
    if verbosity < 0:
        level = max(level, logging.WARNING)
    elif verbosity > 0:
        level = logging.DEBUG
    logger = logging.getLogger('minicaffe')
    for h in list(logger.handlers):
        if getattr(h, '_minicaffe_cli', False):
            logger.removeHandler(h)
            if getattr(h, '_minicaffe_owns_stream', False):
                h.stream.close()
    handler = logging.StreamHandler(stream) if stream is not None else StderrHandler()
    handler.setFormatter(GlogFormatter())
    handler._minicaffe_cli = True
    logger.addHandler(handler)
    if log_file:
        fh = _LogFileHandler(log_file)
        fh.setFormatter(GlogFormatter())
        fh._minicaffe_cli = True
        fh._minicaffe_owns_stream = True
        if not fh.failed:               # (its header did not fit: warned once already)
            logger.addHandler(fh)
    logger.setLevel(level)
    logger.propagate = False
    return handler


def init_log(level=None, stderr=True):
    """pycaffe's ``caffe.init_log([level[, stderr]])``: log lines in glog's
    format on stderr; ``level`` is glog's minloglevel (0 INFO .. 3 FATAL).
    ``stderr=False`` silences them (glog would write its own log files then;
    ``minicaffe --log-file`` is the way to a file here)."""
    setup_logging(0, stream=None if stderr else open(os.devnull, 'w'))
    if level is not None:
        logging.getLogger('minicaffe').setLevel(
            {0: logging.INFO, 1: logging.WARNING, 2: logging.ERROR}.get(int(level), logging.CRITICAL))


def log(message):
    """pycaffe's ``caffe.log(msg)``: one INFO line on the ``minicaffe`` logger."""
    logging.getLogger('minicaffe').info('%s', message, stacklevel=2)   # the caller's file:line
