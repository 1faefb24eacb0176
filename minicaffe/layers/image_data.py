"""Data layers that read images and databases: ImageData, Data (LMDB),
WindowData, and the HDF5Output writer.

All three readers are Caffe's BasePrefetchingDataLayer: a background thread
prepares up to ``data_param.prefetch`` (default 4) batches ahead, so training
does not wait on disk; ``forward`` takes the next ready batch, reshapes the
tops to it and copies it in.  Every reader draws its own RNG seed from the
global generator at setup (Caffe does the same for each transformer and
shuffle), so ``caffe.set_random_seed`` makes runs repeatable even though
batches are produced on another thread.  ``prefetch: 0`` reads synchronously.

ImageData   tops data (N, C, H, W), label (N,).  ``source`` lists "path label"
            lines split at the LAST space (paths may contain spaces);
            ``root_folder`` is prefixed; images are BGR 0-255 (``is_color``
            false: 1 channel); ``new_height``/``new_width`` resize (both or
            neither); ``shuffle`` reshuffles every epoch; ``rand_skip`` skips
            a random number of lines at start.  Each batch takes the shape of
            its first image.
Data        tops data, [label]; ``source`` is an LMDB of Datum records (raw
            uint8, float_data or encoded images; ``force_color``/``force_gray``
            decode encoded ones); wraps around at the end.  LevelDB is not
            supported (clear error); an LMDB folder is read as one even when
            ``backend`` was left at its LEVELDB default (with a warning).
WindowData  R-CNN fine-tuning windows: tops data (N, C, crop, crop), label (N,).
            Per batch, N - floor(N*fg_fraction) background windows then the
            foreground ones, each warped (``crop_mode`` warp or square, with
            ``context_pad``), optionally mirrored, mean-subtracted and scaled
            by window_data_param.scale.
HDF5Output  bottoms data, label; each forward writes them to
            ``hdf5_output_param.file_name`` as datasets "data" and "label"
            (the file is created at setup and rewritten at each forward).

Data-parallel training (TRAIN phase, N ranks; :mod:`minicaffe.parallel.state`):
ImageData and Data keep item k of their stream iff k % N == the rank (Caffe's
Skip()), so N ranks of batch B read what one process of batch N*B reads (with
``shuffle``, the ranks share the seed and hence the order).  WindowData samples
windows at random: each rank makes N draws per window and keeps the rank-th,
so the ranks see disjoint draws of the same random stream.

Sources that are missing or unreadable raise DataSourceError naming the path
at net construction; a file that turns bad later (mid-epoch) raises it at the
forward that needs it.
"""
import logging
import os
import queue
import threading
import weakref

import numpy as np

from .. import fileio
from ..blob import _checked_shape
from ..errors import DataSourceError, MinicaffeError, NetDefinitionError, layer_context
from ..parallel import state as parallel_state
from ..protoio import pb
from ..rng import rng
from ..transform import DataTransformer, read_image
from .base import Layer, register_layer

log = logging.getLogger('minicaffe')

PREFETCH_POLL_S = 0.1


# ============================================================ prefetching
class Cancelled(Exception):
    """Raised inside a loader whose layer is gone (stops a long batch early)."""


class _Failure(object):
    def __init__(self, exc):
        self.exc = exc


class Prefetcher(object):
    """Runs ``produce()`` on a daemon thread, keeping up to ``count`` results ready.

    The thread holds only ``produce`` (a loader object's method), never the
    layer, so a layer that is dropped is collected and its thread stops.
    """

    def __init__(self, produce, count, name='prefetch', stop_event=None):
        self._queue = queue.Queue(maxsize=max(1, count))
        self._stop = stop_event if stop_event is not None else threading.Event()
        self._failure = None
        self._thread = threading.Thread(target=self._run, args=(produce, self._queue, self._stop),
                                        name=name, daemon=True)
        self._thread.start()

    @staticmethod
    def _run(produce, q, stop):
        while not stop.is_set():
            try:
                item = produce()
            except BaseException as e:   # handed to the consumer, re-raised there
                item = _Failure(e)
            while not stop.is_set():
                try:
                    q.put(item, timeout=PREFETCH_POLL_S)
                    break
                except queue.Full:
                    continue
            if isinstance(item, _Failure):
                return

    def get(self):
        if self._failure is not None:
            raise self._failure          # a failed source stays failed
        while True:
            try:
                item = self._queue.get(timeout=1.0)
                break
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    raise DataSourceError('the prefetch thread stopped without producing a batch')
        if isinstance(item, _Failure):
            self._failure = item.exc
            raise item.exc
        return item

    def stop(self):
        self._stop.set()

    def join(self, timeout=None):
        self._stop.set()
        self._thread.join(timeout)


