"""Loss layers and Accuracy beyond the conformance cases: Caffe's normalisation
rules, ignore labels, optional tops, loss-weight scaling in backward, the
quirks Caffe has (Hinge's scratch diff, Accuracy's ties, truncated labels) and
the errors for bad parameters, shapes and labels.  Every expected value comes
from an independent float64 reference written here from Caffe's formulas."""
import numpy as np
import pytest

import minicaffe as caffe
from minicaffe import protoio
from minicaffe.blob import Blob
from minicaffe.errors import MinicaffeError
from minicaffe.layers import layer_class
from minicaffe.protoio import pb

FLT_MIN = float(np.finfo(np.float32).tiny)


def rand(*shape, seed=0, scale=1.0):
    return (np.random.default_rng(seed).normal(size=shape) * scale).astype(np.float32)


def labels(shape, n, seed=1):
    return np.random.default_rng(seed).integers(0, n, size=shape).astype(np.float32)


def build(proto, arrays, ntop=1, phase=pb.TRAIN):
    """A set-up layer (Caffe's SetUp + Reshape) on bottoms holding `arrays`."""
    lp = protoio.parse_text(proto, pb.LayerParameter())
    if not lp.name:
        lp.name = 'L'
    layer = layer_class(lp.type)(lp, phase)
    bottom = []
    for a in arrays:
        b = Blob(np.shape(a))
        b.data[...] = a
        bottom.append(b)
    top = [Blob() for _ in range(ntop)]
    layer.check_blob_counts(bottom, top)
    layer.setup(bottom, top)
    layer.reshape(bottom, top)
    return layer, bottom, top


def fwd_bwd(layer, bottom, top, weight=1.0, down=None):
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    loss = float(top[0].data)
    top[0].diff[...] = weight
    down = [True] + [False] * (len(bottom) - 1) if down is None else down
    layer.backward(top, down, bottom)
    return loss, [b.diff.copy() for b in bottom]


def make_net(layers, inputs, force_backward=False, phase=caffe.TRAIN):
    tops = ''.join('top: "%s" ' % n for n in inputs)
    shapes = ''.join('shape { %s } ' % ' '.join('dim: %d' % d for d in s) for s in inputs.values())
    text = ('%s layer { name: "input" type: "Input" %s input_param { %s } }\n%s'
            % ('force_backward: true' if force_backward else '', tops, shapes, layers))
    return caffe.Net(net_param=protoio.parse_text(text, pb.NetParameter()), phase=phase)


