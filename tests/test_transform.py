"""DataTransformer (Caffe's order of operations), image decoding and resizing."""
import io

import numpy as np
import pytest
from PIL import Image

from minicaffe.errors import DataSourceError, MinicaffeError
from minicaffe.protoio import pb
from minicaffe.transform import (DataTransformer, decode_image, load_mean_file, read_image,
                                 resize_bilinear, datum_to_item)


def tp(**kw):
    p = pb.TransformationParameter()
    for k, v in kw.items():
        if k == 'mean_value':
            p.mean_value.extend(v)
        else:
            setattr(p, k, v)
    return p


def item(c=3, h=6, w=7, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (c, h, w)).astype(np.uint8)


def write_mean(path, arr):
    bp = pb.BlobProto(num=1, channels=arr.shape[0], height=arr.shape[1], width=arr.shape[2])
    bp.data.extend(arr.ravel().tolist())
    path.write_bytes(bp.SerializeToString())
    return str(path)


def test_identity_and_scale():
    x = item()
    out = DataTransformer(tp(), pb.TEST).transform(x)
    assert out.dtype == np.float32 and np.array_equal(out, x.astype(np.float32))
    out = DataTransformer(tp(scale=0.5), pb.TEST).transform(x)
    np.testing.assert_array_equal(out, x.astype(np.float32) * np.float32(0.5))


def test_center_crop_in_test_phase():
    x = item(h=7, w=8)
    out = DataTransformer(tp(crop_size=4), pb.TEST).transform(x)
    # h_off = (7-4)//2 = 1, w_off = (8-4)//2 = 2
    np.testing.assert_array_equal(out, x[:, 1:5, 2:6].astype(np.float32))


def test_random_crop_in_train_covers_all_offsets():
    x = np.arange(3 * 6 * 6, dtype=np.float32).reshape(3, 6, 6)
    t = DataTransformer(tp(crop_size=4), pb.TRAIN, rng=np.random.default_rng(1))
    seen = set()
    for _ in range(200):
        out = t.transform(x)
        h_off, w_off = divmod(int(out[0, 0, 0]), 6)
        np.testing.assert_array_equal(out, x[:, h_off:h_off + 4, w_off:w_off + 4])
        seen.add((h_off, w_off))
    assert seen == {(a, b) for a in range(3) for b in range(3)}


def test_mirror_flips_width_and_happens_in_test_too():
    x = item()
    t = DataTransformer(tp(mirror=True), pb.TEST, rng=np.random.default_rng(0))
    outs = [t.transform(x) for _ in range(40)]
    flipped = [np.array_equal(o, x[:, :, ::-1].astype(np.float32)) for o in outs]
    plain = [np.array_equal(o, x.astype(np.float32)) for o in outs]
    assert all(f or p for f, p in zip(flipped, plain)) and any(flipped) and any(plain)


def test_mean_file_indexed_before_crop_and_mirror(tmp_path):
    x = item(h=6, w=6)
    mean = np.random.default_rng(5).uniform(0, 255, (3, 6, 6)).astype(np.float32)
    path = write_mean(tmp_path / 'mean.binaryproto', mean)
    t = DataTransformer(tp(mean_file=path, crop_size=4, scale=0.25), pb.TEST)
    out = t.transform(x)
    want = (x[:, 1:5, 1:5].astype(np.float32) - mean[:, 1:5, 1:5]) * np.float32(0.25)
    np.testing.assert_array_equal(out, want)
    # mirrored: the mean of the source pixel is subtracted, then the item is flipped
    t = DataTransformer(tp(mean_file=path, mirror=True), pb.TEST, rng=np.random.default_rng(0))
    for _ in range(10):
        out = t.transform(x)
        a = x.astype(np.float32) - mean
        assert np.array_equal(out, a) or np.array_equal(out, a[:, :, ::-1])


def test_mean_values_one_or_per_channel():
    x = item()
    out = DataTransformer(tp(mean_value=[10]), pb.TEST).transform(x)
    np.testing.assert_array_equal(out, x.astype(np.float32) - 10)
    out = DataTransformer(tp(mean_value=[1, 2, 3]), pb.TEST).transform(x)
    np.testing.assert_array_equal(out, x.astype(np.float32) - np.float32([1, 2, 3])[:, None, None])
    with pytest.raises(DataSourceError, match='mean_value'):
        DataTransformer(tp(mean_value=[1, 2]), pb.TEST).transform(x)


def test_flow_mirror_inverts_x_flow_channel():
    x = item()
    t = DataTransformer(tp(mirror=True, flow=True, mean_value=[128]), pb.TEST, rng=np.random.default_rng(3))
    for _ in range(20):
        out = t.transform(x)
        if np.array_equal(out[0], (x[0].astype(np.float32) - 128)):
            np.testing.assert_array_equal(out[2], x[2].astype(np.float32) - 128)
        else:
            np.testing.assert_array_equal(out[0], (x[0].astype(np.float32) - 128)[:, ::-1])
            np.testing.assert_array_equal(out[2], (255 - x[2].astype(np.float32) - 128)[:, ::-1])