class BasePrefetchingLayer(Layer):
    """Common machinery: own RNG, transformer, loader, prefetch thread."""
    exact_num_bottom = 0

    def setup(self, bottom, top):
        self.output_labels = len(top) > 1
        self.layer_rng = np.random.default_rng(int(rng().integers(0, 2 ** 63 - 1)))
        try:
            loader = self.make_loader(top)   # reads/validates the source (subclass)
        except MinicaffeError as e:
            ctx = layer_context(self.layer_param)
            if ctx in str(e):
                raise
            raise type(e)('%s: %s' % (ctx, e)) from None    # name the layer too
        loader.cancel = threading.Event()    # set when the layer goes away
        self.loader = loader
        shapes = loader.top_shapes()
        for t, s in zip(top, shapes):
            t.reshape(s)
        count = int(self.layer_param.data_param.prefetch) if self.layer_param.HasField('data_param') else 4
        self._prefetcher = None
        if count > 0:
            self._prefetcher = Prefetcher(loader.next_batch, count, name='prefetch-%s' % self.name,
                                          stop_event=loader.cancel)
            weakref.finalize(self, self._prefetcher.stop)

    def make_loader(self, top):
        raise NotImplementedError

    def transformer(self):
        return DataTransformer(self.layer_param.transform_param, self.phase, rng=self.layer_rng,
                               context=layer_context(self.layer_param))

    def reshape(self, bottom, top):
        pass   # tops take each batch's shape in forward (Caffe reshapes there too)

    def next_batch(self):
        if self._prefetcher is not None:
            return self._prefetcher.get()
        return self.loader.next_batch()

    def forward(self, bottom, top):
        try:
            batch = self.next_batch()
        except MinicaffeError as e:
            msg = str(e)
            ctx = layer_context(self.layer_param)
            raise type(e)(msg if ctx in msg else '%s: %s' % (ctx, msg)) from None
        for t, arr in zip(top, batch):
            t.reshape(arr.shape)
            t.data[...] = arr

    def stop_prefetch(self):
        if self._prefetcher is not None:
            self._prefetcher.join(2.0)


def _check_cancel(loader):
    ev = getattr(loader, 'cancel', None)
    if ev is not None and ev.is_set():
        raise Cancelled()


def _positive_batch(ctx, batch_size):
    if batch_size <= 0:
        raise NetDefinitionError('%s: batch_size must be positive, got %d' % (ctx, batch_size))
    return batch_size


# ============================================================ ImageData
def parse_image_list(source):
    """"path label" lines of an image list, split at the last space (Caffe's rule)."""
    if not os.path.exists(source):
        raise DataSourceError('image list (image_data_param.source) %s does not exist' % source)
    raw = fileio.read_bytes(source, 'image list', DataSourceError)
    text = raw.decode('utf-8', errors='surrogateescape')
    lines = []
    for lineno, line in enumerate(text.split('\n'), 1):
        if line.endswith('\r'):
            line = line[:-1]
        if not line and lineno == text.count('\n') + 1:
            break                                       # no line after the final newline
        pos = line.rfind(' ')
        label_text = line[pos + 1:] if pos >= 0 else line
        path = line[:pos] if pos >= 0 else line
        lines.append((path, _atoi(label_text)))
    if not lines:
        raise DataSourceError('image list %s is empty' % source)
    return lines


def _atoi(text):
    """C's atoi: optional sign and leading digits, 0 when none."""
    s = text.lstrip(' \t\r\n\v\f')
    i = 0
    if i < len(s) and s[i] in '+-':
        i += 1
    j = i
    while j < len(s) and s[j].isdigit() and s[j].isascii():
        j += 1
    if j == i:
        return 0
    v = int(s[:j])
    return max(-2 ** 31, min(2 ** 31 - 1, v))


