"""minicaffe.io (pycaffe's caffe.io) and Classifier/Detector."""
import numpy as np
import pytest
from PIL import Image

from minicaffe import io as cio
from minicaffe.classifier import Classifier, Detector
from minicaffe.errors import MinicaffeError
from minicaffe.protoio import pb


def test_blobproto_round_trip_nd_and_legacy():
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    bp = cio.array_to_blobproto(a, diff=a * 2)
    assert list(bp.shape.dim) == [2, 3, 4]
    np.testing.assert_array_equal(cio.blobproto_to_array(bp), a)
    np.testing.assert_array_equal(cio.blobproto_to_array(bp, return_diff=True), a * 2)
    legacy = pb.BlobProto(num=1, channels=2, height=1, width=3, data=[1, 2, 3, 4, 5, 6])
    assert cio.blobproto_to_array(legacy).shape == (1, 2, 1, 3)
    bad = pb.BlobProto(num=1, channels=2, height=2, width=2, data=[1])
    with pytest.raises(ValueError):
        cio.blobproto_to_array(bad)


def test_blobprotovector_round_trip():
    arrs = [np.ones((1, 2, 2, 2)), np.zeros((3,))]
    s = cio.arraylist_to_blobprotovector_str(arrs)
    back = cio.blobprotovector_str_to_arraylist(s)
    assert [b.shape for b in back] == [(1, 2, 2, 2), (3,)]


def test_datum_round_trip_uint8_and_float():
    a = np.random.default_rng(0).integers(0, 256, (3, 4, 5)).astype(np.uint8)
    d = cio.array_to_datum(a, label=7)
    assert d.label == 7 and d.data == a.tobytes() and not len(d.float_data)
    np.testing.assert_array_equal(cio.datum_to_array(d), a)
    f = a.astype(np.float64) / 3
    d = cio.array_to_datum(f)
    assert not d.HasField('label')
    np.testing.assert_allclose(cio.datum_to_array(d), f, rtol=1e-6)
    with pytest.raises(ValueError, match='Incorrect array shape'):
        cio.array_to_datum(np.zeros((2, 2)))


def make_transformer(shape=(1, 3, 4, 5)):
    t = cio.Transformer({'data': shape})
    t.set_transpose('data', (2, 0, 1))
    t.set_channel_swap('data', (2, 1, 0))
    t.set_raw_scale('data', 255)
    t.set_mean('data', np.array([104., 117., 123.]))
    t.set_input_scale('data', 0.5)
    return t


def test_transformer_preprocess_order():
    img = np.random.default_rng(1).random((4, 5, 3)).astype(np.float32)
    keep = img.copy()
    out = make_transformer().preprocess('data', img)
    want = ((img.transpose(2, 0, 1)[[2, 1, 0]] * 255) - np.array([104, 117, 123.])[:, None, None]) * 0.5
    assert out.shape == (3, 4, 5) and out.dtype == np.float32
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(img, keep)      # the caller's image is untouched


def test_transformer_deprocess_inverts_preprocess():
    img = np.random.default_rng(2).random((4, 5, 3)).astype(np.float32)
    t = make_transformer()
    back = t.deprocess('data', t.preprocess('data', img)[None])
    np.testing.assert_allclose(back, img, atol=1e-5)


def test_transformer_resizes_to_input_dims():
    t = cio.Transformer({'data': (1, 3, 6, 8)})
    t.set_transpose('data', (2, 0, 1))
    out = t.preprocess('data', np.ones((3, 4, 3), np.float32) * 0.5)
    assert out.shape == (3, 6, 8)
    np.testing.assert_allclose(out, 0.5)


def test_transformer_checks():
    t = cio.Transformer({'data': (1, 3, 4, 5)})
    with pytest.raises(Exception, match='not one of the net inputs'):
        t.set_raw_scale('nope', 1)
    with pytest.raises(Exception, match='Transpose order'):
        t.set_transpose('data', (1, 0))
    with pytest.raises(Exception, match='Channel swap'):
        t.set_channel_swap('data', (1, 0))
    with pytest.raises(ValueError, match='Mean channels'):
        t.set_mean('data', np.zeros(2))
    with pytest.raises(ValueError, match='Mean shape incompatible'):
        t.set_mean('data', np.zeros((3, 2, 2)))
    t.set_mean('data', np.zeros((3, 4, 5)))


