"""glog's log lines for the ``minicaffe`` logger, in the command and in Python.

Caffe logs through glog: ``I1124 13:45:06.123456  4242 net.cpp:84] Creating Layer conv1``.
minicaffe's log records carry the file and line of the Python statement that logged
them (wrappers that log on behalf of their caller pass ``stacklevel``), and
:class:`GlogFormatter` writes them in glog's format.

Two ways the lines reach stderr:

* ``minicaffe COMMAND`` calls :func:`minicaffe.cli.setup_logging`, which gives the
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