class _ImageLoader(object):
    def __init__(self, layer, ctx):
        p = layer.layer_param.image_data_param
        self.ctx = ctx
        self.source = p.source
        self.new_height, self.new_width = int(p.new_height), int(p.new_width)
        if (self.new_height > 0) != (self.new_width > 0):
            raise layer.error('new_height and new_width must be set together (got %d and %d)'
                              % (self.new_height, self.new_width))
        self.is_color = bool(p.is_color)
        self.root = p.root_folder
        self.shuffle = bool(p.shuffle)
        self.batch_size = _positive_batch(ctx, int(p.batch_size))
        if self.new_height > 0:
            try:
                _checked_shape((self.batch_size, 3, self.new_height, self.new_width))
            except ValueError as e:
                raise layer.error('new_height x new_width %dx%d: %s'
                                  % (self.new_height, self.new_width, e)) from None
        self.lines = parse_image_list(self.source)
        self.train = layer.phase == pb.TRAIN
        self.offset = 0             # items of the stream passed so far (Caffe's offset_)
        self.rng = layer.layer_rng
        self.transformer = layer.transformer()
        if self.shuffle:
            self._shuffle()
        self.pos = 0
        if p.rand_skip:
            skip = int(rng().integers(0, 2 ** 32)) % int(p.rand_skip)
            if skip >= len(self.lines):
                raise DataSourceError('%s: rand_skip %d: not enough lines in %s to skip %d'
                                      % (ctx, p.rand_skip, self.source, skip))
            self.pos = skip
        first = self._read(self.pos)
        self.item_shape = self.transformer.infer_shape(first.shape[2], first.shape[0], first.shape[1])

    def _shuffle(self):
        order = self.rng.permutation(len(self.lines))
        self.lines = [self.lines[i] for i in order]

    def _read(self, idx):
        path, _ = self.lines[idx]
        return read_image(self.root + path, self.new_height, self.new_width, self.is_color)

    def top_shapes(self):
        return [(self.batch_size,) + self.item_shape[1:], (self.batch_size,)]

    def next_batch(self):
        data = None
        labels = np.zeros(self.batch_size, np.float32)
        for i in range(self.batch_size):
            _check_cancel(self)
            while not parallel_state.keeps_item(self.offset, self.train):
                self._advance()
            img = self._read(self.pos)
            try:
                item = self.transformer.transform_image(img)
            except MinicaffeError as e:
                raise DataSourceError('%s (image %s)' % (e, self.root + self.lines[self.pos][0])) from None
            if data is None:
                data = np.empty((self.batch_size,) + item.shape, np.float32)
            elif item.shape != data.shape[1:]:
                raise DataSourceError('%s: image %s gives an item of shape %s but this batch began'
                                      ' with %s; set new_height/new_width or crop_size so all'
                                      ' images agree' % (self.ctx, self.root + self.lines[self.pos][0],
                                                         item.shape, data.shape[1:]))
            data[i] = item
            labels[i] = self.lines[self.pos][1]
            self._advance()
        return data, labels

    def _advance(self):
        self.pos += 1
        self.offset += 1
        if self.pos >= len(self.lines):
            self.pos = 0
            if self.shuffle:
                self._shuffle()


@register_layer('ImageData')
class ImageDataLayer(BasePrefetchingLayer):
    """Images listed in a text file -> data (N, C, H, W) float32, label (N,).

    Forward: transform(read(root_folder + path)) per line, in order (reshuffled
    each epoch with ``shuffle``).  No backward.
    """
    exact_num_top = 2

    def make_loader(self, top):
        return _ImageLoader(self, layer_context(self.layer_param))


# ============================================================ Data (LMDB)
class _Env(object):
    """A shared read-only LMDB environment (LMDB allows one per file per process)."""

    def __init__(self, env):
        self.env = env

    def __del__(self):
        try:
            self.env.close()
        except Exception:
            pass


_ENVS = weakref.WeakValueDictionary()
_ENVS_LOCK = threading.Lock()