# ------------------------------------------------------------ references
def ref_softmax_loss(x, lab, axis=1, ignore=None, mode='VALID'):
    x = x.astype(np.float64)
    outer = int(np.prod(x.shape[:axis]))
    C = x.shape[axis]
    xr = x.reshape(outer, C, -1)
    inner = xr.shape[2]
    p = np.exp(xr - xr.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    lr = np.trunc(lab.reshape(outer, inner)).astype(int)
    valid = np.ones_like(lr, bool) if ignore is None else lr != ignore
    loss, g = 0.0, p.copy()
    for i in range(outer):
        for j in range(inner):
            if not valid[i, j]:
                g[i, :, j] = 0
                continue
            loss -= np.log(max(p[i, lr[i, j], j], FLT_MIN))
            g[i, lr[i, j], j] -= 1
    n = {'FULL': outer * inner, 'VALID': valid.sum(), 'BATCH_SIZE': outer, 'NONE': 1}[mode]
    n = max(1.0, n)
    return loss / n, (g / n).reshape(x.shape), p.reshape(x.shape)


# ------------------------------------------------------------ SoftmaxWithLoss
SOFTMAX_CASES = [
    ('', 'VALID', None),
    ('loss_param { normalization: FULL ignore_label: 3 }', 'FULL', 3),
    ('loss_param { normalization: VALID ignore_label: 3 }', 'VALID', 3),
    ('loss_param { normalization: BATCH_SIZE ignore_label: 0 }', 'BATCH_SIZE', 0),
    ('loss_param { normalization: NONE }', 'NONE', None),
    ('loss_param { normalize: false ignore_label: 1 }', 'BATCH_SIZE', 1),   # legacy bool
    ('loss_param { normalize: true ignore_label: 1 }', 'VALID', 1),
    ('loss_param { normalize: false normalization: FULL }', 'FULL', None),  # normalization wins
]


@pytest.mark.parametrize('param,mode,ignore', SOFTMAX_CASES)
def test_softmax_loss_normalization(param, mode, ignore):
    x, lab = rand(3, 5, 2, 3), labels((3, 1, 2, 3), 5)
    layer, bottom, top = build('type: "SoftmaxWithLoss" ' + param, [x, lab])
    loss, diffs = fwd_bwd(layer, bottom, top, weight=2.5)
    rl, rg, _ = ref_softmax_loss(x, lab, ignore=ignore, mode=mode)
    assert top[0].shape == ()
    np.testing.assert_allclose(loss, rl, rtol=1e-5)
    np.testing.assert_allclose(diffs[0], 2.5 * rg, rtol=1e-4, atol=1e-6)


def test_softmax_loss_axis_and_prob_top():
    x, lab = rand(2, 3, 4), labels((2, 3), 4)
    layer, bottom, top = build('type: "SoftmaxWithLoss" softmax_param { axis: -1 }', [x, lab], ntop=2)
    loss, diffs = fwd_bwd(layer, bottom, top)
    rl, rg, p = ref_softmax_loss(x, lab, axis=2)
    assert top[1].shape == x.shape
    np.testing.assert_allclose(top[1].data, p, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(loss, rl, rtol=1e-5)
    np.testing.assert_allclose(diffs[0], rg, rtol=1e-4, atol=1e-6)


def test_softmax_loss_all_ignored_gives_zero():
    # normalizer max(1, 0): no NaN when every label is ignored
    x = rand(2, 3)
    layer, bottom, top = build('type: "SoftmaxWithLoss" loss_param { ignore_label: 2 }',
                               [x, np.full(2, 2, np.float32)])
    loss, diffs = fwd_bwd(layer, bottom, top)
    assert loss == 0.0 and not diffs[0].any()


def test_softmax_loss_labels_truncate_and_ignore_out_of_range():
    # 2.9 reads as 2 (static_cast<int>); an ignore label of 255 need not be a class
    x = rand(3, 4)
    lab = np.array([2.9, 255, 0.2], np.float32)
    layer, bottom, top = build('type: "SoftmaxWithLoss" loss_param { ignore_label: 255 }', [x, lab])
    loss, diffs = fwd_bwd(layer, bottom, top)
    rl, rg, _ = ref_softmax_loss(x, lab, ignore=255)
    np.testing.assert_allclose(loss, rl, rtol=1e-5)
    np.testing.assert_allclose(diffs[0], rg, rtol=1e-4, atol=1e-6)
    assert not diffs[0][1].any()


def test_softmax_loss_tiny_probability_clamped():
    x = np.array([[0.0, 200.0]], np.float32)   # p(class 0) underflows to 0 -> log(FLT_MIN)
    layer, bottom, top = build('type: "SoftmaxWithLoss"', [x, np.zeros(1, np.float32)])
    loss, _ = fwd_bwd(layer, bottom, top)
    np.testing.assert_allclose(loss, -np.log(FLT_MIN), rtol=1e-6)


@pytest.mark.parametrize('bad', [5, -1, 7.5])
def test_softmax_loss_label_out_of_range_names_layer(bad):
    lab = np.array([0, bad, 1], np.float32)
    layer, bottom, top = build('name: "myloss" type: "SoftmaxWithLoss"', [rand(3, 5), lab])
    with pytest.raises(MinicaffeError, match=r'myloss.*label value .* outside \[0, 5\)'):
        layer.forward(bottom, top)


def test_softmax_loss_label_out_of_range_with_other_ignore_label():
    layer, bottom, top = build('name: "sl" type: "SoftmaxWithLoss" loss_param { ignore_label: -1 }',
                               [rand(2, 3), np.array([-1, 3], np.float32)])
    with pytest.raises(MinicaffeError, match=r'"sl".*label value 3 .*not the ignore_label -1'):
        layer.forward(bottom, top)


def test_softmax_loss_label_count_mismatch():
    with pytest.raises(MinicaffeError, match=r'"L".*[Nn]umber of labels must match number of'
                                             r' predictions'):
        build('type: "SoftmaxWithLoss"', [rand(2, 3, 4), np.zeros((2, 3), np.float32)])


def test_loss_first_dimension_must_match():
    with pytest.raises(MinicaffeError, match='same first dimension'):
        build('type: "SoftmaxWithLoss" softmax_param { axis: 0 }',
              [rand(3, 2), np.zeros((2, 1, 1), np.float32)])


def test_softmax_loss_bad_axis():
    with pytest.raises(MinicaffeError, match='softmax_param.axis 3 is out of range'):
        build('type: "SoftmaxWithLoss" softmax_param { axis: 3 }', [rand(2, 3), np.zeros(2, np.float32)])


def test_label_backward_refused():
    layer, bottom, top = build('type: "SoftmaxWithLoss"', [rand(2, 3), np.zeros(2, np.float32)])
    layer.forward(bottom, top)
    top[0].diff[...] = 1
    with pytest.raises(MinicaffeError, match='cannot backpropagate to label'):
        layer.backward(top, [True, True], bottom)


@pytest.mark.parametrize('type_,allowed', [
    ('SoftmaxWithLoss', [True, False]), ('SigmoidCrossEntropyLoss', [True, False]),
    ('HingeLoss', [True, False]), ('MultinomialLogisticLoss', [True, False]),
    ('InfogainLoss', [True, False, False]), ('ContrastiveLoss', [True, True, False]),
    ('EuclideanLoss', [True, True]), ('Accuracy', [False, False])])
def test_allow_force_backward(type_, allowed):
    layer = layer_class(type_)(pb.LayerParameter(name='l', type=type_), pb.TRAIN)
    assert [layer.allow_force_backward(i) for i in range(len(allowed))] == allowed


def test_loss_layer_flags():
    for t in ('SoftmaxWithLoss', 'EuclideanLoss', 'SigmoidCrossEntropyLoss', 'HingeLoss',
              'ContrastiveLoss', 'MultinomialLogisticLoss', 'InfogainLoss'):
        cls = layer_class(t)
        assert cls.is_loss and cls.auto_top_blobs
    assert not layer_class('Accuracy').is_loss


@pytest.mark.parametrize('top', ['', 'top: "loss"'])
def test_softmax_loss_in_net_auto_top_and_force_backward(top):
    # without a named top the net adds one; force_backward never reaches the label
    net = make_net('layer { name: "loss" type: "SoftmaxWithLoss" bottom: "x" bottom: "label"'
                   ' %s loss_weight: 4 }' % top, {'x': (3, 4), 'label': (3,)}, force_backward=True)
    x, lab = rand(3, 4), labels(3, 4)
    net.blobs['x'].data[...] = x
    net.blobs['label'].data[...] = lab
    total = net.forward_all_loss()
    rl, rg, _ = ref_softmax_loss(x, lab)
    np.testing.assert_allclose(total, 4 * rl, rtol=1e-5)
    if top:
        assert net.blobs['loss'].data.shape == ()
        np.testing.assert_allclose(float(net.blobs['loss'].data), rl, rtol=1e-5)
    net.backward()
    np.testing.assert_allclose(net.blobs['x'].diff, 4 * rg, rtol=1e-4, atol=1e-6)
    assert not net.blobs['label'].diff.any()


# ------------------------------------------------------------ EuclideanLoss
def test_euclidean_loss_both_bottoms_and_weight():
    a, b = rand(4, 3, 2), rand(4, 6, seed=2)   # same count per item, different shapes
    layer, bottom, top = build('type: "EuclideanLoss"', [a, b])
    loss, diffs = fwd_bwd(layer, bottom, top, weight=3.0, down=[True, True])
    d = a.reshape(4, 6).astype(np.float64) - b
    np.testing.assert_allclose(loss, (d ** 2).sum() / 4 / 2, rtol=1e-5)
    np.testing.assert_allclose(diffs[0], (3 * d / 4).reshape(a.shape), rtol=1e-5)
    np.testing.assert_allclose(diffs[1], -3 * d / 4, rtol=1e-5)


def test_euclidean_loss_dimension_mismatch():
    with pytest.raises(MinicaffeError, match='same dimension'):
        build('type: "EuclideanLoss"', [rand(4, 3), rand(4, 2)])


# ------------------------------------------------------------ SigmoidCrossEntropyLoss
def ref_sigmoid_xent(x, t, ignore=None, mode='BATCH_SIZE'):
    x, t = x.astype(np.float64), t.astype(np.float64)
    valid = np.ones(x.shape, bool) if ignore is None else np.trunc(t) != ignore
    p = 1 / (1 + np.exp(-x))
    l_el = -(t * np.log(p) + (1 - t) * np.log(1 - p))
    n = {'FULL': x.size, 'VALID': valid.sum(), 'BATCH_SIZE': x.shape[0], 'NONE': 1}[mode]
    n = max(1.0, n)
    return l_el[valid].sum() / n, np.where(valid, p - t, 0) / n


@pytest.mark.parametrize('param,mode,ignore', [
    ('', 'BATCH_SIZE', None),                         # Caffe's default here is BATCH_SIZE
    ('loss_param { normalization: VALID ignore_label: -1 }', 'VALID', -1),
    ('loss_param { normalization: FULL }', 'FULL', None),
    ('loss_param { normalize: true ignore_label: -1 }', 'VALID', -1),
    ('loss_param { normalization: NONE ignore_label: -1 }', 'NONE', -1),
])
def test_sigmoid_xent(param, mode, ignore):
    x = rand(4, 3, 2, scale=2)
    t = np.random.default_rng(3).uniform(size=(4, 3, 2)).astype(np.float32)
    if ignore is not None:
        t[0, 1, 0] = t[2, 2, 1] = ignore
    layer, bottom, top = build('type: "SigmoidCrossEntropyLoss" ' + param, [x, t])
    loss, diffs = fwd_bwd(layer, bottom, top, weight=0.5)
    rl, rg = ref_sigmoid_xent(x, t, ignore, mode)
    np.testing.assert_allclose(loss, rl, rtol=1e-5)
    np.testing.assert_allclose(diffs[0], 0.5 * rg, rtol=1e-4, atol=1e-7)


def test_sigmoid_xent_stable_for_large_inputs():
    x = np.array([[100.0, -100.0]], np.float32)
    t = np.array([[0.0, 1.0]], np.float32)
    layer, bottom, top = build('type: "SigmoidCrossEntropyLoss"', [x, t])
    loss, _ = fwd_bwd(layer, bottom, top)
    np.testing.assert_allclose(loss, 200.0, rtol=1e-6)


def test_sigmoid_xent_count_mismatch():
    with pytest.raises(MinicaffeError, match='same count'):
        build('type: "SigmoidCrossEntropyLoss"', [rand(4, 3), rand(4, 2)])


# ------------------------------------------------------------ HingeLoss
def ref_hinge(x, lab, l2):
    x = x.reshape(len(lab), -1).astype(np.float64)
    s = np.ones_like(x)
    s[np.arange(len(lab)), lab.astype(int)] = -1
    m = np.maximum(0, 1 + s * x)
    n = len(lab)
    if l2:
        return (m ** 2).sum() / n, 2 * s * m / n, m
    return m.sum() / n, s * np.sign(m) / n, m


@pytest.mark.parametrize('l2', [False, True])
def test_hinge(l2):
    x, lab = rand(5, 4, scale=2), labels(5, 4)
    layer, bottom, top = build('type: "HingeLoss"' + (' hinge_loss_param { norm: L2 }' if l2 else ''),
                               [x, lab])
    layer.forward(bottom, top)
    rl, rg, m = ref_hinge(x, lab, l2)
    np.testing.assert_allclose(bottom[0].diff, m, rtol=1e-6)   # Caffe's scratch use of x's diff
    loss, diffs = fwd_bwd(layer, bottom, top, weight=2.0)
    np.testing.assert_allclose(loss, rl, rtol=1e-5)
    np.testing.assert_allclose(diffs[0], 2 * rg, rtol=1e-5)


def test_hinge_label_out_of_range():
    layer, bottom, top = build('name: "h" type: "HingeLoss"', [rand(2, 3), np.array([0, 3], np.float32)])
    with pytest.raises(MinicaffeError, match=r'"h".*label value 3 .*outside \[0, 3\)'):
        layer.forward(bottom, top)


# ------------------------------------------------------------ ContrastiveLoss
def ref_contrastive(a, b, sim, margin, legacy):
    d = (a - b).reshape(len(sim), -1).astype(np.float64)
    d2 = (d ** 2).sum(1)
    dist = np.sqrt(d2)
    similar = np.trunc(sim) != 0
    n = len(sim)
    if legacy:
        per = np.where(similar, d2, np.maximum(margin - d2, 0))
        coef = np.where(similar, 1.0, np.where(margin - d2 > 0, -1.0, 0.0))
    else:
        per = np.where(similar, d2, np.maximum(margin - dist, 0) ** 2)
        md = margin - dist
        coef = np.where(similar, 1.0, np.where(md > 0, -md / (dist + 1e-4), 0.0))
    return per.sum() / n / 2, coef[:, None] * d / n


@pytest.mark.parametrize('legacy', [False, True])
def test_contrastive(legacy):
    a, b = rand(6, 3, 1, 1, scale=0.5), rand(6, 3, 1, 1, seed=4, scale=0.5)
    sim = np.array([1, 0, 0.7, 2, 0, 1], np.float32)   # 0.7 truncates to 0: dissimilar
    p = 'contrastive_loss_param { margin: 1.5 %s }' % ('legacy_version: true' if legacy else '')
    layer, bottom, top = build('type: "ContrastiveLoss" ' + p, [a, b, sim])
    loss, diffs = fwd_bwd(layer, bottom, top, weight=3.0, down=[True, True, False])
    rl, rg = ref_contrastive(a, b, sim, 1.5, legacy)
    np.testing.assert_allclose(loss, rl, rtol=1e-5)
    np.testing.assert_allclose(diffs[0].reshape(6, 3), 3 * rg, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(diffs[1].reshape(6, 3), -3 * rg, rtol=1e-4, atol=1e-7)


def test_contrastive_shape_errors():
    with pytest.raises(MinicaffeError, match='same channels'):
        build('type: "ContrastiveLoss"', [rand(2, 3, 1, 1), rand(2, 4, 1, 1), np.ones(2, np.float32)])
    with pytest.raises(MinicaffeError, match=r'\(N, C, 1, 1\)'):
        build('type: "ContrastiveLoss"', [rand(2, 3, 2, 1), rand(2, 3, 2, 1), np.ones(2, np.float32)])


# ------------------------------------------------------------ MultinomialLogisticLoss
def test_multinomial_logistic_threshold_and_gradient():
    p = np.random.default_rng(0).uniform(0.1, 1, size=(3, 4)).astype(np.float32)
    p[1, 2] = 0.0                                   # clamped at kLOG_THRESHOLD = 1e-20
    lab = np.array([0, 2, 3], np.float32)
    layer, bottom, top = build('type: "MultinomialLogisticLoss"', [p, lab])
    loss, diffs = fwd_bwd(layer, bottom, top, weight=2.0)
    pt = np.maximum(p[[0, 1, 2], [0, 2, 3]].astype(np.float64), np.float32(1e-20))
    np.testing.assert_allclose(loss, -np.log(pt).sum() / 3, rtol=1e-5)
    g = np.zeros((3, 4))
    g[[0, 1, 2], [0, 2, 3]] = -2.0 / 3 / pt
    np.testing.assert_allclose(diffs[0], g, rtol=1e-5)


def test_multinomial_logistic_label_shape():
    with pytest.raises(MinicaffeError, match='one label per item'):
        build('type: "MultinomialLogisticLoss"', [rand(3, 4), np.zeros((3, 2), np.float32)])


# ------------------------------------------------------------ InfogainLoss
def ref_infogain(x, lab, H, axis=1, ignore=None, mode='VALID'):
    x = x.astype(np.float64)
    outer = int(np.prod(x.shape[:axis]))
    C = x.shape[axis]
    xr = x.reshape(outer, C, -1)
    inner = xr.shape[2]
    p = np.exp(xr - xr.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    lr = np.trunc(lab.reshape(outer, inner)).astype(int)
    H = H.reshape(C, C).astype(np.float64)
    loss, cnt, g = 0.0, 0, np.zeros_like(p)
    for i in range(outer):
        for j in range(inner):
            y = lr[i, j]
            if ignore is not None and y == ignore:
                continue
            loss -= (H[y] * np.log(np.maximum(p[i, :, j], 1e-20))).sum()
            g[i, :, j] = p[i, :, j] * H[y].sum() - H[y]
            cnt += 1
    n = {'FULL': outer * inner, 'VALID': cnt, 'BATCH_SIZE': outer, 'NONE': 1}[mode]
    n = max(1.0, n)
    return loss / n, (g / n).reshape(x.shape), p.reshape(x.shape)


def test_infogain_bottom_matrix_axis_ignore():
    x, lab = rand(2, 3, 4, 2), labels((2, 3, 2), 4)
    lab[0, 1, 1] = 7
    H = np.random.default_rng(5).uniform(0.1, 2, size=(1, 1, 4, 4)).astype(np.float32)
    layer, bottom, top = build('type: "InfogainLoss" infogain_loss_param { axis: 2 }'
                               ' loss_param { ignore_label: 7 normalization: BATCH_SIZE }',
                               [x, lab, H], ntop=2)
    loss, diffs = fwd_bwd(layer, bottom, top, weight=1.5, down=[True, False, False])
    rl, rg, p = ref_infogain(x, lab, H, axis=2, ignore=7, mode='BATCH_SIZE')
    np.testing.assert_allclose(loss, rl, rtol=1e-5)
    np.testing.assert_allclose(diffs[0], 1.5 * rg, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(top[1].data, p, rtol=1e-5, atol=1e-7)


def test_infogain_identity_equals_softmax_loss():
    x, lab = rand(4, 5), labels(4, 5)
    H = np.eye(5, dtype=np.float32)
    l1, b1, t1 = build('type: "InfogainLoss"', [x, lab, H])
    l2, b2, t2 = build('type: "SoftmaxWithLoss"', [x, lab])
    loss1, d1 = fwd_bwd(l1, b1, t1)
    loss2, d2 = fwd_bwd(l2, b2, t2)
    np.testing.assert_allclose(loss1, loss2, rtol=1e-6)
    np.testing.assert_allclose(d1[0], d2[0], rtol=1e-5, atol=1e-7)


def test_infogain_source_file(tmp_path):
    H = np.random.default_rng(6).uniform(0.1, 2, size=(3, 3)).astype(np.float32)
    bp = pb.BlobProto(num=1, channels=1, height=3, width=3)
    bp.data.extend(H.ravel().tolist())
    path = tmp_path / 'H.binaryproto'
    path.write_bytes(bp.SerializeToString())
    x, lab = rand(4, 3), labels(4, 3)
    layer, bottom, top = build('type: "InfogainLoss" infogain_loss_param { source: "%s" }' % path,
                               [x, lab])
    loss, diffs = fwd_bwd(layer, bottom, top)
    rl, rg, _ = ref_infogain(x, lab, H)
    np.testing.assert_allclose(loss, rl, rtol=1e-5)
    np.testing.assert_allclose(diffs[0], rg, rtol=1e-4, atol=1e-6)


def test_infogain_errors(tmp_path):
    x, lab = rand(4, 3), labels(4, 3)
    with pytest.raises(MinicaffeError, match='source must be specified'):
        build('type: "InfogainLoss"', [x, lab])
    with pytest.raises(MinicaffeError, match='nothere.binaryproto'):
        build('type: "InfogainLoss" infogain_loss_param { source: "%s" }'
              % (tmp_path / 'nothere.binaryproto'), [x, lab])
    with pytest.raises(MinicaffeError, match='normalize is deprecated'):
        build('type: "InfogainLoss" loss_param { normalize: true }', [x, lab, np.eye(3, dtype=np.float32)])
    with pytest.raises(MinicaffeError, match='must be 3x3'):
        build('type: "InfogainLoss"', [x, lab, np.eye(4, dtype=np.float32)])


# ------------------------------------------------------------ Accuracy
def test_accuracy_ties_count_against():
    x = np.array([[1, 1, 0], [2, 1, 1], [0, 0, 0]], np.float32)
    lab = np.array([0, 0, 2], np.float32)
    layer, bottom, top = build('type: "Accuracy"', [x, lab], phase=pb.TEST)
    layer.forward(bottom, top)
    assert top[0].shape == ()
    np.testing.assert_allclose(float(top[0].data), 1 / 3.0, rtol=1e-6)   # only row 1 is correct
    layer, bottom, top = build('type: "Accuracy" accuracy_param { top_k: 2 }', [x, lab], phase=pb.TEST)
    layer.forward(bottom, top)
    np.testing.assert_allclose(float(top[0].data), 2 / 3.0, rtol=1e-6)   # row 2: 2 ties, not < 2


def test_accuracy_topk_ignore_per_class_axis():
    x = rand(3, 6, 2)
    lab = labels((3, 2), 6)
    lab[1, 0] = 4
    lab[2, 1] = -3   # ignored
    layer, bottom, top = build('type: "Accuracy" accuracy_param { top_k: 3 axis: 1 ignore_label: -3 }',
                               [x, lab], ntop=2, phase=pb.TEST)
    layer.forward(bottom, top)
    hits, nums = np.zeros(6), np.zeros(6)
    for i in range(3):
        for j in range(2):
            y = int(lab[i, j])
            if y == -3:
                continue
            nums[y] += 1
            if (x[i, :, j] >= x[i, y, j]).sum() - 1 < 3:
                hits[y] += 1
    np.testing.assert_allclose(float(top[0].data), hits.sum() / nums.sum(), rtol=1e-6)
    assert top[1].shape == (6,)
    np.testing.assert_allclose(top[1].data, np.where(nums > 0, hits / np.maximum(nums, 1), 0), rtol=1e-6)


def test_accuracy_nothing_counted_is_zero():
    layer, bottom, top = build('type: "Accuracy" accuracy_param { ignore_label: 0 }',
                               [rand(2, 3), np.zeros(2, np.float32)], ntop=2, phase=pb.TEST)
    layer.forward(bottom, top)
    assert float(top[0].data) == 0 and not top[1].data.any()


def test_accuracy_errors():
    with pytest.raises(MinicaffeError, match='top_k .* number of classes'):
        build('type: "Accuracy" accuracy_param { top_k: 4 }', [rand(2, 3), np.zeros(2, np.float32)])
    with pytest.raises(MinicaffeError, match='[Nn]umber of labels must match'):
        build('type: "Accuracy"', [rand(2, 3, 2), np.zeros(2, np.float32)])
    layer, bottom, top = build('name: "acc" type: "Accuracy"', [rand(2, 3), np.array([0, 3], np.float32)])
    with pytest.raises(MinicaffeError, match=r'"acc".*label value 3'):
        layer.forward(bottom, top)


def test_accuracy_cannot_backpropagate():
    layer, bottom, top = build('type: "Accuracy"', [rand(2, 3), np.zeros(2, np.float32)])
    layer.forward(bottom, top)
    with pytest.raises(MinicaffeError):
        layer.backward(top, [True, False], bottom)
