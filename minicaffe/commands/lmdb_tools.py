"""Caffe's convert_imageset and compute_image_mean tools, for LMDB.

convert_imageset ROOT LIST OUT_DB
    Reads "path label" lines (split at the last space), optionally shuffles
    them, reads each image (BGR; ``gray`` -> 1 channel; resized when both
    resize sizes are > 0) and stores one Datum per image under the key
    ``%08d_<path>`` (line index), committing every 1000 records.  ``encoded``
    stores the image file itself (re-encoded when it was resized, converted or
    ``encode_type`` differs from its extension).  Unreadable images are
    skipped with a warning, as in Caffe.  The database must not exist yet.

compute_image_mean DB [OUT.binaryproto]
    The per-pixel mean of every Datum (decoded when encoded), accumulated in
    float32 exactly as Caffe's tool does, written as a (1, C, H, W) BlobProto;
    the per-channel means are logged.
"""
import logging
import os

import numpy as np

from .. import fileio
from ..errors import DataSourceError, MinicaffeError
from .progress import progress
from ..protoio import pb, write_binary_atomic
from ..transform import datum_to_item, encode_image, read_image

log = logging.getLogger('minicaffe')

# LMDB reserves address space, not disk: 1 TiB is what Caffe's tools grow to.
LMDB_MAP_SIZE = 1 << 40
COMMIT_EVERY = 1000


def _lmdb():
    try:
        import lmdb
    except ImportError:
        raise MinicaffeError('LMDB support needs the "lmdb" package (pip install lmdb)') from None
    return lmdb


def read_list(list_file):
    from ..layers.image_data import parse_image_list
    return parse_image_list(list_file)


def image_to_datum(path, label, resize_height=0, resize_width=0, is_color=True, encoding=''):
    """Caffe's ReadImageToDatum; returns None for an unreadable image."""
    try:
        img = read_image(path, resize_height, resize_width, is_color)
    except DataSourceError as e:
        log.warning('%s', e)
        return None
    datum = pb.Datum(label=int(label))
    if encoding:
        ext = os.path.splitext(path)[1].lower().lstrip('.')
        same_ext = ext == encoding.lower() or {ext, encoding.lower()} == {'jpg', 'jpeg'}
        if (img.shape[2] == 3) == bool(is_color) and not resize_height and not resize_width and same_ext:
            datum.data = fileio.read_bytes(path, 'image file', DataSourceError)
        else:
            datum.data = encode_image(img, encoding)
        datum.encoded = True
        return datum
    datum.channels, datum.height, datum.width = img.shape[2], img.shape[0], img.shape[1]
    datum.data = np.ascontiguousarray(np.transpose(img, (2, 0, 1))).tobytes()
    return datum


def convert_imageset(root, list_file, db_path, resize_height=0, resize_width=0, gray=False,
                     shuffle=False, encoded=False, encode_type='', check_size=False,
                     backend='lmdb', seed=None, show_progress=True):
    """Write an LMDB of Datum records; returns the number of images stored."""
    if backend.lower() != 'lmdb':
        raise MinicaffeError('backend "%s" is not supported; minicaffe writes LMDB only' % backend)
    lines = read_list(list_file)
    if shuffle:
        order = np.random.default_rng(seed).permutation(len(lines))
        lines = [lines[i] for i in order]
    log.info('A total of %d images.', len(lines))
    if encode_type and not encoded:
        log.info('encode_type specified, assuming encoded=true.')
        encoded = True
    resize_height, resize_width = max(0, int(resize_height)), max(0, int(resize_width))
    if os.path.exists(db_path):
        raise MinicaffeError('%s already exists; convert-imageset creates a new database'
                             ' (remove it first)' % db_path)
    lmdb = _lmdb()
    os.makedirs(db_path)
    env = lmdb.open(db_path, map_size=LMDB_MAP_SIZE, subdir=True)
    count = 0
    data_size = None
    try:
        txn = env.begin(write=True)
        for line_id, (name, label) in enumerate(progress(lines, desc='convert-imageset')
                                                if show_progress else lines):
            enc = encode_type
            if encoded and not enc:
                dot = name.rfind('.')
                if dot < 0:
                    log.warning("Failed to guess the encoding of '%s'", name)
                enc = name[dot + 1:].lower() if dot >= 0 else 'png'
            datum = image_to_datum(root + name, label, resize_height, resize_width, not gray,
                                   enc if encoded else '')
            if datum is None:
                continue
            if check_size and not datum.encoded:
                size = datum.channels * datum.height * datum.width
                if data_size is None:
                    data_size = size
                elif len(datum.data) != data_size:
                    raise MinicaffeError('%s: incorrect data field size %d (the first image had %d);'
                                         ' use --resize_height/--resize_width'
                                         % (root + name, len(datum.data), data_size))
            key = ('%08d_%s' % (line_id, name)).encode('utf-8', errors='surrogateescape')
            txn.put(key, datum.SerializeToString())
            count += 1
            if count % COMMIT_EVERY == 0:
                txn.commit()
                txn = env.begin(write=True)
                log.info('Processed %d files.', count)
        txn.commit()
        if count % COMMIT_EVERY:
            log.info('Processed %d files.', count)
    finally:
        env.close()
    return count