def _open_lmdb(source, ctx):
    """The process-wide read-only handle of the LMDB at ``source`` (kept while used)."""
    try:
        import lmdb
    except ImportError:
        raise DataSourceError('%s: reading LMDB source %s needs the "lmdb" package'
                              ' (pip install lmdb)' % (ctx, source)) from None
    subdir = os.path.isdir(source)
    # LMDB opens its data file blocking: a FIFO (or /dev/zero) would hang it
    fileio.check_regular_file(os.path.join(source, 'data.mdb') if subdir else source,
                              '%s: LMDB data file' % ctx, DataSourceError, limit=float('inf'))
    try:
        st = os.stat(os.path.join(source, 'data.mdb') if subdir else source)
        key = (st.st_dev, st.st_ino)         # a database recreated at the same path is a new one
    except OSError:
        key = (os.path.realpath(source), subdir)
    with _ENVS_LOCK:
        holder = _ENVS.get(key)
        if holder is not None:
            return holder
        try:
            env = lmdb.open(source, readonly=True, lock=False, subdir=subdir, readahead=False,
                            max_readers=126, create=False)
        except lmdb.Error as e:
            raise DataSourceError('%s: %s is not a readable LMDB database: %s' % (ctx, source, e)) from None
        holder = _Env(env)
        _ENVS[key] = holder
        return holder


def _looks_like_leveldb(source):
    return os.path.isdir(source) and (os.path.exists(os.path.join(source, 'CURRENT'))
                                      or any(n.endswith(('.ldb', '.sst')) for n in os.listdir(source)))


class LMDBReader(object):
    """Cycles through an LMDB's (key, value) records, restarting at the end.

    The read transaction is opened lazily by the thread that reads (LMDB
    transactions belong to one thread); ``close`` drops it and the next read
    reopens it at the same record.
    """

    def __init__(self, source, ctx):
        import lmdb
        self.source, self.ctx = source, ctx
        self.holder = _open_lmdb(source, ctx)
        self.env = self.holder.env
        try:
            self.entries = self.env.stat()['entries']
        except lmdb.Error as e:
            raise DataSourceError('%s: reading LMDB %s failed: %s' % (ctx, source, e)) from None
        if self.entries == 0:
            raise DataSourceError('%s: LMDB %s contains no records' % (ctx, source))
        self._txn = self._cursor = None
        self._key = None

    def _ensure(self):
        if self._cursor is not None:
            return
        import lmdb
        try:
            self._txn = self.env.begin(buffers=False)
            self._cursor = self._txn.cursor()
            ok = self._cursor.set_key(self._key) if self._key is not None else self._cursor.first()
            if not ok and not self._cursor.first():
                raise DataSourceError('%s: LMDB %s contains no records' % (self.ctx, self.source))
        except lmdb.Error as e:
            self._txn = self._cursor = None
            raise DataSourceError('%s: reading LMDB %s failed: %s' % (self.ctx, self.source, e)) from None

    def current(self):
        self._ensure()
        self._key = self._cursor.key()
        return self._key, self._cursor.value()

    def advance(self):
        import lmdb
        self._ensure()
        try:
            if not self._cursor.next():
                self._cursor.first()
        except lmdb.Error as e:
            raise DataSourceError('%s: reading LMDB %s failed: %s' % (self.ctx, self.source, e)) from None
        self._key = self._cursor.key()

    def close(self):
        if self._txn is not None:
            self._txn.abort()
        self._txn = self._cursor = None


def parse_datum(value, what):
    d = pb.Datum()
    try:
        d.ParseFromString(value)
    except Exception as e:
        raise DataSourceError('%s is not a Datum record: %s' % (what, e)) from None
    return d


