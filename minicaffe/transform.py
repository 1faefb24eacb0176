"""Caffe's DataTransformer and the image reading its data layers rely on.

Order of operations (data_transformer.cpp), for one C x H x W item:

1. ``do_mirror = mirror and Rand(2)`` (drawn first, only when ``mirror``);
2. crop ``crop_size`` x ``crop_size``: in TRAIN at ``h_off = Rand(H - crop + 1)``,
   ``w_off = Rand(W - crop + 1)``; in TEST centred at ``(H - crop) // 2``;
3. for every kept pixel: ``(value - mean) * scale`` where ``mean`` is the mean
   file's value at the pixel's position in the *uncropped* image, or the
   channel's ``mean_value`` (one value is replicated over all channels);
4. mirrored items are written flipped left-right.

The LRCN fork's ``flow: true`` marks optical-flow images: when an item is
mirrored, channel 2 (the x-flow, stored as 128 + dx) becomes ``255 - value``
before the mean is subtracted, as lisa-caffe-public's transformer does (the fork
did this only for Datum input; minicaffe applies it to every input).

Images are read with Pillow into Caffe's (OpenCV's) layout: BGR channel order,
0-255 uint8, H x W x C.  ``resize_bilinear`` reproduces OpenCV's
``cv::resize(INTER_LINEAR)`` (half-pixel centres, clamped edges, no
anti-aliasing, 11-bit fixed-point weights for 8-bit images).
"""
import io as _io
import os

import numpy as np

from . import fileio
from .errors import DataSourceError, MinicaffeError
from .protoio import pb

# Images larger than this (pixels) are refused before decoding: a corrupt or
# hostile header must not make us allocate gigabytes.
MAX_IMAGE_PIXELS = 1 << 28


class TransformError(DataSourceError):
    """An item that does not fit the transformation (too small, wrong channels)."""


# --------------------------------------------------------------- image I/O
def _pil():
    from PIL import Image
    return Image


def _to_uint8(arr):
    """8-bit view of a decoded array (16-bit images are scaled by 1/256, as OpenCV does)."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    if arr.dtype in (np.uint16, np.int32, np.int64, np.uint32):
        return np.clip(arr.astype(np.int64) >> 8, 0, 255).astype(np.uint8)
    return np.clip(np.rint(arr), 0, 255).astype(np.uint8)


def _gray_from_rgb(rgb):
    # OpenCV's cvtColor RGB2GRAY: fixed-point 0.299 R + 0.587 G + 0.114 B.
    r, g, b = (rgb[..., i].astype(np.int32) for i in range(3))
    return ((r * 4899 + g * 9617 + b * 1868 + (1 << 13)) >> 14).astype(np.uint8)


def decode_image(data, color=None, what='image'):
    """Decode image bytes (or a path) into an H x W x C uint8 array in BGR order.

    ``color``: True -> 3 channels (cv::IMREAD_COLOR), False -> 1 channel
    (IMREAD_GRAYSCALE), None -> as stored: 1 for gray, 3 otherwise
    (IMREAD_ANYCOLOR).  Raises DataSourceError naming ``what`` when the data is
    not a decodable image.
    """
    Image = _pil()
    src = _io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
    try:
        with Image.open(src) as im:
            if im.width * im.height > MAX_IMAGE_PIXELS:
                raise DataSourceError('%s is %dx%d pixels, more than minicaffe decodes (%d)'
                                      % (what, im.width, im.height, MAX_IMAGE_PIXELS))
            mode = im.mode
            gray_src = mode in ('1', 'L', 'LA', 'I', 'I;16', 'I;16B', 'I;16L', 'F')
            if color is False and im.format == 'JPEG' and mode in ('RGB', 'YCbCr'):
                im.draft('L', im.size)      # libjpeg outputs luma, as OpenCV's reader does
                mode = im.mode
                gray_src = mode == 'L'
            if gray_src:
                if mode == 'LA':
                    im = im.convert('L')
                arr = _to_uint8(np.asarray(im))
                if arr.ndim == 3:
                    arr = arr[..., 0]
                if color:
                    return np.repeat(arr[:, :, None], 3, axis=2)
                return arr[:, :, None].copy()
            if mode != 'RGB':
                im = im.convert('RGB')      # palette, RGBA (alpha dropped), CMYK, ...
            rgb = np.asarray(im)
    except MinicaffeError:
        raise
    except MemoryError:
        raise DataSourceError('%s: not enough memory to decode it' % what) from None
    except Exception as e:  # PIL raises many kinds: UnidentifiedImageError, OSError, SyntaxError...
        raise DataSourceError('%s is not a readable image (%s: %s)'
                              % (what, type(e).__name__, e)) from None
    if color is False:
        return _gray_from_rgb(rgb)[:, :, None]
    return np.ascontiguousarray(rgb[:, :, ::-1])


def read_image(path, height=0, width=0, is_color=True):
    """Caffe's ReadImageToCVMat: BGR uint8 H x W x C, resized when both sizes > 0.

    Raises DataSourceError naming the path when it is missing or unreadable.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataSourceError('could not open or find image file %s' % path)
    raw = fileio.read_bytes(path, 'image file', DataSourceError)
    img = decode_image(raw, bool(is_color), what='image file %s' % path)
    if height > 0 and width > 0:
        try:
            img = resize_bilinear(img, height, width)
        except ValueError as e:
            raise DataSourceError('image file %s: %s' % (path, e)) from None
    return img


