"""Data layers that need no image decoding: DummyData, HDF5Data, MemoryData.

All have no bottoms and no backward (the base refuses to backpropagate).

DummyData   tops shaped by ``dummy_data_param.shape`` (once, or once per top)
            or the legacy ``num``/``channels``/``height``/``width`` lists (each
            once or once per top); filled by ``data_filler`` (none: constant 0;
            one: used for every top; or one per top).  As in Caffe, a top whose
            filler is "constant" is filled once at setup and never again (so
            values a user writes into it stay); other fillers refill the top at
            every forward.  Reshape is a no-op: the tops keep their shapes.
HDF5Data    ``hdf5_data_param.source`` is a text file listing .h5 files
            (whitespace-separated; relative paths are resolved against the
            current directory, as Caffe does).  Top i reads the dataset named
            like top i (any float or integer type, converted to float32); all
            datasets of a file have the same number of rows.  Tops are
            (batch_size,) + the dataset's trailing dims (taken from the first
            file).  Forward copies the next batch_size rows, crossing into the
            next file and wrapping around after the last.  With ``shuffle`` the
            file order is permuted at setup and after each pass over all files,
            and the rows of each file when it is loaded (a single file: after
            each pass over it), drawing from the layer's own generator, seeded
            from ``minicaffe.rng`` at setup (so data-parallel ranks, which share
            the seed at setup, keep one order however else they draw).  In data-
            parallel training (TRAIN phase, N ranks) a rank keeps row k of
            this stream iff k % N == its rank (Caffe's Skip()).
MemoryData  tops data (batch_size, channels, height, width) and label
            (batch_size,), fed from arrays given with
            ``net.set_input_arrays(data, labels)`` (pycaffe's call): data
            (n, C, H, W), labels (n,) or (n, 1, 1, 1), n a multiple of
            batch_size.  Each forward copies the next batch, wrapping around.

Missing or unreadable sources raise :class:`minicaffe.errors.DataSourceError`
naming the layer and the path, at net construction when the problem is visible
then (an HDF5 file that goes bad later raises it at the forward that loads it).
"""
import logging
import os

import numpy as np

from .. import fileio
from ..blob import _checked_shape
from ..errors import DataSourceError, MinicaffeError, layer_context
from ..fillers import fill
from ..parallel import state as parallel_state
from ..protoio import pb
from ..rng import rng
from .base import Layer, register_layer

log = logging.getLogger('minicaffe')

FILLER_TYPES = ('constant', 'uniform', 'gaussian', 'positive_unitball', 'xavier', 'msra', 'bilinear')


# ================================================================= DummyData
@register_layer('DummyData')
class DummyDataLayer(Layer):
    """Tops filled by fillers (Caffe's DummyDataLayer).

    forward:  top_i = filler_i() for non-constant fillers (each forward);
              constant-filled tops are written once at setup only
    backward: none
    shapes:   () -> top_i of dummy_data_param.shape[i] (or shape[0]), or the
              legacy (num, channels, height, width) lists
    """
    exact_num_bottom = 0
    min_num_top = 1

    def setup(self, bottom, top):
        p = self.layer_param.dummy_data_param
        n_top = len(top)
        n_fill = len(p.data_filler)
        self.check(n_fill in (0, 1, n_top),
                   'the number of data_filler entries must be 0, 1 or the number of tops (%d);'
                   ' got %d' % (n_top, n_fill))
        legacy = len(p.num) or len(p.channels) or len(p.height) or len(p.width)
        shapes = []
        if legacy:
            self.check(len(p.shape) == 0, 'give either shape or the legacy num/channels/height/'
                       'width fields, not both')
            fields = []
            for name in ('num', 'channels', 'height', 'width'):
                vals = list(getattr(p, name))
                self.check(len(vals) in (1, n_top),
                           '%s must be given once, or once per top (%d tops); got %d values'
                           % (name, n_top, len(vals)))
                fields.append(vals)
            for i in range(n_top):
                shapes.append(tuple(f[0] if len(f) == 1 else f[i] for f in fields))
        else:
            self.check(len(p.shape) in (1, n_top),
                       'shape must be given once, or once per top (%d tops); got %d'
                       % (n_top, len(p.shape)))
            for i in range(n_top):
                shapes.append(tuple(int(d) for d in p.shape[0 if len(p.shape) == 1 else i].dim))
        if n_fill == 0:
            fillers = [pb.FillerParameter(type='constant', value=0)]
        else:
            fillers = list(p.data_filler)
        for f in fillers:
            self.check(f.type in FILLER_TYPES, 'unknown filler type "%s" in data_filler (known: %s)'
                       % (f.type, ', '.join(FILLER_TYPES)))
        self.fillers = fillers
        # Caffe's refill_: constant fillers fill once (now), the others every forward.
        self.refill = [f.type != 'constant' for f in fillers]
        for i, t in enumerate(top):
            try:
                t.reshape(_checked_shape(shapes[i]))
            except ValueError as e:
                raise self.error('top %d: %s' % (i, e)) from None
        for i, t in enumerate(top):
            fid = i if len(fillers) > 1 else 0
            if not self.refill[fid]:
                fill(t, fillers[fid], context=layer_context(self.layer_param))

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        for i, t in enumerate(top):
            fid = i if len(self.fillers) > 1 else 0
            if self.refill[fid]:
                fill(t, self.fillers[fid], context=layer_context(self.layer_param))