class _DBLoader(object):
    def __init__(self, layer, ctx):
        p = layer.layer_param.data_param
        self.ctx = ctx
        self.source = p.source
        if not self.source:
            raise DataSourceError('%s: data_param.source is not set' % ctx)
        if not os.path.exists(self.source):
            raise DataSourceError('%s: database (data_param.source) %s does not exist' % (ctx, self.source))
        if p.backend == pb.DataParameter.LEVELDB and not self._is_lmdb(self.source):
            why = 'it looks like a LevelDB' if _looks_like_leveldb(self.source) else 'backend is LEVELDB'
            raise DataSourceError('%s: %s: LevelDB databases are not supported by minicaffe (%s);'
                                  ' convert the images to LMDB (minicaffe convert-imageset) and set'
                                  ' data_param { backend: LMDB }' % (ctx, self.source, why))
        if p.backend == pb.DataParameter.LEVELDB:
            log.warning('%s: backend is LEVELDB (the default) but %s is an LMDB; reading it as LMDB',
                        ctx, self.source)
        self.output_labels = layer.output_labels
        self.train = layer.phase == pb.TRAIN
        self.offset = 0             # records of the stream passed so far (Caffe's offset_)
        self.batch_size = _positive_batch(ctx, int(p.batch_size))
        self.transformer = layer.transformer()
        self.reader = LMDBReader(self.source, ctx)
        if p.rand_skip:
            skip = int(rng().integers(0, 2 ** 32)) % int(p.rand_skip)
            # The reader cycles: skipping `entries` records comes back to the same one,
            # so a rand_skip far beyond the database's size costs at most one pass.
            for _ in range(skip % self.reader.entries):
                self.reader.advance()
        key, value = self.reader.current()
        item = self._item(key, value)
        self.item_shape = self.transformer.infer_shape(*item.shape)
        self.reader.close()     # the producing thread opens its own read transaction

    @staticmethod
    def _is_lmdb(source):
        return (os.path.isfile(os.path.join(source, 'data.mdb')) if os.path.isdir(source)
                else source.endswith('.mdb'))

    def _what(self, key):
        return 'record %r of LMDB %s' % (key.decode('utf-8', 'replace') if isinstance(key, bytes) else key,
                                        self.source)

    def _item(self, key, value):
        what = self._what(key)
        datum = parse_datum(value, what)
        self._last_label = datum.label
        return self.transformer.datum_item(datum, what)

    def top_shapes(self):
        shapes = [(self.batch_size,) + self.item_shape[1:]]
        if self.output_labels:
            shapes.append((self.batch_size,))
        return shapes

    def next_batch(self):
        data = None
        labels = np.zeros(self.batch_size, np.float32)
        for i in range(self.batch_size):
            _check_cancel(self)
            while not parallel_state.keeps_item(self.offset, self.train):
                self._advance()
            key, value = self.reader.current()
            item = self._item(key, value)
            if data is None:
                shape = self.transformer.infer_shape(*item.shape)
                data = np.empty((self.batch_size,) + shape[1:], np.float32)
            try:
                out = self.transformer.transform(item)
            except MinicaffeError as e:
                raise DataSourceError('%s (%s)' % (e, self._what(key))) from None
            if out.shape != data.shape[1:]:
                raise DataSourceError('%s: %s gives an item of shape %s but this batch began with %s'
                                      % (self.ctx, self._what(key), out.shape, data.shape[1:]))
            data[i] = out
            labels[i] = self._last_label
            self._advance()
        return (data, labels) if self.output_labels else (data,)

    def _advance(self):
        self.reader.advance()
        self.offset += 1


@register_layer('Data')
class DataLayer(BasePrefetchingLayer):
    """Datum records from an LMDB -> data (N, C, H, W) float32 [, label (N,)].

    Forward: transform(datum) for the next batch_size records, wrapping around.
    No backward.
    """
    min_num_top = 1
    max_num_top = 2

    def make_loader(self, top):
        return _DBLoader(self, layer_context(self.layer_param))


