"""The one checked way to read a file a user names (nets, solvers, weights,
solver states, mean files, data-source lists, images).

A user path may name anything: ``/dev/zero`` (endless), a FIFO (``open``
blocks until a writer comes, forever), a directory, or a multi-GB file.  Only
regular files are read, and no more than ``MAX_FILE_BYTES`` of them --
protobuf's own 2 GB message limit, which is Caffe's limit for every file it
reads (``MINICAFFE_MAX_FILE_BYTES`` lowers or raises it).  The file is opened
non-blocking and checked on the open descriptor (``fstat``), so a FIFO never
blocks and the file checked is the file read.

Readers that hand a path to another library (h5py, LMDB, PIL) call
:func:`check_regular_file` first.
"""
import os
import stat

from .errors import MinicaffeError

PROTOBUF_LIMIT = 2 ** 31 - 1


def max_file_bytes():
    env = os.environ.get('MINICAFFE_MAX_FILE_BYTES')
    if env:
        try:
            return int(float(env))
        except ValueError:
            raise MinicaffeError('MINICAFFE_MAX_FILE_BYTES must be a number of bytes, got %r'
                                 % env) from None
    return PROTOBUF_LIMIT


def _kind(mode):
    for test, name in ((stat.S_ISDIR, 'a directory'), (stat.S_ISFIFO, 'a FIFO (named pipe)'),
                       (stat.S_ISCHR, 'a character device'), (stat.S_ISBLK, 'a block device'),
                       (stat.S_ISSOCK, 'a socket')):
        if test(mode):
            return name
    return 'not a regular file'


def _check_stat(st, path, what, error, limit):
    if not stat.S_ISREG(st.st_mode):
        raise error('%s %s is %s; only regular files can be read' % (what, path, _kind(st.st_mode)))
    if st.st_size > limit:
        raise error('%s %s is %d bytes, more than the %d bytes minicaffe reads from one file'
                    ' (protobuf\'s 2 GB message limit, as in Caffe; MINICAFFE_MAX_FILE_BYTES'
                    ' changes it)' % (what, path, st.st_size, limit))


def check_regular_file(path, what='file', error=MinicaffeError, limit=None):
    """Raise ``error`` unless ``path`` is an existing regular file of at most
    ``limit`` bytes (default :func:`max_file_bytes`); returns its size."""
    path = os.fspath(path)
    limit = max_file_bytes() if limit is None else limit
    try:
        st = os.stat(path)
    except OSError as e:
        raise error('cannot read %s %s: %s' % (what, path, e.strerror or e)) from None
    _check_stat(st, path, what, error, limit)
    return st.st_size


def read_bytes(path, what='file', error=MinicaffeError, limit=None):
    """The whole content of the regular file ``path``, bounded by ``limit`` bytes."""
    path = os.fspath(path)
    limit = max_file_bytes() if limit is None else limit
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, 'O_NONBLOCK', 0) | getattr(os, 'O_CLOEXEC', 0))
    except OSError as e:
        check_regular_file(path, what, error, limit)     # names a directory as one
        raise error('cannot read %s %s: %s' % (what, path, e.strerror or e)) from None
    try:
        st = os.fstat(fd)
        _check_stat(st, path, what, error, limit)
        with os.fdopen(fd, 'rb') as f:
            fd = None
            # read(n) allocates n bytes first: ask for the file's size, not the
            # limit (2 GB of address space per read failed under a ulimit -v)
            raw = f.read(min(st.st_size, limit) + 1)
            while len(raw) <= limit:            # it grew since fstat: the rest, bounded
                more = f.read(min(1 << 24, limit + 1 - len(raw)))
                if not more:
                    break
                raw += more
    except OSError as e:
        raise error('cannot read %s %s: %s' % (what, path, e.strerror or e)) from None
    finally:
        if fd is not None:
            os.close(fd)
    if len(raw) > limit:          # it grew while we read it
        raise error('%s %s grew past the %d bytes minicaffe reads from one file'
                    % (what, path, limit))
    return raw


def read_text(path, what='file', error=MinicaffeError, limit=None):
    """:func:`read_bytes` decoded as UTF-8 with universal newlines (as ``open(path, 'r')``);
    binary content is a clear ``error``."""
    raw = read_bytes(path, what, error, limit)
    try:
        text = raw.decode('utf-8')
    except UnicodeDecodeError as e:
        raise error('%s %s is not UTF-8 text (binary content at byte %d)' % (what, path, e.start)) from None
    return text.replace('\r\n', '\n').replace('\r', '\n')