# ================================================================= HDF5Data
def _read_h5_list(source, ctx):
    if not source:
        raise DataSourceError('%s: hdf5_data_param.source is not set (it names a text file'
                              ' listing .h5 files)' % ctx)
    if not os.path.exists(source):
        raise DataSourceError('%s: HDF5 file list (hdf5_data_param.source) "%s" does not exist'
                              ' (relative paths are resolved against the current directory %s)'
                              % (ctx, source, os.getcwd()))
    names = fileio.read_text(source, '%s: HDF5 file list' % ctx, DataSourceError).split()
    if not names:
        raise DataSourceError('%s: HDF5 file list "%s" lists no files' % (ctx, source))
    return names


@register_layer('HDF5Data')
class HDF5DataLayer(Layer):
    """Rows of HDF5 datasets (Caffe's HDF5DataLayer).

    forward:  top_j[i] = dataset top_j.name of the current file, row perm[r]
              for the next batch_size rows r (crossing files, wrapping around)
    backward: none
    shapes:   () -> top_j (batch_size, d1, ..., dk) for a dataset (rows, d1, ..., dk)
    """
    exact_num_bottom = 0
    min_num_top = 1

    def setup(self, bottom, top):
        lp = self.layer_param
        p = lp.hdf5_data_param
        ctx = layer_context(lp)
        self.ctx = ctx
        self.check(not lp.HasField('transform_param'),
                   'HDF5Data does not transform data; remove transform_param')
        self.check(p.batch_size > 0, 'hdf5_data_param.batch_size must be positive, got %d'
                   % p.batch_size)
        self.batch_size = int(p.batch_size)
        self.shuffle = bool(p.shuffle)
        self.source = p.source
        self.filenames = _read_h5_list(p.source, ctx)
        for name in self.filenames:
            if not os.path.exists(name):
                raise DataSourceError('%s: HDF5 file "%s" (listed in %s) does not exist (relative'
                                      ' paths are resolved against the current directory %s)'
                                      % (ctx, name, p.source, os.getcwd()))
            # h5py would block on a FIFO; HDF5 files may exceed protobuf's limit
            fileio.check_regular_file(name, '%s: HDF5 file (listed in %s)' % (ctx, p.source),
                                      DataSourceError, limit=float('inf'))
        self.top_names = list(lp.top)
        self.file_perm = np.arange(len(self.filenames))
        if self.shuffle:
            self.layer_rng = np.random.default_rng(int(rng().integers(0, 2 ** 63 - 1)))
            self.layer_rng.shuffle(self.file_perm)
        self.current_file = 0
        self.trailing = None
        self._load(self.filenames[self.file_perm[0]])
        self.current_row = 0
        self.offset = 0             # rows of the stream passed so far (Caffe's offset_)
        for j, t in enumerate(top):
            shape = (self.batch_size,) + self.arrays[j].shape[1:]
            try:
                t.reshape(_checked_shape(shape))
            except ValueError as e:
                raise self.error('top "%s": %s' % (self.top_names[j], e)) from None

    def _load(self, filename):
        """Caffe's LoadHDF5FileData: every top's dataset, as float32, in memory."""
        import h5py
        ctx = self.ctx
        arrays = []
        try:
            f = h5py.File(filename, 'r')
        except (OSError, ValueError) as e:
            raise DataSourceError('%s: cannot open HDF5 file "%s" (listed in %s): %s'
                                  % (ctx, filename, self.source, e)) from None
        try:
            with f:
                for name in self.top_names:
                    ds = f.get(name)
                    if ds is None or not isinstance(ds, h5py.Dataset):
                        have = sorted(k for k in f.keys() if isinstance(f.get(k), h5py.Dataset))
                        raise DataSourceError('%s: HDF5 file "%s" has no dataset "%s" (each top reads the'
                                              ' dataset named like it; the file has: %s)'
                                              % (ctx, filename, name, ', '.join(have) or 'no datasets'))
                    if ds.dtype.kind not in 'fiu':
                        raise DataSourceError('%s: dataset "%s" in HDF5 file "%s" has type %s; only float'
                                              ' and integer data can be read'
                                              % (ctx, name, filename, ds.dtype))
                    if ds.ndim < 1:
                        raise DataSourceError('%s: dataset "%s" in HDF5 file "%s" is a scalar; it needs at'
                                              ' least one axis (rows)' % (ctx, name, filename))
                    try:
                        arr = np.empty(_checked_shape(ds.shape), np.float32)
                        if arr.size:
                            ds.read_direct(arr)      # HDF5 converts to float32 while reading
                    except (OSError, ValueError) as e:
                        raise DataSourceError('%s: cannot read dataset "%s" of HDF5 file "%s": %s'
                                              % (ctx, name, filename, e)) from None
                    arrays.append(arr)
        except (OSError, RuntimeError, KeyError, TypeError, AttributeError, ValueError) as e:
            # h5py reports a damaged file's internals as RuntimeError, KeyError, ValueError...
            raise DataSourceError('%s: HDF5 file "%s" (listed in %s) is damaged: %s'
                                  % (ctx, filename, self.source, e)) from None
        rows = arrays[0].shape[0]
        for name, arr in zip(self.top_names, arrays):
            if arr.shape[0] != rows:
                raise DataSourceError('%s: in HDF5 file "%s" dataset "%s" has %d rows but "%s" has %d;'
                                      ' all datasets of a file need the same number of rows'
                                      % (ctx, filename, name, arr.shape[0], self.top_names[0], rows))
        if rows == 0:
            raise DataSourceError('%s: HDF5 file "%s" holds no rows' % (ctx, filename))
        trailing = [a.shape[1:] for a in arrays]
        if self.trailing is None:
            self.trailing = trailing
        elif trailing != self.trailing:
            raise DataSourceError('%s: HDF5 file "%s" has row shapes %s but the tops were sized from'
                                  ' the first file, with row shapes %s'
                                  % (ctx, filename, trailing, self.trailing))
        self.arrays = arrays
        self.rows = rows
        self.data_perm = np.arange(rows)
        if self.shuffle:
            self.layer_rng.shuffle(self.data_perm)

    def _next_file(self):
        """Caffe's Next() at the end of the current file's rows."""
        if len(self.filenames) > 1:
            self.current_file += 1
            if self.current_file == len(self.filenames):
                self.current_file = 0
                if self.shuffle:
                    self.layer_rng.shuffle(self.file_perm)
            self._load(self.filenames[self.file_perm[self.current_file]])
        elif self.shuffle:
            self.layer_rng.shuffle(self.data_perm)
        self.current_row = 0

    def reshape(self, bottom, top):
        pass   # tops keep the shapes set at setup, as in Caffe

    def forward(self, bottom, top):
        train = self.phase == pb.TRAIN
        if parallel_state.shards(train):
            self._forward_shard(top, train)
            return
        filled = 0
        while filled < self.batch_size:
            take = min(self.batch_size - filled, self.rows - self.current_row)
            idx = self.data_perm[self.current_row:self.current_row + take]
            for j, t in enumerate(top):
                t.data[filled:filled + take] = self.arrays[j][idx]
            filled += take
            self.current_row += take
            self.offset += take
            if self.current_row == self.rows:
                self._next_file()

    def _forward_shard(self, top, train):
        """This rank's rows only: row by row, skipping the other ranks' rows."""
        for i in range(self.batch_size):
            while not parallel_state.keeps_item(self.offset, train):
                self._next_row()
            idx = self.data_perm[self.current_row]
            for j, t in enumerate(top):
                t.data[i] = self.arrays[j][idx]
            self._next_row()

    def _next_row(self):
        self.current_row += 1
        self.offset += 1
        if self.current_row == self.rows:
            self._next_file()