# ============================================================ WindowData
def parse_window_file(source, root_folder, fg_threshold, bg_threshold, ctx):
    """Caffe's window file -> (images [(path, (c, h, w))], fg windows, bg windows).

    A window is (image index, label, overlap, x1, y1, x2, y2).
    """
    if not os.path.exists(source):
        raise DataSourceError('%s: window file (window_data_param.source) %s does not exist' % (ctx, source))
    text = fileio.read_bytes(source, '%s: window file' % ctx, DataSourceError).decode(
        'utf-8', errors='surrogateescape')
    tokens = []
    for lineno, line in enumerate(text.splitlines(), 1):
        tokens.extend((t, lineno) for t in line.split())
    pos = [0]

    def take(kind, what):
        if pos[0] >= len(tokens):
            raise DataSourceError('%s: window file %s ends early: expected %s' % (ctx, source, what))
        tok, line = tokens[pos[0]]
        pos[0] += 1
        try:
            return kind(tok) if kind is not str else tok
        except ValueError:
            raise DataSourceError('%s: %s:%d: expected %s, got "%s"' % (ctx, source, line, what, tok)) from None

    if not tokens:
        raise DataSourceError('%s: window file %s is empty' % (ctx, source))
    images, fg, bg = [], [], []
    while pos[0] < len(tokens):
        tok, line = tokens[pos[0]]
        if tok != '#':
            raise DataSourceError('%s: %s:%d: expected "# image_index", got "%s"' % (ctx, source, line, tok))
        pos[0] += 1
        image_index = take(int, 'an image index')
        path = root_folder + take(str, 'an image path')
        c, h, w = take(int, 'channels'), take(int, 'height'), take(int, 'width')
        if image_index != len(images):
            # Caffe indexes windows by the number written here; keep them consistent.
            raise DataSourceError('%s: %s:%d: image index %d out of sequence (expected %d)'
                                  % (ctx, source, line, image_index, len(images)))
        images.append((path, (c, h, w)))
        n = take(int, 'the number of windows')
        if n < 0:
            raise DataSourceError('%s: %s:%d: negative number of windows' % (ctx, source, line))
        for _ in range(n):
            label = take(int, 'a class index')
            overlap = take(float, 'an overlap')
            x1, y1, x2, y2 = (take(int, 'a box coordinate') for _ in range(4))
            win = (image_index, label, overlap, x1, y1, x2, y2)
            if overlap >= fg_threshold:
                if label <= 0:
                    raise DataSourceError('%s: %s: foreground window with class %d; classes of'
                                          ' foreground windows must be > 0' % (ctx, source, label))
                fg.append(win)
            elif overlap < bg_threshold:
                bg.append((image_index, 0, 0.0, x1, y1, x2, y2))
    return images, fg, bg


