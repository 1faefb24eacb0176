"""pycaffe's ``caffe.io``: array/proto conversion, image loading and the
input Transformer, with the same semantics as python/caffe/io.py.

Images are decoded with Pillow instead of scikit-image and resized with a
NumPy bilinear interpolation equal to scikit-image's ``resize(order=1,
mode='constant')`` without anti-aliasing (what pycaffe got from the
scikit-image of its day): half-pixel centres, samples beyond the border blend
with 0, the result clipped to the input's range.
"""
import numpy as np

from .errors import MinicaffeError
from .protoio import pb

caffe_pb2 = pb


class CaffeIOError(MinicaffeError, ValueError):
    """A bad argument to a caffe.io function (pycaffe raises ValueError/Exception)."""


# ------------------------------------------------- proto / datum / ndarray
def blobproto_to_array(blob, return_diff=False):
    """A BlobProto's data (or diff) as an array: legacy 4-D when num/channels/
    height/width are set, else its ``shape``."""
    data = blob.diff if return_diff else blob.data
    arr = np.array(data)
    if any(blob.HasField(f) for f in ('num', 'channels', 'height', 'width')):
        shape = (blob.num, blob.channels, blob.height, blob.width)
    else:
        shape = tuple(blob.shape.dim)
    try:
        return arr.reshape(shape)
    except ValueError:
        raise CaffeIOError('BlobProto holds %d values but its shape %s needs %d'
                       % (arr.size, shape, int(np.prod(shape)))) from None


def array_to_blobproto(arr, diff=None):
    """An N-D array (and optional diff of the same shape) as a BlobProto."""
    arr = np.asarray(arr)
    blob = pb.BlobProto()
    blob.shape.dim.extend(int(d) for d in arr.shape)
    blob.data.extend(arr.astype(float).flat)
    if diff is not None:
        blob.diff.extend(np.asarray(diff).astype(float).flat)
    return blob


def arraylist_to_blobprotovector_str(arraylist):
    """Serialized BlobProtoVector of a list of arrays."""
    vec = pb.BlobProtoVector()
    vec.blobs.extend([array_to_blobproto(arr) for arr in arraylist])
    return vec.SerializeToString()


arraylist_to_blobprotovecor_str = arraylist_to_blobprotovector_str   # pycaffe's old spelling


def blobprotovector_str_to_arraylist(str_):
    """Arrays of a serialized BlobProtoVector."""
    vec = pb.BlobProtoVector()
    vec.ParseFromString(str_)
    return [blobproto_to_array(blob) for blob in vec.blobs]


def array_to_datum(arr, label=None):
    """A 3-D (C, H, W) array as a Datum: uint8 arrays go to ``data`` as bytes,
    others to ``float_data``."""
    arr = np.asarray(arr)
    if arr.ndim != 3:
        raise CaffeIOError('Incorrect array shape.')
    datum = pb.Datum()
    datum.channels, datum.height, datum.width = (int(d) for d in arr.shape)
    if arr.dtype == np.uint8:
        datum.data = arr.tobytes()
    else:
        datum.float_data.extend(arr.astype(float).flat)
    if label is not None:
        datum.label = int(label)
    return datum


def datum_to_array(datum):
    """A Datum's values as a (C, H, W) array (uint8 for ``data``, float for
    ``float_data``); the label is ``datum.label``."""
    shape = (datum.channels, datum.height, datum.width)
    try:
        if len(datum.data):
            return np.frombuffer(datum.data, dtype=np.uint8).reshape(shape)
        return np.array(datum.float_data).astype(float).reshape(shape)
    except ValueError:
        raise CaffeIOError('Datum of shape %s holds %d values' % (shape, max(len(datum.data),
                                                                        len(datum.float_data)))) from None