def iterate_db(db_path):
    """(key, Datum) for every record of an LMDB."""
    from ..layers.image_data import parse_datum
    lmdb = _lmdb()
    if not os.path.exists(db_path):
        raise DataSourceError('database %s does not exist' % db_path)
    subdir = os.path.isdir(db_path)
    fileio.check_regular_file(os.path.join(db_path, 'data.mdb') if subdir else db_path,
                              'LMDB data file', DataSourceError, limit=float('inf'))
    try:
        env = lmdb.open(db_path, readonly=True, lock=False, subdir=subdir, create=False)
    except lmdb.Error as e:
        raise DataSourceError('%s is not a readable LMDB database: %s' % (db_path, e)) from None
    try:
        n = env.stat()['entries']
        with env.begin() as txn:
            for key, value in progress(txn.cursor(), total=n, desc='compute-mean'):
                yield key, parse_datum(value, 'record %r of %s' % (key, db_path))
    except lmdb.Error as e:
        raise DataSourceError('reading LMDB %s failed: %s' % (db_path, e)) from None
    finally:
        env.close()


def compute_image_mean(db_path, out_path=None):
    """Mean image of an LMDB as a float32 (1, C, H, W) array (Caffe's float32 sums)."""
    total = None
    shape = None
    count = 0
    for key, datum in iterate_db(db_path):
        what = 'record %r of %s' % (key, db_path)
        item = datum_to_item(datum, what=what)        # encoded ones decoded natively
        if shape is None:
            shape = item.shape
            total = np.zeros(item.size, np.float32)
        if item.shape != shape:
            raise DataSourceError('%s has shape %s but the first record had %s; a mean needs equal'
                                  ' sizes' % (what, item.shape, shape))
        total += item.reshape(-1).astype(np.float32)
        count += 1
        if count % 10000 == 0:
            log.info('Processed %d files.', count)
    if count == 0:
        raise DataSourceError('database %s contains no records' % db_path)
    if count % 10000:
        log.info('Processed %d files.', count)
    mean = (total / np.float32(count)).astype(np.float32).reshape((1,) + shape)
    if out_path:
        bp = pb.BlobProto(num=1, channels=shape[0], height=shape[1], width=shape[2])
        bp.data.extend(mean.ravel().tolist())
        log.info('Write to %s', out_path)
        write_binary_atomic(out_path, bp)
    dim = shape[1] * shape[2]
    log.info('Number of channels: %d', shape[0])
    for c in range(shape[0]):
        s = np.cumsum(mean[0, c].ravel(), dtype=np.float32)[-1]    # sequential float sum, as Caffe
        log.info('mean_value channel [%d]: %g', c, float(s / np.float32(dim)))
    return mean


# ---------------------------------------------------------------- command line
def add_convert_imageset_arguments(p):
    p.add_argument('root', help='root folder prefixed to every path in the list')
    p.add_argument('list', help='text file of "path label" lines')
    p.add_argument('db', help='output LMDB (a new folder)')
    p.add_argument('--resize_height', '--resize-height', type=int, default=0,
                   help='resize images to this height (0: keep)')
    p.add_argument('--resize_width', '--resize-width', type=int, default=0,
                   help='resize images to this width (0: keep)')
    p.add_argument('--gray', action='store_true', help='store images as 1-channel gray')
    p.add_argument('--shuffle', action='store_true', help='shuffle the lines first')
    p.add_argument('--encoded', action='store_true', help='store encoded image files, not pixels')
    p.add_argument('--encode_type', '--encode-type', default='', help='re-encode as png, jpg, ...')
    p.add_argument('--check_size', '--check-size', action='store_true',
                   help='require all images to have the same size')
    p.add_argument('--backend', default='lmdb', help='lmdb (the only one supported)')
    p.add_argument('--seed', type=int, default=None, help='seed for --shuffle')


def run_convert_imageset(args):
    n = convert_imageset(args.root, args.list, args.db, args.resize_height, args.resize_width,
                         gray=args.gray, shuffle=args.shuffle, encoded=args.encoded,
                         encode_type=args.encode_type, check_size=args.check_size,
                         backend=args.backend, seed=args.seed)
    print('Processed %d files.' % n)
    return 0


def add_compute_mean_arguments(p):
    p.add_argument('db', help='input LMDB of Datum records')
    p.add_argument('out', nargs='?', help='output mean .binaryproto')
    p.add_argument('--backend', default='lmdb', help='lmdb (the only one supported)')


def run_compute_mean(args):
    if args.backend.lower() != 'lmdb':
        raise MinicaffeError('backend "%s" is not supported; minicaffe reads LMDB only' % args.backend)
    mean = compute_image_mean(args.db, args.out)
    for c in range(mean.shape[1]):
        print('mean_value channel [%d]: %g' % (c, float(mean[0, c].mean(dtype=np.float64))))
    return 0


def _main(prog, description, add, run, argv):
    import argparse
    import sys
    p = argparse.ArgumentParser(prog=prog, description=description)
    add(p)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format='%(message)s')
    try:
        return run(args)
    except MinicaffeError as e:
        print('error: %s' % e, file=sys.stderr)
        return 1


def convert_imageset_main(argv=None):
    """The same as ``minicaffe convert-imageset``."""
    return _main('minicaffe convert-imageset', 'Convert a list of images to an LMDB of Datum records.',
                 add_convert_imageset_arguments, run_convert_imageset, argv)


def compute_mean_main(argv=None):
    """The same as ``minicaffe compute-mean``."""
    return _main('minicaffe compute-mean', 'Compute the mean image of an LMDB of Datum records.',
                 add_compute_mean_arguments, run_compute_mean, argv)