class _WindowLoader(object):
    def __init__(self, layer, ctx):
        wp = layer.layer_param.window_data_param
        tp = layer.layer_param.transform_param
        self.ctx = ctx
        self.batch_size = _positive_batch(ctx, int(wp.batch_size))
        self.crop_size = int(tp.crop_size)
        if self.crop_size <= 0:
            raise layer.error('WindowData needs transform_param.crop_size > 0')
        self.mirror = bool(tp.mirror)
        self.scale = np.float32(wp.scale)
        self.context_pad = int(wp.context_pad)
        if 2 * self.context_pad >= self.crop_size:
            raise layer.error('context_pad %d leaves nothing of a %d crop' % (self.context_pad, self.crop_size))
        if wp.crop_mode not in ('warp', 'square'):
            raise layer.error('crop_mode must be "warp" or "square", got "%s"' % wp.crop_mode)
        self.square = wp.crop_mode == 'square'
        self.fg_fraction = float(wp.fg_fraction)
        if not 0.0 <= self.fg_fraction <= 1.0:
            raise layer.error('fg_fraction must be between 0 and 1, got %g' % self.fg_fraction)
        self.images, self.fg, self.bg = parse_window_file(wp.source, wp.root_folder, wp.fg_threshold,
                                                          wp.bg_threshold, ctx)
        self.num_fg = int(np.float32(self.batch_size) * np.float32(self.fg_fraction))
        if self.num_fg > 0 and not self.fg:
            raise DataSourceError('%s: window file %s has no foreground windows (overlap >= %g)'
                                  % (ctx, wp.source, wp.fg_threshold))
        if self.batch_size - self.num_fg > 0 and not self.bg:
            raise DataSourceError('%s: window file %s has no background windows (overlap < %g)'
                                  % (ctx, wp.source, wp.bg_threshold))
        self.channels = self.images[-1][1][0]
        self.rng = layer.layer_rng
        self.train = layer.phase == pb.TRAIN
        self.offset = 0             # windows drawn so far
        self.mean = self.mean_values = None
        if tp.HasField('mean_file') and len(tp.mean_value):
            raise layer.error('cannot specify mean_file and mean_value at the same time')
        if tp.HasField('mean_file'):
            from ..transform import load_mean_file
            self.mean = load_mean_file(tp.mean_file)
            off = (self.mean.shape[2] - self.crop_size) // 2
            if off < 0 or self.mean.shape[1] - off < self.crop_size or self.mean.shape[0] != 3:
                raise DataSourceError('%s: mean file %s (%s) is smaller than the %d crop or not 3-channel'
                                      % (ctx, tp.mean_file, self.mean.shape, self.crop_size))
        if len(tp.mean_value):
            if len(tp.mean_value) not in (1, self.channels):
                raise layer.error('specify either 1 mean_value or as many as channels (%d)' % self.channels)
            self.mean_values = np.asarray(tp.mean_value, np.float32)
        self.cache = {}
        if wp.cache_images:
            for path, _ in self.images:
                self.cache[path] = fileio.read_bytes(path, '%s: image file' % ctx, DataSourceError)
        for path, _ in self.images:
            if path not in self.cache and not os.path.isfile(path):
                raise DataSourceError('%s: could not open or find image file %s (listed in %s)'
                                      % (ctx, path, wp.source))

    def top_shapes(self):
        return [(self.batch_size, self.channels, self.crop_size, self.crop_size), (self.batch_size,)]

    def _image(self, path):
        from ..transform import decode_image
        if path in self.cache:
            return decode_image(self.cache[path], True, what='image file %s' % path)
        return read_image(path, 0, 0, True)

    def _rand(self):
        return int(self.rng.integers(0, 2 ** 32))

    def _draw(self, pool):
        """One window of ``pool`` and whether to mirror it (one item of the stream)."""
        win = pool[self._rand() % len(pool)]
        do_mirror = self.mirror and self._rand() % 2 == 1
        self.offset += 1
        return win, do_mirror

    def next_batch(self):
        from ..transform import resize_bilinear
        crop = self.crop_size
        data = np.zeros((self.batch_size, self.channels, crop, crop), np.float32)
        labels = np.zeros(self.batch_size, np.float32)
        f32 = np.float32
        item = 0
        for is_fg, count in ((0, self.batch_size - self.num_fg), (1, self.num_fg)):
            pool = self.fg if is_fg else self.bg
            for _ in range(count):
                _check_cancel(self)
                win, do_mirror = self._draw(pool)
                while not parallel_state.keeps_item(self.offset - 1, self.train):
                    win, do_mirror = self._draw(pool)     # another rank's draw
                path = self.images[win[0]][0]
                img = self._image(path)
                ih, iw = img.shape[:2]
                x1, y1, x2, y2 = win[3:]
                pad_w = pad_h = 0
                out_w = out_h = crop
                if self.context_pad > 0 or self.square:
                    context_scale = f32(crop) / f32(crop - 2 * self.context_pad)
                    half_h = f32(y2 - y1 + 1) / f32(2)
                    half_w = f32(x2 - x1 + 1) / f32(2)
                    cx = f32(x1) + half_w
                    cy = f32(y1) + half_h
                    if self.square:
                        half_h = half_w = max(half_h, half_w)
                    x1 = int(_round(cx - half_w * context_scale))
                    x2 = int(_round(cx + half_w * context_scale))
                    y1 = int(_round(cy - half_h * context_scale))
                    y2 = int(_round(cy + half_h * context_scale))
                    unclipped_h, unclipped_w = y2 - y1 + 1, x2 - x1 + 1
                    pad_x1, pad_y1 = max(0, -x1), max(0, -y1)
                    pad_x2, pad_y2 = max(0, x2 - iw + 1), max(0, y2 - ih + 1)
                    x1 += pad_x1
                    x2 -= pad_x2
                    y1 += pad_y1
                    y2 -= pad_y2
                    if not (x1 >= 0 and y1 >= 0 and x2 < iw and y2 < ih and x2 >= x1 and y2 >= y1):
                        raise DataSourceError('%s: window %s lies outside image %s (%dx%d)'
                                              % (self.ctx, win[3:], path, iw, ih))
                    scale_x = f32(crop) / f32(unclipped_w)
                    scale_y = f32(crop) / f32(unclipped_h)
                    out_w = int(_round(f32(x2 - x1 + 1) * scale_x))
                    out_h = int(_round(f32(y2 - y1 + 1) * scale_y))
                    pad_x1 = int(_round(f32(pad_x1) * scale_x))
                    pad_x2 = int(_round(f32(pad_x2) * scale_x))
                    pad_y1 = int(_round(f32(pad_y1) * scale_y))
                    pad_h = pad_y1
                    pad_w = pad_x2 if do_mirror else pad_x1
                    if pad_h + out_h > crop:
                        out_h = crop - pad_h
                    if pad_w + out_w > crop:
                        out_w = crop - pad_w
                if not (0 <= x1 <= x2 < iw and 0 <= y1 <= y2 < ih):
                    raise DataSourceError('%s: window (%d, %d, %d, %d) lies outside image %s (%dx%d)'
                                          % (self.ctx, x1, y1, x2, y2, path, iw, ih))
                if out_h <= 0 or out_w <= 0:
                    item += 1
                    continue
                patch = resize_bilinear(img[y1:y2 + 1, x1:x2 + 1], out_h, out_w)
                if do_mirror:
                    patch = patch[:, ::-1]
                px = np.transpose(patch, (2, 0, 1)).astype(np.float32)
                if self.mean is not None:
                    off = (self.mean.shape[2] - crop) // 2
                    px = px - self.mean[:, off + pad_h:off + pad_h + out_h, off + pad_w:off + pad_w + out_w]
                elif self.mean_values is not None:
                    px = px - self.mean_values.reshape(-1, 1, 1)
                data[item, :, pad_h:pad_h + out_h, pad_w:pad_w + out_w] = px * self.scale
                labels[item] = win[1]
                item += 1
        return data, labels


