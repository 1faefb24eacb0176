"""Reading and writing Caffe protobuf files (text prototxt and binary).

Text parse errors are reported as ``file:line:column: message`` naming the
offending token.  Binary files may be several hundred MB (protobuf's old
64 MB limit does not apply to the Python runtime's ParseFromString).
"""
import os
import re

import numpy as np
from google.protobuf import text_format
from google.protobuf.message import DecodeError

from . import fileio
from .blob import Blob, DTYPE, _checked_shape
from .errors import MinicaffeError, PrototxtError, WeightsError
from .proto import caffe_pb2

pb = caffe_pb2

_POS = re.compile(r'^(\d+):(\d+)\s*:\s*(.*)$', re.S)


def parse_text(text, message, source='<string>'):
    """Merge prototxt ``text`` into ``message``; errors name source:line:col."""
    try:
        text_format.Merge(text, message, allow_unknown_field=False)
    except text_format.ParseError as e:
        msg = str(e)
        m = _POS.match(msg)
        if m:
            line, col, what = int(m.group(1)), int(m.group(2)), m.group(3)
            lines = text.splitlines()
            snippet = lines[line - 1].strip() if 0 < line <= len(lines) else ''
            raise PrototxtError('%s:%d:%d: %s\n    %s' % (source, line, col, what, snippet)) from None
        raise PrototxtError('%s: %s' % (source, msg)) from None
    return message


def read_text(path, message_cls):
    path = os.fspath(path)
    raw = fileio.read_bytes(path, 'prototxt', MinicaffeError)
    try:
        text = raw.decode('utf-8').replace('\r\n', '\n').replace('\r', '\n')
    except UnicodeDecodeError:
        raise PrototxtError('%s: not a text prototxt (binary content)' % path) from None
    return parse_text(text, message_cls(), path)


def read_binary(path, message_cls, what='file'):
    path = os.fspath(path)
    raw = fileio.read_bytes(path, what, WeightsError)
    msg = message_cls()
    try:
        msg.ParseFromString(raw)
    except (DecodeError, RuntimeError, ValueError) as e:
        raise WeightsError('%s is not a valid %s (%s message does not decode: %s)'
                           % (path, what, message_cls.__name__, e)) from None
    return msg


def write_binary_atomic(path, message):
    write_bytes_atomic(path, message.SerializeToString())


def temp_path(path):
    """The temporary name a file is written under before it is renamed to
    ``path``: ``<path>.tmp-<pid>`` (the pid tells a later run whether the
    writer is still alive; see solvers/snapshot.remove_stale_temp_files)."""
    return '%s.tmp-%d' % (os.fspath(path), os.getpid())


def write_bytes_synced(path, payload):
    """Write ``payload`` to ``path`` and fsync it (no rename; OSError on failure)."""
    with open(path, 'wb') as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())


def write_bytes_atomic(path, payload):
    """Write to a temporary file beside ``path``, fsync, then rename over it."""
    path = os.fspath(path)
    tmp = temp_path(path)
    try:
        write_bytes_synced(tmp, payload)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path, message):
    write_bytes_atomic(path, caffe_text(message).encode('utf-8'))


# An unquoted number with a point or an exponent ends a text-format line: a float field.
_FLOAT_LINE = re.compile(r'^(\s*\w+: )(-?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?)$', re.M)


def _caffe_float(match):
    text = match.group(2)
    if '.' not in text and 'e' not in text.lower():
        return match.group(0)                   # an integer field
    value = float(text)
    # protobuf C++'s SimpleFtoa: 6 significant digits when they read back as the same
    # float32, else 9 (1 not 1.0, 0.01, 1e-05)
    short = '%.6g' % value
    if np.float32(float(short)) != np.float32(value):
        short = '%.9g' % value
    return match.group(1) + short


def caffe_text(message):
    """``message`` in text format as Caffe (protobuf C++) writes it: floats in their
    shortest form (``lr_mult: 1``, ``base_lr: 0.01``), where Python's protobuf writes ``1.0``."""
    return _FLOAT_LINE.sub(_caffe_float, text_format.MessageToString(message))


class DebugString(object):
    """A message in text format, as protobuf's DebugString, built only when printed
    (a log line's argument: nothing is formatted for a line nobody writes).  A
    NetParameter's layer blobs (weights a net was built with) are left out: millions
    of numbers in a log line help nobody."""

    def __init__(self, message):
        self.message = message

    def __str__(self):
        message = self.message
        layers = getattr(message, 'layer', None)
        if layers is not None and any(len(lp.blobs) for lp in layers):
            message = type(message)()
            message.CopyFrom(self.message)
            for lp in message.layer:
                del lp.blobs[:]
        return caffe_text(message)


# ---------------------------------------------------------------- BlobProto
def blob_proto_shape(bp):
    """Shape of a BlobProto: ``shape`` if present, else legacy 4-D num/channels/height/width."""
    if bp.HasField('shape'):
        return tuple(int(d) for d in bp.shape.dim)
    if any(bp.HasField(f) for f in ('num', 'channels', 'height', 'width')):
        return (bp.num, bp.channels, bp.height, bp.width)
    return ()


def blob_proto_array(bp, source='blob'):
    """Values of a BlobProto as a float32 array of its shape.  Every blob read from
    a file comes through here: the shape is checked (no negative dims, at most
    Caffe's INT_MAX elements, within the per-blob memory cap) and the number of
    stored values must match it, before anything is allocated."""
    try:
        shape = _checked_shape(blob_proto_shape(bp))
    except ValueError as e:
        raise WeightsError('%s: %s' % (source, e)) from None
    count = int(np.prod(shape, dtype=np.int64)) if shape else (len(bp.data) or len(bp.double_data))
    if len(bp.double_data):
        vals = np.asarray(bp.double_data, dtype=np.float64).astype(DTYPE)
    else:
        vals = np.asarray(bp.data, dtype=DTYPE)
    if vals.size != count:
        raise WeightsError('%s: holds %d values but its shape %s needs %d'
                           % (source, vals.size, shape, count))
    return vals.reshape(shape) if shape else vals


def blob_from_proto(bp, source='blob'):
    arr = blob_proto_array(bp, source)
    b = Blob(arr.shape)
    b.data[...] = arr
    if len(bp.diff) == arr.size:
        b.diff[...] = np.asarray(bp.diff, DTYPE).reshape(arr.shape)
    return b


def blob_to_proto(blob, bp=None, write_diff=False):
    """Fill a BlobProto from a Blob (or array) using the modern ``shape`` field."""
    bp = bp if bp is not None else pb.BlobProto()
    data = blob.data if hasattr(blob, 'data') else np.asarray(blob)
    bp.shape.dim.extend(int(d) for d in data.shape)
    bp.data.extend(np.asarray(data, DTYPE).ravel().tolist())
    if write_diff and hasattr(blob, 'diff'):
        bp.diff.extend(np.asarray(blob.diff, DTYPE).ravel().tolist())
    return bp


def shapes_match(blob_shape, proto_shape):
    """Caffe's ShapeEquals: legacy 4-D dims are right-aligned (1x1xMxK == MxK)."""
    blob_shape, proto_shape = tuple(blob_shape), tuple(proto_shape)
    if blob_shape == proto_shape:
        return True
    if len(proto_shape) == 4 and len(blob_shape) <= 4:
        pad = (1,) * (4 - len(blob_shape)) + blob_shape
        return pad == proto_shape
    return False