# ================================================================= MemoryData
@register_layer('MemoryData')
class MemoryDataLayer(Layer):
    """Batches of user arrays (Caffe's MemoryDataLayer fed by pycaffe's set_input_arrays).

    forward:  data = arrays[pos:pos+N], label = labels[pos:pos+N]; pos += N (mod n)
    backward: none
    shapes:   () -> data (N, C, H, W), label (N,)
    """
    exact_num_bottom = 0
    exact_num_top = 2

    def setup(self, bottom, top):
        p = self.layer_param.memory_data_param
        self.batch_size = int(p.batch_size)
        self.channels, self.height, self.width = int(p.channels), int(p.height), int(p.width)
        self.check(self.batch_size * self.channels * self.height * self.width > 0,
                   'batch_size, channels, height and width must be specified and positive in'
                   ' memory_data_param (got %d, %d, %d, %d)'
                   % (self.batch_size, self.channels, self.height, self.width))
        top[0].reshape(self.batch_size, self.channels, self.height, self.width)
        top[1].reshape(self.batch_size)
        self._data = None
        self._labels = None
        self.n = 0
        self.pos = 0

    def reshape(self, bottom, top):
        pass

    def reset(self, data, labels, n):
        """Caffe's Reset: use ``data`` (n, C, H, W) and ``labels`` (n,) from row 0."""
        if n % self.batch_size != 0:
            raise MinicaffeError('%s: the number of rows (%d) must be a multiple of batch_size (%d)'
                                 % (layer_context(self.layer_param), n, self.batch_size))
        if self.layer_param.HasField('transform_param'):
            log.warning('%s: MemoryData does not transform array data given with set_input_arrays',
                        layer_context(self.layer_param))
        self._data, self._labels, self.n, self.pos = data, labels, int(n), 0

    def set_batch_size(self, new_size):
        new_size = int(new_size)
        if new_size <= 0 or (self._data is not None and self.n % new_size):
            raise MinicaffeError('%s: batch size %d must be positive and divide the %d rows given'
                                 % (layer_context(self.layer_param), new_size, self.n))
        self.batch_size = new_size

    def forward(self, bottom, top):
        if self._data is None:
            raise MinicaffeError('%s: no data yet; call net.set_input_arrays(data, labels) before'
                                 ' forward' % layer_context(self.layer_param))
        b = self.batch_size
        top[0].reshape(b, self.channels, self.height, self.width)
        top[1].reshape(b)
        top[0].data[...] = self._data[self.pos:self.pos + b]
        top[1].data[...] = self._labels[self.pos:self.pos + b].reshape(b)
        self.pos = (self.pos + b) % self.n