def _round(x):
    """C's round(): halves away from zero."""
    x = float(x)
    return np.floor(x + 0.5) if x >= 0 else -np.floor(-x + 0.5)


@register_layer('WindowData')
class WindowDataLayer(BasePrefetchingLayer):
    """R-CNN windows -> data (N, C, crop, crop) float32, label (N,).  No backward."""
    exact_num_top = 2

    def make_loader(self, top):
        return _WindowLoader(self, layer_context(self.layer_param))


# ============================================================ HDF5Output
@register_layer('HDF5Output')
class HDF5OutputLayer(Layer):
    """Writes bottom[0] as dataset "data" and bottom[1] as "label" to file_name.

    Shapes: bottoms (N, ...) with equal N; no tops.  Forward writes (the file
    is rewritten each forward); backward does nothing.

    Unlike Caffe, which creates (truncates) the file in LayerSetUp, building the
    net writes nothing: a net is built by ``draw``, ``upgrade``, ``time`` and by
    anyone reading an untrusted prototxt, and ``file_name`` may name any file.
    The file is created by the first forward, and an existing file that is not
    HDF5 (or a folder) is never overwritten: setup and forward refuse it.
    """
    exact_num_bottom = 2
    exact_num_top = 0

    def setup(self, bottom, top):
        self.file_name = self.layer_param.hdf5_output_param.file_name
        if not self.file_name:
            raise self.error('hdf5_output_param.file_name is not set')
        self._check_target()

    def _check_target(self):
        """Refuse to overwrite anything but an HDF5 file (checked before each write)."""
        import h5py
        path = self.file_name
        why = None
        if not os.path.lexists(path):
            folder = os.path.dirname(path) or '.'
            if not os.path.isdir(folder):
                raise DataSourceError('%s: failed to create HDF5 file %s: its folder %s does not exist'
                                      % (layer_context(self.layer_param), path, folder))
            return
        if os.path.isdir(path):
            why = 'it is a folder'
        elif not os.path.isfile(path):
            why = 'it is not a regular file'
        else:
            try:
                if not h5py.is_hdf5(path):
                    why = 'it exists and is not an HDF5 file'
            except (OSError, ValueError) as e:
                why = 'it cannot be read (%s)' % e
        if why:
            raise DataSourceError('%s: hdf5_output_param.file_name %s: %s, and HDF5Output would'
                                  ' overwrite it; name a new file or an HDF5 file'
                                  % (layer_context(self.layer_param), path, why))

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        import h5py
        if bottom[0].shape[:1] != bottom[1].shape[:1]:
            raise self.error('data and label must have the same num, got %s and %s'
                             % (bottom[0].shape, bottom[1].shape))
        self._check_target()
        try:
            with h5py.File(self.file_name, 'w') as f:
                f.create_dataset('data', data=_legacy4d(bottom[0].data))
                f.create_dataset('label', data=_legacy4d(bottom[1].data))
        except OSError as e:
            raise DataSourceError('%s: failed to write HDF5 file %s: %s'
                                  % (layer_context(self.layer_param), self.file_name, e)) from None

    def backward(self, top, propagate_down, bottom):
        pass


def _legacy4d(a):
    # Caffe copies the bottoms into blobs reshaped as num x channels x height x width.
    if a.ndim <= 4:
        return a.reshape(a.shape + (1,) * (4 - a.ndim))
    return a