def test_load_image_color_gray_alpha(tmp_path):
    rgb = np.random.default_rng(3).integers(0, 256, (6, 7, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(str(tmp_path / 'c.png'))
    im = cio.load_image(str(tmp_path / 'c.png'))
    assert im.dtype == np.float32 and im.shape == (6, 7, 3)
    np.testing.assert_allclose(im, rgb / 255.0, atol=1e-6)
    g = cio.load_image(str(tmp_path / 'c.png'), color=False)
    assert g.shape == (6, 7, 1)
    np.testing.assert_allclose(g[..., 0], (rgb @ np.array([0.2125, 0.7154, 0.0721])) / 255, atol=1e-5)
    gray = rgb[..., 0]
    Image.fromarray(gray).save(str(tmp_path / 'g.png'))
    assert cio.load_image(str(tmp_path / 'g.png')).shape == (6, 7, 3)
    assert cio.load_image(str(tmp_path / 'g.png'), color=False).shape == (6, 7, 1)
    rgba = np.concatenate([rgb, np.full((6, 7, 1), 9, np.uint8)], axis=2)
    Image.fromarray(rgba).save(str(tmp_path / 'a.png'))
    np.testing.assert_allclose(cio.load_image(str(tmp_path / 'a.png')), rgb / 255.0, atol=1e-6)
    (tmp_path / 'bad.jpg').write_bytes(b'\xff\xd8garbage')
    with pytest.raises(MinicaffeError, match='bad.jpg'):
        cio.load_image(str(tmp_path / 'bad.jpg'))


def test_resize_image():
    im = np.random.default_rng(4).random((10, 12, 3)).astype(np.float32)
    out = cio.resize_image(im, (5, 6))
    assert out.shape == (5, 6, 3) and out.dtype == np.float32
    # exact 2x downsampling: each output is the mean of a 2x2 block
    np.testing.assert_allclose(out, im.reshape(5, 2, 6, 2, 3).mean(axis=(1, 3)), atol=1e-6)
    assert out.min() >= im.min() and out.max() <= im.max()
    const = cio.resize_image(np.full((3, 3, 1), 7.0), (5, 4))
    assert const.shape == (5, 4, 1) and np.all(const == 7)
    many = cio.resize_image(np.ones((4, 4, 5)), (8, 8))
    assert many.shape == (8, 8, 5) and np.allclose(many, 1)
    same = cio.resize_image(im, (10, 12))
    np.testing.assert_allclose(same, im, atol=1e-6)


def test_oversample_crops():
    im = np.arange(6 * 8, dtype=np.float32).reshape(6, 8, 1)
    crops = cio.oversample([im], (4, 4))
    assert crops.shape == (10, 4, 4, 1)
    np.testing.assert_array_equal(crops[0], im[0:4, 0:4])
    np.testing.assert_array_equal(crops[3], im[2:6, 4:8])
    np.testing.assert_array_equal(crops[4], im[1:5, 2:6])          # centre
    np.testing.assert_array_equal(crops[9], im[1:5, 2:6][:, ::-1])  # mirrored centre


def _tiny_net(tmp_path, h=4, w=4):
    p = tmp_path / 'tiny.prototxt'
    p.write_text('layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: %d'
                 ' dim: %d } } }\nlayer { name: "flat" type: "Flatten" bottom: "data" top: "out" }\n' % (h, w))
    return str(p)


def test_classifier_predict_matches_manual_pipeline(tmp_path):
    net_path = _tiny_net(tmp_path)
    clf = Classifier(net_path, None, image_dims=(6, 6), raw_scale=255, channel_swap=(2, 1, 0),
                           mean=np.array([1., 2., 3.]))
    imgs = [np.random.default_rng(i).random((8, 7, 3)).astype(np.float32) for i in range(3)]
    pred = clf.predict(imgs, oversample=False)
    assert pred.shape == (3, 48)
    r = cio.resize_image(imgs[1], (6, 6))[1:5, 1:5]
    want = clf.transformer.preprocess('data', r).ravel()
    np.testing.assert_allclose(pred[1], want, rtol=1e-5, atol=1e-4)
    over = clf.predict(imgs, oversample=True)
    crops = cio.oversample([cio.resize_image(imgs[2], (6, 6))], (4, 4))
    want = np.mean([clf.transformer.preprocess('data', c).ravel() for c in crops], axis=0)
    np.testing.assert_allclose(over[2], want, rtol=1e-5, atol=1e-4)


def test_detector_windows(tmp_path):
    net_path = _tiny_net(tmp_path)
    img = np.random.default_rng(9).integers(0, 256, (10, 12, 3), dtype=np.uint8)
    Image.fromarray(img).save(str(tmp_path / 'i.png'))
    det = Detector(net_path, None, raw_scale=255, context_pad=1, mean=np.array([5., 6., 7.]))
    out = det.detect_windows([(str(tmp_path / 'i.png'), [(0, 0, 6, 6), (2, 3, 9, 11)])])
    assert len(out) == 2 and out[1]['window'] == (2, 3, 9, 11) and out[0]['prediction'].shape == (48,)
    plain = Detector(net_path, None)
    out = plain.detect_windows([(str(tmp_path / 'i.png'), [(0, 0, 4, 4)])])
    want = (img[0:4, 0:4] / 255.0).transpose(2, 0, 1).ravel()
    np.testing.assert_allclose(out[0]['prediction'], want, atol=1e-6)