def _check_array(arr, what, c, h, w):
    if arr.ndim != 4:
        raise MinicaffeError('%s must be 4-d, got shape %s' % (what, arr.shape))
    if arr.shape[1:] != (c, h, w):
        raise MinicaffeError('%s has shape %s; its rows must be (%d, %d, %d)'
                             % (what, arr.shape, c, h, w))


def set_input_arrays(net, data, labels):
    """pycaffe's ``net.set_input_arrays(data, labels)`` for a net whose first layer is MemoryData.

    ``data`` is (n, C, H, W) and ``labels`` (n,) or (n, 1, 1, 1); n must be a
    multiple of the layer's batch_size.  Float32 C-contiguous arrays are used
    without a copy (as pycaffe does: later changes to them are seen by the
    net); others are converted to float32 first.
    """
    layer = net.layers[0] if len(net.layers) else None
    if not isinstance(layer, MemoryDataLayer):
        first = ('layer "%s" (%s)' % (layer.name, layer.type)) if layer is not None else 'nothing'
        raise MinicaffeError('set_input_arrays may only be called if the first layer is a MemoryData'
                             ' layer; the first layer of net %s is %s' % (net.source, first))
    data = np.ascontiguousarray(data, dtype=np.float32)
    labels = np.asarray(labels)
    if labels.ndim == 1:
        labels = labels[:, None, None, None]
    labels = np.ascontiguousarray(labels, dtype=np.float32)
    _check_array(data, 'data array', layer.channels, layer.height, layer.width)
    _check_array(labels, 'labels array', 1, 1, 1)
    if data.shape[0] != labels.shape[0]:
        raise MinicaffeError('data and labels must have the same first dimension (got %d and %d)'
                             % (data.shape[0], labels.shape[0]))
    if data.shape[0] == 0 or data.shape[0] % layer.batch_size != 0:
        raise MinicaffeError('first dimensions of input arrays must be a multiple of batch size'
                             ' (%d rows, batch_size %d)' % (data.shape[0], layer.batch_size))
    layer.reset(data, labels.reshape(-1), data.shape[0])
