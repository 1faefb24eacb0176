"""CPU/GPU parity of the device code in layers/common.py (InnerProduct, Embed,
Softmax), layers/loss.py (SoftmaxWithLoss, EuclideanLoss, SigmoidCrossEntropyLoss,
Accuracy), layers/structure.py (Concat, Slice, Eltwise) and Split (layers/core.py):
every mode and parameter, in-place use, bad labels, and a small net whose loss
weight reaches the loss layers through the device.

CI runs these through tests/fake_cupy.py (the real .cu sources built with g++);
tools/gpu_check.sh runs them on a real device."""
import numpy as np
import pytest

from minicaffe import mode
from minicaffe.errors import MinicaffeError
from minicaffe.gradcheck import make_layer
from minicaffe.net import Net
from minicaffe.protoio import parse_text, pb
from minicaffe.rng import set_random_seed

from gpu_support import check_gpu_parity, gpu_mode


def rand(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def labels(shape, classes, seed=0):
    return np.random.default_rng(seed).integers(0, classes, shape).astype(np.float32)


FILL = 'weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" std: 0.5 }'


# ------------------------------------------------------------ InnerProduct
@pytest.mark.parametrize('param, shape', [
    ('num_output: 5', (3, 4)),
    ('num_output: 6', (2, 3, 4, 5)),
    ('num_output: 4 bias_term: false', (2, 3, 2)),
    ('num_output: 5 transpose: true', (2, 3, 4, 5)),
    ('num_output: 3 axis: 2', (2, 3, 4, 5)),
    ('num_output: 3 axis: -1 transpose: true', (2, 3, 4)),
    ('num_output: 1 axis: 0', (7, 2)),
])
def test_inner_product(param, shape):
    check_gpu_parity('type: "InnerProduct" inner_product_param { %s %s }' % (param, FILL),
                     [shape])


def test_inner_product_accumulates_param_diffs():
    """backward_gpu adds to the existing weight and bias gradients, as the CPU does."""
    lp = 'type: "InnerProduct" inner_product_param { num_output: 3 transpose: true %s }' % FILL
    x = rand((4, 5))
    results, weights = [], None
    for gpu in (False, True):
        layer, bottom, top = make_layer(lp, [x], seed=3)
        if weights is None:
            weights = [p.data.copy() for p in layer.blobs]
        for p, w in zip(layer.blobs, weights):
            p.data[...] = w
        ctx = gpu_mode() if gpu else _nullcontext()
        with ctx:
            mode.run_forward(layer, bottom, top)
            top[0].diff[...] = rand(top[0].shape, 1)
            for p in layer.blobs:
                p.diff[...] = 1.5
            mode.run_backward(layer, top, [True], bottom)
            results.append([p.diff.copy() for p in layer.blobs] + [bottom[0].diff.copy()])
    for g, c in zip(results[1], results[0]):
        np.testing.assert_allclose(g, c, rtol=1e-5, atol=1e-6)


class _nullcontext(object):
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


# ------------------------------------------------------------ Embed
@pytest.mark.parametrize('bias', ['', 'bias_term: false'])
@pytest.mark.parametrize('idx', [
    [[0, 3, 3, 1], [3, 3, 0, 2]],                    # repeated indices accumulate
    [0, 1, 2, 3, 4, 4, 4, 4, 4, 0],
    [[-1, 2, 5, 6], [2.5, 1e10, -0.0, 4.0]],         # out of range / not integer: zero row
    [[[1, 1], [1, 1]], [[0, 6], [-3, 1]]],
])
def test_embed(bias, idx):
    lp = ('type: "Embed" embed_param { num_output: 3 input_dim: 5 %s %s }' % (bias, FILL))
    check_gpu_parity(lp, [np.array(idx, np.float32)], propagate_down=[False])


@pytest.mark.filterwarnings('ignore:invalid value encountered in cast:RuntimeWarning')
def test_embed_nan_index():
    """NaN selects no row on either path (the kernel range-checks before its cast)."""
    idx = np.array([1, np.nan, 3, -np.inf, np.inf, 2], np.float32)
    check_gpu_parity('type: "Embed" embed_param { num_output: 2 input_dim: 4 %s }' % FILL,
                     [idx], propagate_down=[False])


def test_embed_many_repeats():
    """Many rows meeting on the same weight row (atomicAdd on the device)."""
    idx = np.random.default_rng(5).integers(0, 3, (40, 7)).astype(np.float32)
    check_gpu_parity('type: "Embed" embed_param { num_output: 8 input_dim: 3 %s }' % FILL,
                     [idx], propagate_down=[False])


def test_embed_refuses_index_gradient():
    lp = 'type: "Embed" embed_param { num_output: 2 input_dim: 4 %s }' % FILL
    with gpu_mode():
        layer, bottom, top = make_layer(lp, [np.array([0, 1], np.float32)])
        mode.run_forward(layer, bottom, top)
        with pytest.raises(MinicaffeError, match='index input'):
            mode.run_backward(layer, top, [True], bottom)


# ------------------------------------------------------------ Softmax
@pytest.mark.parametrize('param, shape', [
    ('', (2, 5, 3, 4)),
    ('', (6, 10)),
    ('softmax_param { axis: -1 }', (2, 3, 7)),
    ('softmax_param { axis: 0 }', (4, 3)),
    ('softmax_param { axis: 2 }', (2, 3, 4, 2)),
])
def test_softmax(param, shape):
    check_gpu_parity('type: "Softmax" ' + param, [shape])


def test_softmax_large_values():
    x = rand((3, 6, 2)) * 40
    check_gpu_parity('type: "Softmax"', [x])


# ------------------------------------------------------------ in-place runs
def _run_in_place(lp, arrays, gpu, top_diff_seed=7):
    layer, bottom, _ = make_layer(lp, arrays)
    top = [bottom[0]]
    layer.reshape(bottom, top)
    ctx = gpu_mode() if gpu else _nullcontext()
    with ctx:
        mode.run_forward(layer, bottom, top)
        y = top[0].data.copy()
        top[0].diff[...] = rand(top[0].shape, top_diff_seed)
        for b in bottom[1:]:
            b.diff[...] = 0
        mode.run_backward(layer, top, [True] * len(bottom), bottom)
        return [y] + [b.diff.copy() for b in bottom]


@pytest.mark.parametrize('lp, arrays', [
    ('type: "Softmax"', [rand((2, 4, 3))]),
    ('type: "Eltwise" eltwise_param { operation: MAX }',
     [np.round(rand((2, 3, 4), 1)), np.round(rand((2, 3, 4), 2)), np.round(rand((2, 3, 4), 3))]),
    ('type: "Eltwise" eltwise_param { operation: SUM coeff: 0.5 coeff: -2 }',
     [rand((3, 4), 1), rand((3, 4), 2)]),
    ('type: "Eltwise" eltwise_param { operation: PROD }', [rand((3, 4), 1), rand((3, 4), 2)]),
    ('type: "Eltwise" eltwise_param { operation: PROD stable_prod_grad: false }',
     [rand((3, 4), 1), rand((3, 4), 2), rand((3, 4), 3)]),
])
def test_in_place(lp, arrays):
    cpu = _run_in_place(lp, arrays, False)
    gpu = _run_in_place(lp, arrays, True)
    for g, c in zip(gpu, cpu):
        np.testing.assert_allclose(g, c, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------ SoftmaxWithLoss
SWL = 'type: "SoftmaxWithLoss" '


@pytest.mark.parametrize('param', [
    '',
    'loss_param { normalization: FULL }',
    'loss_param { normalization: VALID }',
    'loss_param { normalization: BATCH_SIZE }',
    'loss_param { normalization: NONE }',
    'loss_param { normalize: false }',
    'loss_param { normalize: true }',
])
@pytest.mark.parametrize('ignore', [None, 2])
def test_softmax_loss(param, ignore):
    if ignore is not None:
        param = (param[:-1] if param else 'loss_param { ') + ' ignore_label: %d }' % ignore
    x = rand((2, 4, 3, 2))
    y = labels((2, 3, 2), 4, seed=1)
    check_gpu_parity(SWL + param, [x, y], propagate_down=[True, False])


@pytest.mark.parametrize('param, xshape, yshape', [
    ('', (5, 7), (5,)),
    ('softmax_param { axis: 2 }', (2, 3, 4), (2, 3)),
    ('softmax_param { axis: -1 } loss_param { normalization: FULL }', (3, 2, 6), (3, 2)),
    ('loss_param { ignore_label: -1 normalization: VALID }', (4, 3, 5), (4, 5)),
])
def test_softmax_loss_shapes(param, xshape, yshape):
    classes = xshape[2] if 'axis: 2' in param else (xshape[-1] if 'axis: -1' in param else xshape[1])
    y = labels(yshape, classes, seed=2)
    if 'ignore_label: -1' in param:
        y.reshape(-1)[::3] = -1
    check_gpu_parity(SWL + param, [rand(xshape), y], propagate_down=[True, False])


def test_softmax_loss_all_ignored_and_truncated_labels():
    y = np.array([[2.7, -1, 0.4], [-1, -1, 1.9]], np.float32)    # labels truncate to int
    check_gpu_parity(SWL + 'loss_param { ignore_label: -1 }', [rand((2, 3, 3)), y],
                     propagate_down=[True, False])
    y_all = np.full((2, 3), -1, np.float32)
    check_gpu_parity(SWL + 'loss_param { ignore_label: -1 }', [rand((2, 3, 3)), y_all],
                     propagate_down=[True, False])


def test_softmax_loss_prob_top():
    lp = SWL + 'top: "loss" top: "prob" loss_param { ignore_label: 0 }'
    layer = check_gpu_parity(lp, [rand((3, 5, 2)), labels((3, 2), 5, seed=4)],
                             propagate_down=[True, False])
    assert len(layer.layer_param.top) == 2


def test_softmax_loss_large_logits():
    x = rand((4, 6)) * 60          # p at the label can underflow: FLT_MIN clamps the log
    check_gpu_parity(SWL, [x, labels((4,), 6, seed=3)], propagate_down=[True, False])


def _error(lp, arrays, gpu):
    layer, bottom, top = make_layer(lp, arrays)
    ctx = gpu_mode() if gpu else _nullcontext()
    with ctx:
        with pytest.raises(MinicaffeError) as info:
            mode.run_forward(layer, bottom, top)
    return str(info.value)


@pytest.mark.parametrize('bad', [4, -3, 7.5, np.nan, 1e12])
@pytest.mark.parametrize('lp', [
    SWL + 'loss_param { ignore_label: -1 }',
    SWL,
    'type: "Accuracy" accuracy_param { ignore_label: -1 }',
    'type: "Accuracy"',
])
def test_bad_label_raises_as_on_cpu(lp, bad):
    y = np.array([[0, 1, -1], [3, 2, 1]], np.float32)
    if 'ignore_label' not in lp:
        y[0, 2] = 0
    y[1, 1] = bad
    x = rand((2, 4, 3))
    cpu = _error(lp, [x, y], False)
    gpu = _error(lp, [x, y], True)
    assert gpu == cpu
    assert 'element 4 of the label blob' in gpu


# ------------------------------------------------------------ EuclideanLoss
@pytest.mark.parametrize('a, b', [
    ((4, 3), (4, 3)),
    ((2, 3, 4), (2, 12)),
    ((5, 1, 2, 2), (5, 4, 1, 1)),
])
def test_euclidean_loss(a, b):
    check_gpu_parity('type: "EuclideanLoss"', [a, b])


def test_euclidean_loss_one_side():
    check_gpu_parity('type: "EuclideanLoss"', [(3, 4), (3, 4)], propagate_down=[False, True])
    check_gpu_parity('type: "EuclideanLoss"', [(3, 4), (3, 4)], propagate_down=[True, False])


# ------------------------------------------------------------ SigmoidCrossEntropyLoss
@pytest.mark.parametrize('param', [
    '',
    'loss_param { normalization: FULL }',
    'loss_param { normalization: VALID }',
    'loss_param { normalization: BATCH_SIZE }',
    'loss_param { normalization: NONE }',
    'loss_param { normalize: true }',
    'loss_param { ignore_label: -1 }',
    'loss_param { ignore_label: -1 normalization: VALID }',
    'loss_param { ignore_label: -1 normalization: FULL }',
    'loss_param { ignore_label: -1 normalization: NONE }',
])
def test_sigmoid_cross_entropy_loss(param):
    x = rand((3, 4, 2)) * 3
    t = np.random.default_rng(9).random((3, 4, 2)).astype(np.float32)
    t.reshape(-1)[::4] = -1          # ignored where ignore_label is set, a target otherwise
    check_gpu_parity('type: "SigmoidCrossEntropyLoss" ' + param, [x, t],
                     propagate_down=[True, False])


def test_sigmoid_cross_entropy_loss_binary_targets():
    x = rand((6, 5)) * 10
    t = labels((6, 5), 2, seed=2)
    check_gpu_parity('type: "SigmoidCrossEntropyLoss"', [x, t], propagate_down=[True, False])


# ------------------------------------------------------------ Accuracy
@pytest.mark.parametrize('param, xshape, yshape', [
    ('', (6, 5), (6,)),
    ('accuracy_param { top_k: 3 }', (6, 5), (6,)),
    ('accuracy_param { ignore_label: 1 }', (8, 4), (8,)),
    ('accuracy_param { axis: 2 top_k: 2 }', (2, 3, 5), (2, 3)),
    ('top: "acc" top: "per_class"', (2, 4, 3), (2, 3)),
    ('top: "acc" top: "per_class" accuracy_param { ignore_label: 0 top_k: 2 }', (3, 5, 4), (3, 4)),
])
def test_accuracy(param, xshape, yshape):
    axis = 2 if 'axis: 2' in param else 1
    x = np.round(rand(xshape, 3))                  # integer scores: many ties
    y = labels(yshape, xshape[axis], seed=4)
    check_gpu_parity('type: "Accuracy" ' + param, [x, y], backward=False)


def test_accuracy_nothing_counted():
    y = np.full((4,), 2, np.float32)
    check_gpu_parity('type: "Accuracy" accuracy_param { ignore_label: 2 } top: "a" top: "b"',
                     [rand((4, 3)), y], backward=False)


# ------------------------------------------------------------ Concat / Slice
@pytest.mark.parametrize('param, shapes', [
    ('', [(2, 3, 4), (2, 1, 4), (2, 5, 4)]),
    ('concat_param { axis: 0 }', [(1, 3), (4, 3)]),
    ('concat_param { axis: -1 }', [(2, 3, 2), (2, 3, 5)]),
    ('concat_param { concat_dim: 2 }', [(2, 2, 3, 2), (2, 2, 1, 2)]),
])
def test_concat(param, shapes):
    check_gpu_parity('type: "Concat" ' + param, shapes)


def test_concat_partial_backward():
    check_gpu_parity('type: "Concat"', [(2, 3, 2), (2, 4, 2), (2, 1, 2)],
                     propagate_down=[True, False, True])


@pytest.mark.parametrize('param, shape', [
    ('top: "a" top: "b" top: "c"', (2, 6, 3)),
    ('top: "a" top: "b" slice_param { slice_point: 1 }', (2, 5, 3)),
    ('top: "a" top: "b" top: "c" slice_param { axis: 2 slice_point: 1 slice_point: 4 }',
     (2, 3, 6, 2)),
    ('top: "a" top: "b" slice_param { axis: 0 }', (4, 3)),
    ('top: "a" top: "b" slice_param { slice_dim: 1 slice_point: 2 }', (3, 5)),
])
def test_slice(param, shape):
    check_gpu_parity('type: "Slice" ' + param, [shape])


# ------------------------------------------------------------ Eltwise
@pytest.mark.parametrize('param, n', [
    ('', 2),
    ('eltwise_param { operation: SUM }', 3),
    ('eltwise_param { operation: SUM coeff: 0.5 coeff: -2 coeff: 1 }', 3),
    ('eltwise_param { coeff: 1 coeff: -1 }', 2),
    ('eltwise_param { operation: PROD }', 2),
    ('eltwise_param { operation: PROD }', 3),
    ('eltwise_param { operation: PROD stable_prod_grad: false }', 3),
    ('eltwise_param { operation: MAX }', 2),
    ('eltwise_param { operation: MAX }', 4),
])
def test_eltwise(param, n):
    check_gpu_parity('type: "Eltwise" ' + param, [(2, 3, 4)] * n)


@pytest.mark.parametrize('n', [2, 3, 4])
def test_eltwise_max_ties(n):
    """Rounded values tie often; the gradient goes where the CPU sends it
    (bottom 1 wins a tie with bottom 0, a later bottom must be strictly greater)."""
    xs = [np.round(rand((3, 4, 5), k)) for k in range(n)]
    xs[0].reshape(-1)[:10] = xs[1].reshape(-1)[:10]            # certain ties
    if n > 2:
        xs[2].reshape(-1)[:20] = np.maximum(xs[0], xs[1]).reshape(-1)[:20]
    check_gpu_parity('type: "Eltwise" eltwise_param { operation: MAX }', xs)


def test_eltwise_partial_backward():
    check_gpu_parity('type: "Eltwise" eltwise_param { operation: MAX }', [(3, 4)] * 3,
                     propagate_down=[False, True, True])
    check_gpu_parity('type: "Eltwise" eltwise_param { operation: PROD }', [(3, 4)] * 3,
                     propagate_down=[True, False, True])


# ------------------------------------------------------------ Split
@pytest.mark.parametrize('tops', [1, 2, 3])
def test_split(tops):
    lp = 'type: "Split" ' + ' '.join('top: "t%d"' % i for i in range(tops))
    check_gpu_parity(lp, [(2, 3, 4)])


# ------------------------------------------------------------ a net in GPU mode
NET = '''
name: "common_gpu"
force_backward: true
layer { name: "data" type: "Input" top: "data" top: "label" top: "target"
        input_param { shape { dim: 4 dim: 2 dim: 3 } shape { dim: 4 } shape { dim: 4 dim: 5 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 5 %s } }
layer { name: "sm" type: "Softmax" bottom: "ip" top: "sm" }
layer { name: "cat" type: "Concat" bottom: "ip" bottom: "sm" top: "cat" }
layer { name: "sl" type: "Slice" bottom: "cat" top: "s1" top: "s2" slice_param { slice_point: 5 } }
layer { name: "sum" type: "Eltwise" bottom: "s1" bottom: "s1" top: "sum" }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss"
        loss_weight: 0.5 loss_param { ignore_label: 1 } }
layer { name: "l2" type: "EuclideanLoss" bottom: "sm" bottom: "target" top: "l2" loss_weight: 3 }
layer { name: "sce" type: "SigmoidCrossEntropyLoss" bottom: "s2" bottom: "sum"
        top: "sce" loss_weight: -0.25 propagate_down: true propagate_down: false }
layer { name: "acc" type: "Accuracy" bottom: "ip" bottom: "label" top: "acc" }
''' % FILL


def _net_run(gpu):
    set_random_seed(11)
    net = Net(net_param=parse_text(NET, pb.NetParameter()), phase='TRAIN')
    net.blobs['data'].data[...] = rand((4, 2, 3), 1)
    net.blobs['label'].data[...] = np.array([0, 1, 4, 2], np.float32)
    net.blobs['target'].data[...] = rand((4, 5), 2)
    ctx = gpu_mode() if gpu else _nullcontext()
    with ctx:
        loss = net.forward_backward()
        out = {name: b.data.copy() for name, b in net.blobs.items()}
        out.update({'d_' + name: b.diff.copy() for name, b in net.blobs.items()})
        for name, ps in net.params.items():
            for i, p in enumerate(ps):
                out['p_%s_%d' % (name, i)] = p.diff.copy()
    return loss, out, net


def test_net_loss_weights_on_device():
    """Split (inserted for ip, sm, s1), the loss weights seeded by the net on the device
    and every layer above in GPU mode give the CPU's loss and gradients."""
    cpu_loss, cpu, _ = _net_run(False)
    gpu_loss, gpu, net = _net_run(True)
    assert any(layer.type_name == 'Split' for layer in net.layers)
    np.testing.assert_allclose(gpu_loss, cpu_loss, rtol=1e-5)
    assert cpu.keys() == gpu.keys()
    for k in cpu:
        np.testing.assert_allclose(gpu[k], cpu[k], rtol=1e-4, atol=1e-5, err_msg=k)