def encode_image(img_bgr, ext):
    """Encode an H x W x C (BGR or gray) uint8 array as ``ext`` ('jpg', 'png', ...)."""
    Image = _pil()
    fmt = {'jpg': 'JPEG', 'jpeg': 'JPEG', 'png': 'PNG', 'bmp': 'BMP', 'tif': 'TIFF',
           'tiff': 'TIFF', 'ppm': 'PPM', 'pgm': 'PPM', 'webp': 'WEBP'}.get(ext.lower().lstrip('.'))
    if fmt is None:
        raise MinicaffeError('cannot encode images as "%s" (use jpg, png, bmp, tiff, ppm or webp)' % ext)
    if img_bgr.shape[2] == 1:
        im = Image.fromarray(img_bgr[:, :, 0], 'L')
    else:
        im = Image.fromarray(np.ascontiguousarray(img_bgr[:, :, ::-1]), 'RGB')
    buf = _io.BytesIO()
    im.save(buf, format=fmt, **({'quality': 95} if fmt == 'JPEG' else {}))
    return buf.getvalue()


# ------------------------------------------------------------------ resize
def _linear_taps(out_size, in_size):
    """OpenCV's INTER_LINEAR source index and weight of each output position."""
    scale = in_size / float(out_size)
    f = ((np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    i0 = np.floor(f).astype(np.int64)
    frac = (f - i0).astype(np.float32)
    low = i0 < 0
    frac[low] = 0
    i0[low] = 0
    high = i0 >= in_size - 1
    frac[high] = 0
    i0[high] = in_size - 1
    i1 = np.minimum(i0 + 1, in_size - 1)
    return i0, i1, frac


def resize_bilinear(img, out_h, out_w):
    """Resize H x W [x C] like cv::resize(..., INTER_LINEAR).

    uint8 input uses OpenCV's fixed-point arithmetic (weights scaled by 2048,
    rounded; its SSE rounding of the vertical pass) and returns uint8 (checked
    against OpenCV: at most 1 gray level apart, on ~1% of pixels); float input
    is interpolated in float32.
    """
    out_h, out_w = int(out_h), int(out_w)
    if out_h <= 0 or out_w <= 0:
        raise ValueError('resize to %dx%d: sizes must be positive' % (out_h, out_w))
    if out_h * out_w > MAX_IMAGE_PIXELS:
        raise ValueError('resize to %dx%d: more than %d pixels' % (out_h, out_w, MAX_IMAGE_PIXELS))
    squeeze = img.ndim == 2
    if squeeze:
        img = img[:, :, None]
    h, w = img.shape[:2]
    if (h, w) == (out_h, out_w):
        out = img.copy()
        return out[:, :, 0] if squeeze else out
    y0, y1, fy = _linear_taps(out_h, h)
    x0, x1, fx = _linear_taps(out_w, w)
    if img.dtype == np.uint8:
        scale = 2048
        # cbuf[0] = saturate_cast<short>((1.f - fx) * 2048); cbuf[1] = 2048 - cbuf[0]
        ax0 = np.rint((np.float32(1) - fx) * np.float32(scale)).astype(np.int64)
        ax1 = scale - ax0
        ay0 = np.rint((np.float32(1) - fy) * np.float32(scale)).astype(np.int64)
        ay1 = scale - ay0
        src = img.astype(np.int64)
        # horizontal pass in exact integers (weights x 2048), then OpenCV's
        # vectorised vertical pass: ((b0*(S0>>4))>>16 + (b1*(S1>>4))>>16 + 2) >> 2
        cols = src[:, x0] * ax0[None, :, None] + src[:, x1] * ax1[None, :, None]   # (h, out_w, C)
        v = (((cols[y0] >> 4) * ay0[:, None, None]) >> 16) + (((cols[y1] >> 4) * ay1[:, None, None]) >> 16)
        out = np.clip((v + 2) >> 2, 0, 255).astype(np.uint8)
    else:
        src = img.astype(np.float32, copy=False)
        fy = fy[:, None, None]
        fx = fx[None, :, None]
        rows = src[y0] * (1 - fy) + src[y1] * fy
        out = (rows[:, x0] * (1 - fx) + rows[:, x1] * fx).astype(np.float32)
    return out[:, :, 0] if squeeze else out


# -------------------------------------------------------------- mean files
def load_mean_file(path):
    """A mean .binaryproto as a float32 (C, H, W) array (Caffe's Blob::FromProto)."""
    from .protoio import blob_proto_array
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DataSourceError('mean file %s does not exist' % path)
    raw = fileio.read_bytes(path, 'mean file', DataSourceError)
    bp = pb.BlobProto()
    try:
        bp.ParseFromString(raw)
    except Exception as e:
        raise DataSourceError('mean file %s is not a BlobProto (.binaryproto): %s' % (path, e)) from None
    try:
        arr = blob_proto_array(bp, source='mean file %s' % path)
    except MinicaffeError as e:
        raise DataSourceError(str(e)) from None
    except ValueError as e:
        raise DataSourceError('mean file %s: %s' % (path, e)) from None
    if arr.ndim == 0 or arr.size == 0:
        raise DataSourceError('mean file %s holds no values' % path)
    if arr.ndim == 4:
        if arr.shape[0] != 1:
            raise DataSourceError('mean file %s has shape %s; a mean image has num 1'
                                  % (path, arr.shape))
        arr = arr[0]
    elif arr.ndim == 2:
        arr = arr[None]
    elif arr.ndim != 3:
        raise DataSourceError('mean file %s has shape %s; expected (1, C, H, W)' % (path, arr.shape))
    return np.ascontiguousarray(arr, dtype=np.float32)


# ----------------------------------------------------------- the transformer
class DataTransformer(object):
    """Caffe's DataTransformer for one layer.

    ``param`` is a TransformationParameter, ``phase`` pb.TRAIN/pb.TEST, ``rng``
    a numpy Generator owned by the layer (Caffe gives each transformer its own
    RNG, which keeps prefetch threads deterministic), ``context`` names the
    layer in error messages.
    """

    def __init__(self, param, phase, rng=None, context=''):
        self.param = param
        self.phase = phase
        self.rng = rng if rng is not None else np.random.default_rng()
        self.context = context
        self.crop_size = int(param.crop_size)
        self.scale = np.float32(param.scale)
        self.mirror = bool(param.mirror)
        self.flow = bool(getattr(param, 'flow', False))
        if param.force_color and param.force_gray:
            raise self._error('cannot set both force_color and force_gray')
        self.mean = None
        self.mean_values = None
        if param.HasField('mean_file') and len(param.mean_value):
            raise self._error('cannot specify mean_file and mean_value at the same time')
        if param.HasField('mean_file'):
            self.mean = load_mean_file(param.mean_file)
        if len(param.mean_value):
            self.mean_values = np.asarray(param.mean_value, dtype=np.float32)

    def _error(self, msg):
        prefix = '%s: ' % self.context if self.context else ''
        return TransformError(prefix + msg)

    # -- shapes -------------------------------------------------------------
    def infer_shape(self, channels, height, width):
        """Caffe's InferBlobShape: [1, C, crop or H, crop or W]."""
        crop = self.crop_size
        if channels <= 0:
            raise self._error('an item has %d channels' % channels)
        if height < crop or width < crop:
            raise self._error('crop_size %d is larger than an item of %dx%d' % (crop, height, width))
        return (1, channels, crop or height, crop or width)

    # -- per item -------------------------------------------------------------
    def _check_means(self, c, h, w):
        if self.mean is not None and self.mean.shape != (c, h, w):
            raise self._error('mean file %s is %s (C, H, W) but the item is %s; they must match'
                              % (self.param.mean_file, 'x'.join(map(str, self.mean.shape)),
                                 'x'.join(map(str, (c, h, w)))))
        if self.mean_values is not None and len(self.mean_values) not in (1, c):
            raise self._error('specify either 1 mean_value or as many as channels (%d), got %d'
                              % (c, len(self.mean_values)))

    def transform(self, item):
        """Transform one item given as a (C, H, W) uint8 or float array."""
        c, h, w = item.shape
        self._check_means(c, h, w)
        crop = self.crop_size
        if crop and (h < crop or w < crop):
            raise self._error('crop_size %d is larger than an item of %dx%d' % (crop, h, w))
        do_mirror = self.mirror and bool(self.rng.integers(2))
        h_off = w_off = 0
        oh, ow = h, w
        if crop:
            oh = ow = crop
            if self.phase == pb.TRAIN:
                h_off = int(self.rng.integers(h - crop + 1))
                w_off = int(self.rng.integers(w - crop + 1))
            else:
                h_off = (h - crop) // 2
                w_off = (w - crop) // 2
        x = item[:, h_off:h_off + oh, w_off:w_off + ow].astype(np.float32)
        if self.flow and do_mirror and c > 2:
            x[2] = np.float32(255) - x[2]
        if self.mean is not None:
            x -= self.mean[:, h_off:h_off + oh, w_off:w_off + ow]
        elif self.mean_values is not None:
            x -= self.mean_values.reshape(-1, 1, 1)
        if self.scale != 1:
            x *= self.scale
        if do_mirror:
            x = x[:, :, ::-1]
        return np.ascontiguousarray(x)

    def transform_image(self, img_hwc):
        """Transform an H x W x C (BGR) image, as Transform(cv::Mat)."""
        return self.transform(np.transpose(img_hwc, (2, 0, 1)))

    def datum_item(self, datum, what='datum'):
        """The (C, H, W) array a Datum holds (decoding encoded images)."""
        return datum_to_item(datum, force_color=self.param.force_color,
                             force_gray=self.param.force_gray, what=what)

    def transform_datum(self, datum, what='datum'):
        return self.transform(self.datum_item(datum, what))


def datum_to_item(datum, force_color=False, force_gray=False, what='datum'):
    """A Datum's pixels as (C, H, W): uint8 for ``data``, float32 for ``float_data``."""
    if datum.encoded:
        color = True if force_color else (False if force_gray else None)
        img = decode_image(bytes(datum.data), color, what=what)
        return np.transpose(img, (2, 0, 1))
    c, h, w = int(datum.channels), int(datum.height), int(datum.width)
    if c <= 0 or h <= 0 or w <= 0:
        raise DataSourceError('%s has shape %dx%dx%d; channels, height and width must be positive'
                              % (what, c, h, w))
    n = c * h * w
    if n > MAX_IMAGE_PIXELS * 4:
        raise DataSourceError('%s claims %d values, more than minicaffe accepts' % (what, n))
    if len(datum.data):
        if len(datum.data) != n:
            raise DataSourceError('%s holds %d bytes but channels x height x width = %dx%dx%d = %d'
                                  % (what, len(datum.data), c, h, w, n))
        return np.frombuffer(datum.data, dtype=np.uint8).reshape(c, h, w)
    if len(datum.float_data) != n:
        raise DataSourceError('%s holds %d float values but channels x height x width = %d'
                              % (what, len(datum.float_data), n))
    return np.asarray(datum.float_data, dtype=np.float32).reshape(c, h, w)
