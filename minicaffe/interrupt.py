"""Ctrl-C at any moment of a ``minicaffe`` command: ``minicaffe: interrupted``, exit 130.

Python turns SIGINT into ``KeyboardInterrupt``; :func:`minicaffe.commands.cli.main`
catches it, but only once main() runs.  Before that the interpreter is still
importing numpy, h5py, protobuf and the layers (a good fraction of a
second), and a Ctrl-C there printed an import traceback and exited -2.
So when the process was started as the ``minicaffe`` command (the console
script or ``python -m minicaffe``), the package's ``__init__`` installs
:func:`_exit_now` before any heavy import, and main() hands SIGINT back to
Python's ``KeyboardInterrupt`` once it can catch it.  ``import minicaffe`` in
a user's program never changes its SIGINT handling.

This module imports only the standard library's os, signal and sys.
"""
import os
import signal
import sys

MESSAGE = 'minicaffe: interrupted'
EXIT_CODE = 130
_SCRIPT_NAMES = ('minicaffe', 'minicaffe.exe', 'minicaffe-script.py')


def _exit_now(signum, frame):
    # Nothing has been written yet: leave at once, without unwinding imports.
    try:
        os.write(2, (MESSAGE + '\n').encode())
    except OSError:
        pass
    os._exit(EXIT_CODE)


def started_as_command(argv=None, orig_argv=None):
    """True when this process is the ``minicaffe`` command: the console script
    (argv[0] is .../minicaffe) or ``python -m minicaffe`` (while runpy imports
    the package argv[0] is "-m"; the interpreter's own arguments name the module)."""
    argv = sys.argv if argv is None else argv
    orig_argv = getattr(sys, 'orig_argv', []) if orig_argv is None else orig_argv
    first = argv[0] if argv else ''
    if os.path.basename(first) in _SCRIPT_NAMES:
        return True
    if first != '-m':
        return False
    for i, arg in enumerate(orig_argv[1:], 1):
        if arg == '-m':
            module = orig_argv[i + 1] if i + 1 < len(orig_argv) else ''
        elif arg.startswith('-m'):
            module = arg[2:]
        else:
            continue
        return module.split('.')[0] == 'minicaffe'
    return False


def install_early_handler():
    """Exit 130 on SIGINT from now on, if the process is the minicaffe command
    and SIGINT still has Python's default handler (an ignored SIGINT, e.g. in a
    background job, stays ignored)."""
    if not started_as_command():
        return
    try:
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, _exit_now)
    except (ValueError, OSError):       # not the main thread: leave signals alone
        pass


def raise_keyboard_interrupt():
    """From here on SIGINT raises KeyboardInterrupt again (main() catches it)."""
    try:
        if signal.getsignal(signal.SIGINT) is _exit_now:
            signal.signal(signal.SIGINT, signal.default_int_handler)
    except (ValueError, OSError):
        pass