# ------------------------------------------------------------ Transformer
class Transformer(object):
    """Transform input for feeding into a Net (pycaffe's caffe.io.Transformer).

    ``inputs``: {input name: blob shape (N, C, H, W)}.
    preprocess: float32 -> resize to the blob's (H, W) -> transpose -> channel
    swap -> * raw_scale -> - mean -> * input_scale.  deprocess undoes it.
    """

    def __init__(self, inputs):
        self.inputs = {k: tuple(int(d) for d in v) for k, v in dict(inputs).items()}
        self.transpose = {}
        self.channel_swap = {}
        self.raw_scale = {}
        self.mean = {}
        self.input_scale = {}

    def __check_input(self, in_):
        if in_ not in self.inputs:
            raise CaffeIOError('{} is not one of the net inputs: {}'.format(in_, self.inputs))

    def preprocess(self, in_, data):
        """(H' x W' x K) image -> (K x H x W) float32 array for input ``in_``."""
        self.__check_input(in_)
        caffe_in = np.array(data, dtype=np.float32)     # a copy: the caller's array stays intact
        transpose = self.transpose.get(in_)
        channel_swap = self.channel_swap.get(in_)
        raw_scale = self.raw_scale.get(in_)
        mean = self.mean.get(in_)
        input_scale = self.input_scale.get(in_)
        in_dims = self.inputs[in_][2:]
        if caffe_in.shape[:2] != in_dims:
            caffe_in = resize_image(caffe_in, in_dims)
        if transpose is not None:
            caffe_in = caffe_in.transpose(transpose)
        if channel_swap is not None:
            caffe_in = caffe_in[list(channel_swap), :, :]
        if raw_scale is not None:
            caffe_in *= raw_scale
        if mean is not None:
            caffe_in -= mean
        if input_scale is not None:
            caffe_in *= input_scale
        return caffe_in

    def deprocess(self, in_, data):
        """Invert preprocess (except the resize)."""
        self.__check_input(in_)
        decaf_in = np.array(data, copy=True).squeeze()
        transpose = self.transpose.get(in_)
        channel_swap = self.channel_swap.get(in_)
        raw_scale = self.raw_scale.get(in_)
        mean = self.mean.get(in_)
        input_scale = self.input_scale.get(in_)
        if input_scale is not None:
            decaf_in /= input_scale
        if mean is not None:
            decaf_in += mean
        if raw_scale is not None:
            decaf_in /= raw_scale
        if channel_swap is not None:
            decaf_in = decaf_in[np.argsort(channel_swap), :, :]
        if transpose is not None:
            decaf_in = decaf_in.transpose(np.argsort(transpose))
        return decaf_in

    def set_transpose(self, in_, order):
        """Order in which to transpose the input dimensions, e.g. (2, 0, 1) for HxWxK -> KxHxW."""
        self.__check_input(in_)
        if len(order) != len(self.inputs[in_]) - 1:
            raise CaffeIOError('Transpose order needs to have the same number of '
                           'dimensions as the input.')
        self.transpose[in_] = order

    def set_channel_swap(self, in_, order):
        """Channel order after transpose, e.g. (2, 1, 0) for RGB -> BGR."""
        self.__check_input(in_)
        if len(order) != self.inputs[in_][1]:
            raise CaffeIOError('Channel swap needs to have the same number of '
                           'dimensions as the input channels.')
        self.channel_swap[in_] = order

    def set_raw_scale(self, in_, scale):
        """Scale of raw features: blob = input * scale (255 for [0,1] images and ImageNet models)."""
        self.__check_input(in_)
        self.raw_scale[in_] = scale

    def set_mean(self, in_, mean):
        """Mean to subtract: one value per channel (1-D) or an elementwise (C, H, W) array."""
        self.__check_input(in_)
        mean = np.asarray(mean)
        ms = mean.shape
        if mean.ndim == 1:
            if ms[0] != self.inputs[in_][1]:
                raise CaffeIOError('Mean channels incompatible with input.')
            mean = mean[:, np.newaxis, np.newaxis]
        else:
            if len(ms) == 2:
                ms = (1,) + ms
            if len(ms) != 3:
                raise CaffeIOError('Mean shape invalid')
            if ms != self.inputs[in_][1:]:
                raise CaffeIOError('Mean shape incompatible with input shape.')
        self.mean[in_] = mean

    def set_input_scale(self, in_, scale):
        """Scale applied after mean subtraction: blob = blob * scale."""
        self.__check_input(in_)
        self.input_scale[in_] = scale


# ----------------------------------------------------------------- image IO
def load_image(filename, color=True):
    """Load an image as float32 in [0, 1]: (H x W x 3) RGB, or (H x W x 1)
    intensity when ``color`` is False (luminance 0.2125 R + 0.7154 G + 0.0721 B,
    as scikit-image's rgb2gray).  Gray images are tiled to 3 channels when
    ``color``; an alpha channel is dropped."""
    from .transform import _pil, MAX_IMAGE_PIXELS
    Image = _pil()
    try:
        with Image.open(filename) as im:
            if im.width * im.height > MAX_IMAGE_PIXELS:
                raise CaffeIOError('%s is %dx%d pixels, too large' % (filename, im.width, im.height))
            img = _pil_to_float(im)
    except MinicaffeError:
        raise
    except FileNotFoundError:
        raise CaffeIOError('image file %s does not exist' % (filename,)) from None
    except Exception as e:
        raise CaffeIOError('%s is not a readable image (%s: %s)' % (filename, type(e).__name__, e)) from None
    if img.ndim == 3 and not color:
        img = (0.2125 * img[:, :, 0] + 0.7154 * img[:, :, 1] + 0.0721 * img[:, :, 2]).astype(np.float32)
    if img.ndim == 2:
        img = img[:, :, np.newaxis]
        if color:
            img = np.tile(img, (1, 1, 3))
    return img


def _pil_to_float(im):
    mode = im.mode
    if mode == '1':
        return np.asarray(im, dtype=np.float32)
    if mode in ('L', 'LA'):
        return np.asarray(im.convert('L'), dtype=np.float32) / np.float32(255)
    if mode.startswith('I;16') or mode == 'I':
        a = np.asarray(im)
        return (a.astype(np.float64) / 65535.0).astype(np.float32)
    if mode == 'F':
        return np.asarray(im, dtype=np.float32)
    if mode != 'RGB':
        im = im.convert('RGB')
    return np.asarray(im, dtype=np.float32) / np.float32(255)