def test_bad_params_are_refused(tmp_path):
    with pytest.raises(MinicaffeError, match='force_color and force_gray'):
        DataTransformer(tp(force_color=True, force_gray=True), pb.TEST)
    path = write_mean(tmp_path / 'm.binaryproto', np.zeros((3, 2, 2), np.float32))
    with pytest.raises(MinicaffeError, match='mean_file and mean_value'):
        DataTransformer(tp(mean_file=path, mean_value=[1]), pb.TEST)
    with pytest.raises(DataSourceError, match='must match'):
        DataTransformer(tp(mean_file=path), pb.TEST).transform(item())
    with pytest.raises(DataSourceError, match='crop_size 9'):
        DataTransformer(tp(crop_size=9), pb.TEST).transform(item())
    with pytest.raises(DataSourceError, match='nope.binaryproto'):
        DataTransformer(tp(mean_file=str(tmp_path / 'nope.binaryproto')), pb.TEST)


def test_corrupt_mean_file_names_the_file(tmp_path):
    p = tmp_path / 'bad.binaryproto'
    p.write_bytes(b'\xff\xff\xff\x07garbage')
    with pytest.raises(DataSourceError, match='bad.binaryproto'):
        load_mean_file(str(p))
    p.write_bytes(pb.BlobProto(num=1, channels=2, height=2, width=2, data=[1.0]).SerializeToString())
    with pytest.raises(DataSourceError, match='bad.binaryproto'):
        load_mean_file(str(p))


def test_infer_shape():
    t = DataTransformer(tp(crop_size=5), pb.TRAIN)
    assert t.infer_shape(3, 10, 12) == (1, 3, 5, 5)
    assert DataTransformer(tp(), pb.TRAIN).infer_shape(1, 10, 12) == (1, 1, 10, 12)


# ---------------------------------------------------------------- images
def png_bytes(arr, mode=None):
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, format='PNG')
    return buf.getvalue()


def test_decode_gives_bgr_uint8():
    rgb = np.random.default_rng(0).integers(0, 256, (5, 4, 3), dtype=np.uint8)
    bgr = decode_image(png_bytes(rgb), True)
    assert bgr.dtype == np.uint8 and bgr.shape == (5, 4, 3)
    np.testing.assert_array_equal(bgr, rgb[:, :, ::-1])
    assert decode_image(png_bytes(rgb), None).shape == (5, 4, 3)
    gray = decode_image(png_bytes(rgb), False)
    want = (rgb[..., 0].astype(int) * 4899 + rgb[..., 1].astype(int) * 9617 + rgb[..., 2].astype(int) * 1868 + 8192) >> 14
    np.testing.assert_array_equal(gray[:, :, 0], want)


def test_decode_gray_and_alpha_images():
    g = np.arange(20, dtype=np.uint8).reshape(4, 5)
    assert decode_image(png_bytes(g), None).shape == (4, 5, 1)
    c = decode_image(png_bytes(g), True)
    assert c.shape == (4, 5, 3) and np.array_equal(c[..., 0], g) and np.array_equal(c[..., 2], g)
    rgba = np.random.default_rng(1).integers(0, 256, (3, 3, 4), dtype=np.uint8)
    np.testing.assert_array_equal(decode_image(png_bytes(rgba), True), rgba[:, :, 2::-1])


def test_decode_garbage_is_a_data_source_error(tmp_path):
    with pytest.raises(DataSourceError, match='thing'):
        decode_image(b'not an image at all', True, what='thing')
    p = tmp_path / 'x.jpg'
    p.write_bytes(png_bytes(np.zeros((4, 4, 3), np.uint8))[:30])
    with pytest.raises(DataSourceError, match='x.jpg'):
        read_image(str(p))
    with pytest.raises(DataSourceError, match='missing.png'):
        read_image(str(tmp_path / 'missing.png'))


def test_resize_bilinear_matches_opencv_rules():
    a = (np.arange(16).reshape(4, 4) * 10).astype(np.uint8)
    # exact 2x downsampling averages 2x2 blocks (OpenCV: (sum + 2) >> 2)
    np.testing.assert_array_equal(resize_bilinear(a, 2, 2), [[25, 45], [105, 125]])
    f = resize_bilinear(a.astype(np.float32), 8, 8)
    # half-pixel centres, clamped edges: first column equals the source edge
    np.testing.assert_allclose(f[:, 0], [0, 10, 30, 50, 70, 90, 110, 120])
    np.testing.assert_allclose(f[0, :4], [0, 2.5, 7.5, 12.5])
    up = resize_bilinear(a, 8, 8)
    assert np.abs(up.astype(int) - np.rint(f).astype(int)).max() <= 1
    assert resize_bilinear(np.zeros((3, 5, 2), np.uint8), 7, 9).shape == (7, 9, 2)


def test_datum_to_item_checks_sizes():
    d = pb.Datum(channels=2, height=2, width=2, data=b'\x01' * 8)
    assert datum_to_item(d).shape == (2, 2, 2)
    d.data = b'\x01' * 7
    with pytest.raises(DataSourceError, match='7 bytes'):
        datum_to_item(d)
    d = pb.Datum(channels=1, height=2, width=2)
    d.float_data.extend([1.5, 2, 3, 4])
    np.testing.assert_array_equal(datum_to_item(d)[0], [[1.5, 2], [3, 4]])
    d = pb.Datum(channels=0, height=2, width=2)
    with pytest.raises(DataSourceError):
        datum_to_item(d)