def _resize_linear_constant(im, out_h, out_w):
    """Bilinear, half-pixel centres, zero outside the image (skimage order=1, mode='constant')."""
    h, w = im.shape[:2]

    def taps(n_out, n_in):
        pos = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / float(n_out)) - 0.5
        i0 = np.floor(pos).astype(np.int64)
        f = pos - i0
        w0, w1 = 1.0 - f, f
        i1 = i0 + 1
        w0 = np.where((i0 >= 0) & (i0 < n_in), w0, 0.0)
        w1 = np.where((i1 >= 0) & (i1 < n_in), w1, 0.0)
        return np.clip(i0, 0, n_in - 1), np.clip(i1, 0, n_in - 1), w0, w1

    y0, y1, wy0, wy1 = taps(out_h, h)
    x0, x1, wx0, wx1 = taps(out_w, w)
    src = im.astype(np.float64)
    rows = src[y0] * wy0[:, None, None] + src[y1] * wy1[:, None, None]
    return rows[:, x0] * wx0[None, :, None] + rows[:, x1] * wx1[None, :, None]


def _zoom_linear(im, out_h, out_w):
    """Linear interpolation with corner-aligned grids (scipy.ndimage.zoom order=1)."""
    h, w = im.shape[:2]

    def taps(n_out, n_in):
        pos = np.arange(n_out) * ((n_in - 1) / float(n_out - 1)) if n_out > 1 else np.zeros(1)
        i0 = np.clip(np.floor(pos).astype(np.int64), 0, n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, pos - i0

    y0, y1, fy = taps(out_h, h)
    x0, x1, fx = taps(out_w, w)
    src = im.astype(np.float64)
    rows = src[y0] * (1 - fy)[:, None, None] + src[y1] * fy[:, None, None]
    return rows[:, x0] * (1 - fx)[None, :, None] + rows[:, x1] * fx[None, :, None]


def resize_image(im, new_dims, interp_order=1):
    """Resize an (H x W x K) array to (new_dims[0], new_dims[1], K), float32.

    ``interp_order`` 0 (nearest) or 1 (linear) as pycaffe supports in practice;
    higher orders fall back to linear.
    """
    im = np.asarray(im)
    if im.ndim != 3:
        raise CaffeIOError('resize_image expects an H x W x K array, got shape %s' % (im.shape,))
    out_h, out_w = int(new_dims[0]), int(new_dims[1])
    if out_h <= 0 or out_w <= 0:
        raise CaffeIOError('resize_image: new dimensions must be positive, got %s' % (tuple(new_dims),))
    if interp_order == 0:
        ys = np.minimum(((np.arange(out_h) + 0.5) * im.shape[0] / out_h).astype(np.int64), im.shape[0] - 1)
        xs = np.minimum(((np.arange(out_w) + 0.5) * im.shape[1] / out_w).astype(np.int64), im.shape[1] - 1)
        return im[ys][:, xs].astype(np.float32)
    if im.shape[-1] == 1 or im.shape[-1] == 3:
        im_min, im_max = im.min(), im.max()
        if im_max > im_min:
            im_std = (im.astype(np.float64) - im_min) / (im_max - im_min)
            resized_std = np.clip(_resize_linear_constant(im_std, out_h, out_w), 0.0, 1.0)
            resized_im = resized_std * (im_max - im_min) + im_min
        else:
            ret = np.empty((out_h, out_w, im.shape[-1]), dtype=np.float32)
            ret.fill(im_min)
            return ret
    else:
        resized_im = _zoom_linear(im, out_h, out_w)
    return resized_im.astype(np.float32)


def oversample(images, crop_dims):
    """The four corner crops, the centre crop and their mirrors of each image:
    (10*N x H x W x K) float32 for N (H' x W' x K) images."""
    im_shape = np.array(images[0].shape)
    crop_dims = np.array(crop_dims)
    im_center = im_shape[:2] / 2.0
    h_indices = (0, im_shape[0] - crop_dims[0])
    w_indices = (0, im_shape[1] - crop_dims[1])
    crops_ix = np.empty((5, 4), dtype=int)
    curr = 0
    for i in h_indices:
        for j in w_indices:
            crops_ix[curr] = (i, j, i + crop_dims[0], j + crop_dims[1])
            curr += 1
    crops_ix[4] = np.tile(im_center, (1, 2)) + np.concatenate([-crop_dims / 2.0, crop_dims / 2.0])
    crops_ix = np.tile(crops_ix, (2, 1))
    crops = np.empty((10 * len(images), crop_dims[0], crop_dims[1], im_shape[-1]), dtype=np.float32)
    ix = 0
    for im in images:
        for crop in crops_ix:
            crops[ix] = im[crop[0]:crop[2], crop[1]:crop[3], :]
            ix += 1
        crops[ix - 5:ix] = crops[ix - 5:ix, :, ::-1, :]
    return crops
