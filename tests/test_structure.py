"""Behaviour of the structural layers beyond the conformance cases: aliasing,
Caffe's tie rules, edge cases and parameter errors."""
import numpy as np
import pytest

import minicaffe as caffe
from minicaffe import protoio
from minicaffe.errors import MinicaffeError
from minicaffe.protoio import pb


def make_net(layers, inputs, phase=caffe.TEST, force_backward=True):
    tops = ''.join('top: "%s" ' % n for n in inputs)
    shapes = ''.join('shape { %s } ' % ' '.join('dim: %d' % d for d in s) for s in inputs.values())
    inp = ('layer { name: "input" type: "Input" %s input_param { %s } }' % (tops, shapes)
           if inputs else '')
    text = '%s %s\n%s' % ('force_backward: true' if force_backward else '', inp, layers)
    return caffe.Net(net_param=protoio.parse_text(text, pb.NetParameter()), phase=phase)


def layer(type_, bottoms, tops, param=''):
    return ('layer { name: "l" type: "%s" %s %s %s }'
            % (type_, ''.join('bottom: "%s" ' % b for b in bottoms),
               ''.join('top: "%s" ' % t for t in tops), param))


def rand(*shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def bad(type_, param, inputs, msg, bottoms=('x',), tops=('y',)):
    with pytest.raises(MinicaffeError, match=msg) as e:
        make_net(layer(type_, bottoms, tops, param), inputs)
    assert 'layer "l"' in str(e.value)


# ---------------------------------------------------------------- Flatten / Reshape
def test_flatten_aliases_data_and_diff():
    net = make_net(layer('Flatten', ['x'], ['y'], 'flatten_param { axis: -3 end_axis: -2 }'),
                   {'x': (2, 3, 4, 5)})
    net.forward()
    assert net.blobs['y'].shape == (2, 12, 5)
    net.blobs['x'].data[...] = rand(2, 3, 4, 5)
    np.testing.assert_array_equal(net.blobs['y'].data, net.blobs['x'].data.reshape(2, 12, 5))
    net.blobs['y'].diff[...] = 7
    net.backward()
    assert np.all(net.blobs['x'].diff == 7)


def test_flatten_follows_a_reshaped_input():
    net = make_net(layer('Flatten', ['x'], ['y']), {'x': (2, 3, 4)})
    net.blobs['x'].reshape(5, 2, 2)
    net.blobs['x'].data[...] = rand(5, 2, 2)
    net.forward()
    np.testing.assert_array_equal(net.blobs['y'].data, net.blobs['x'].data.reshape(5, 4))


def test_flatten_with_axis_just_past_end_axis_inserts_an_axis_of_one():
    # Caffe: count(axis, end_axis + 1) of an empty range is 1 (real Caffe accepts it)
    net = make_net(layer('Flatten', ['x'], ['y'], 'flatten_param { axis: 2 end_axis: 1 }'),
                   {'x': (2, 3, 4)})
    assert net.blobs['y'].shape == (2, 3, 1, 4)


@pytest.mark.parametrize('type_,param,msg', [
    ('Flatten', 'flatten_param { axis: 2 end_axis: 0 }', 'must not come after end_axis'),
    ('Flatten', 'flatten_param { axis: 5 }', 'out of range'),
    ('Reshape', 'reshape_param { shape { dim: -1 dim: -1 } }', 'more than one -1'),
    ('Reshape', 'reshape_param { shape { dim: 5 dim: 5 } }', 'has 25 elements'),
    ('Reshape', 'reshape_param { shape { dim: 5 dim: -1 } }', 'not divisible'),
    ('Reshape', 'reshape_param { shape { dim: 2 } axis: 1 num_axes: 4 }', 'beyond'),
    ('Reshape', 'reshape_param { shape { dim: 0 dim: 0 dim: 0 dim: 0 } }', 'no axis 3'),
    ('Reshape', 'reshape_param { shape { dim: 24 } axis: 4 }', 'axis 4 out of range'),
])
def test_flatten_reshape_errors(type_, param, msg):
    bad(type_, param, {'x': (2, 3, 4)}, msg)


@pytest.mark.parametrize('type_', ['Flatten', 'Reshape'])
def test_flatten_reshape_refuse_in_place(type_):
    bad(type_, 'reshape_param { shape { dim: -1 } }' if type_ == 'Reshape' else '',
        {'x': (2, 3)}, 'in-place', tops=('x',))


@pytest.mark.parametrize('param,shape', [
    ('shape { dim: 0 dim: -1 }', (2, 12)),
    ('shape { dim: -1 } axis: 1', (2, 12)),
    ('shape { dim: 2 dim: 2 } axis: -2 num_axes: 1', (2, 3, 2, 2)),
    ('shape { dim: 1 } axis: 0 num_axes: 0', (1, 2, 3, 4)),
    ('shape { dim: 1 } axis: -1 num_axes: 0', (2, 3, 4, 1)),
    ('shape { } axis: 1 num_axes: 0', (2, 3, 4)),
])
def test_reshape_shapes(param, shape):
    net = make_net(layer('Reshape', ['x'], ['y'], 'reshape_param { %s }' % param), {'x': (2, 3, 4)})
    x = rand(2, 3, 4)
    net.blobs['x'].data[...] = x
    net.forward()
    assert net.blobs['y'].shape == shape
    np.testing.assert_array_equal(net.blobs['y'].data.reshape(-1), x.reshape(-1))


# ---------------------------------------------------------------- Concat / Slice
def test_concat_legacy_concat_dim_and_backward():
    net = make_net(layer('Concat', ['a', 'b'], ['y'], 'concat_param { concat_dim: 0 }'),
                   {'a': (1, 2), 'b': (3, 2)})
    a, b = rand(1, 2), rand(3, 2, seed=1)
    net.blobs['a'].data[...] = a
    net.blobs['b'].data[...] = b
    net.forward()
    np.testing.assert_array_equal(net.blobs['y'].data, np.concatenate([a, b]))
    dy = rand(4, 2, seed=2)
    net.blobs['y'].diff[...] = dy
    net.backward()
    np.testing.assert_array_equal(net.blobs['a'].diff, dy[:1])
    np.testing.assert_array_equal(net.blobs['b'].diff, dy[1:])


def test_concat_single_bottom_aliases():
    net = make_net(layer('Concat', ['x'], ['y']), {'x': (2, 3)})
    net.blobs['x'].data[...] = 4
    net.forward()
    assert np.all(net.blobs['y'].data == 4)


@pytest.mark.parametrize('param,inputs,msg', [
    ('', {'a': (2, 3), 'b': (3, 3)}, 'same shape except at concat axis 1'),
    ('concat_param { axis: 0 }', {'a': (2, 3), 'b': (2, 3, 1)}, 'same number of axes'),
    ('concat_param { axis: 0 concat_dim: 0 }', {'a': (2, 3), 'b': (2, 3)}, 'not both'),
    ('concat_param { axis: 2 }', {'a': (2, 3), 'b': (2, 3)}, 'out of range'),
])
def test_concat_errors(param, inputs, msg):
    bad('Concat', param, inputs, msg, bottoms=('a', 'b'))


def test_slice_legacy_slice_dim_and_points():
    net = make_net(layer('Slice', ['x'], ['a', 'b'], 'slice_param { slice_dim: 0 slice_point: 1 }'),
                   {'x': (3, 2)})
    x = rand(3, 2)
    net.blobs['x'].data[...] = x
    net.forward()
    np.testing.assert_array_equal(net.blobs['a'].data, x[:1])
    np.testing.assert_array_equal(net.blobs['b'].data, x[1:])


@pytest.mark.parametrize('param,tops,msg', [
    ('slice_param { axis: 1 }', ('a', 'b'), 'evenly divide'),
    ('slice_param { slice_point: 1 }', ('a', 'b', 'c'), '1 slice_point values given for 3 tops'),
    ('slice_param { slice_point: 2 slice_point: 1 }', ('a', 'b', 'c'), 'increasing'),
    ('slice_param { slice_point: 9 }', ('a', 'b'), 'beyond the slice axis'),
    ('slice_param { axis: 1 slice_dim: 1 }', ('a', 'b'), 'not both'),
])
def test_slice_errors(param, tops, msg):
    bad('Slice', param, {'x': (2, 3)}, msg, tops=tops)


# ---------------------------------------------------------------- Eltwise
def eltwise(op, n=3, extra=''):
    names = ['a', 'b', 'c'][:n]
    net = make_net(layer('Eltwise', names, ['y'], 'eltwise_param { operation: %s %s }' % (op, extra)),
                   {k: (4,) for k in names})
    return net, names


def test_eltwise_max_tie_rule_and_routing():
    net, names = eltwise('MAX')
    net.blobs['a'].data[...] = [1, 2, 3, 5]
    net.blobs['b'].data[...] = [1, 1, 3, 4]
    net.blobs['c'].data[...] = [1, 2, 3, 6]
    net.forward()
    np.testing.assert_array_equal(net.blobs['y'].data, [1, 2, 3, 6])
    net.blobs['y'].diff[...] = [10, 20, 30, 40]
    net.backward()
    # element 0: a == b == c -> b wins (bottom 1 wins its tie with 0; c not strictly greater)
    # element 1: a > b, c == a -> a;  element 2: all equal -> b;  element 3: c
    np.testing.assert_array_equal(net.blobs['a'].diff, [0, 20, 0, 0])
    np.testing.assert_array_equal(net.blobs['b'].diff, [10, 0, 30, 0])
    np.testing.assert_array_equal(net.blobs['c'].diff, [0, 0, 0, 40])


@pytest.mark.parametrize('stable', ['true', 'false'])
def test_eltwise_prod_gradient(stable):
    net, names = eltwise('PROD', extra='stable_prod_grad: %s' % stable)
    vals = [rand(4, seed=i) for i in range(3)]
    for k, v in zip(names, vals):
        net.blobs[k].data[...] = v
    net.forward()
    np.testing.assert_allclose(net.blobs['y'].data, vals[0] * vals[1] * vals[2], rtol=1e-6)
    net.blobs['y'].diff[...] = 1
    net.backward()
    np.testing.assert_allclose(net.blobs['a'].diff, vals[1] * vals[2], rtol=1e-5)
    np.testing.assert_allclose(net.blobs['c'].diff, vals[0] * vals[1], rtol=1e-5)


def test_eltwise_prod_stable_gradient_with_a_zero_input():
    net, names = eltwise('PROD', n=2)
    net.blobs['a'].data[...] = [0, 1, 2, 3]
    net.blobs['b'].data[...] = [5, 6, 7, 8]
    net.forward()
    net.blobs['y'].diff[...] = 1
    net.backward()
    np.testing.assert_array_equal(net.blobs['a'].diff, [5, 6, 7, 8])


@pytest.mark.parametrize('param,inputs,msg', [
    ('eltwise_param { coeff: 1 }', {'a': (2,), 'b': (2,)}, 'one coeff per bottom'),
    ('eltwise_param { operation: PROD coeff: 1 coeff: 2 }', {'a': (2,), 'b': (2,)}, 'only allowed'),
    ('', {'a': (2,), 'b': (3,)}, 'same shape'),
])
def test_eltwise_errors(param, inputs, msg):
    bad('Eltwise', param, inputs, msg, bottoms=tuple(inputs))


def test_eltwise_needs_two_bottoms():
    with pytest.raises(MinicaffeError, match='at least 2 bottom'):
        make_net(layer('Eltwise', ['a'], ['y']), {'a': (2,)})


# ---------------------------------------------------------------- Tile / Reduction
def test_tile_values_and_backward():
    net = make_net(layer('Tile', ['x'], ['y'], 'tile_param { axis: -1 tiles: 3 }'), {'x': (2, 2)})
    x = rand(2, 2)
    net.blobs['x'].data[...] = x
    net.forward()
    np.testing.assert_array_equal(net.blobs['y'].data, np.tile(x, (1, 3)))
    dy = rand(2, 6, seed=1)
    net.blobs['y'].diff[...] = dy
    net.backward()
    np.testing.assert_allclose(net.blobs['x'].diff, dy[:, :2] + dy[:, 2:4] + dy[:, 4:], rtol=1e-6)


@pytest.mark.parametrize('param,msg', [
    ('tile_param { axis: 1 }', 'tiles'), ('tile_param { tiles: 0 }', 'positive')])
def test_tile_errors(param, msg):
    bad('Tile', param, {'x': (2, 3)}, msg)


@pytest.mark.parametrize('op,f,df', [
    ('SUM', lambda x: x.sum(), lambda x: np.ones_like(x)),
    ('MEAN', lambda x: x.mean(), lambda x: np.full_like(x, 1.0 / x.size)),
    ('ASUM', lambda x: np.abs(x).sum(), np.sign),
    ('SUMSQ', lambda x: (x * x).sum(), lambda x: 2 * x),
])
def test_reduction_axis0_gives_a_scalar(op, f, df):
    net = make_net(layer('Reduction', ['x'], ['y'], 'reduction_param { operation: %s coeff: -2 }' % op),
                   {'x': (2, 3)})
    x = rand(2, 3)
    net.blobs['x'].data[...] = x
    net.forward()
    assert net.blobs['y'].shape == ()
    np.testing.assert_allclose(net.blobs['y'].data, -2 * f(x.astype(np.float64)), rtol=1e-6)
    net.blobs['y'].diff[...] = 0.5
    net.backward()
    np.testing.assert_allclose(net.blobs['x'].diff, -1 * df(x), rtol=1e-6)


# ---------------------------------------------------------------- ArgMax
def test_argmax_ties_go_to_the_higher_index():
    net = make_net(layer('ArgMax', ['x'], ['y'], 'argmax_param { top_k: 3 out_max_val: true }'),
                   {'x': (2, 5)})
    net.blobs['x'].data[...] = [[1, 3, 3, 0, 3], [2, 2, 2, 2, 2]]
    net.forward()
    y = net.blobs['y'].data
    assert y.shape == (2, 2, 3)
    np.testing.assert_array_equal(y[0], [[4, 2, 1], [3, 3, 3]])
    np.testing.assert_array_equal(y[1], [[4, 3, 2], [2, 2, 2]])


def test_argmax_along_an_axis_with_values():
    net = make_net(layer('ArgMax', ['x'], ['y'], 'argmax_param { axis: -1 top_k: 2 out_max_val: true }'),
                   {'x': (2, 3, 4)})
    x = rand(2, 3, 4)
    net.blobs['x'].data[...] = x
    net.forward()
    np.testing.assert_array_equal(net.blobs['y'].data, -np.sort(-x, axis=-1)[..., :2])


def test_argmax_four_axis_bottom_without_axis():
    net = make_net(layer('ArgMax', ['x'], ['y']), {'x': (2, 3, 2, 2)})
    x = rand(2, 3, 2, 2)
    net.blobs['x'].data[...] = x
    net.forward()
    assert net.blobs['y'].shape == (2, 1, 1, 1)
    np.testing.assert_array_equal(net.blobs['y'].data.reshape(2), x.reshape(2, -1).argmax(axis=1))


@pytest.mark.parametrize('param,msg', [
    ('argmax_param { top_k: 7 }', 'must not exceed the 6 values'),
    ('argmax_param { axis: 1 top_k: 4 }', 'must not exceed the size 3'),
    ('argmax_param { top_k: 0 }', 'at least 1'),
])
def test_argmax_errors(param, msg):
    bad('ArgMax', param, {'x': (2, 3, 2)}, msg)


def test_argmax_has_no_backward():
    net = make_net(layer('ArgMax', ['x'], ['y']), {'x': (2, 3)})
    net.forward()
    with pytest.raises(MinicaffeError, match='cannot backpropagate'):
        net.backward()


# ---------------------------------------------------------------- Filter / BatchReindex
def test_filter_selects_and_routes_gradients():
    net = make_net(layer('Filter', ['x', 'z', 's'], ['y', 'w']),
                   {'x': (4, 2), 'z': (4, 1, 3), 's': (4, 1)})
    assert net.blobs['y'].shape == (4, 2)        # Caffe: all items at setup
    x, z = rand(4, 2), rand(4, 1, 3, seed=1)
    net.blobs['x'].data[...] = x
    net.blobs['z'].data[...] = z
    net.blobs['s'].data[...] = [[0], [2], [0], [-1]]
    net.forward()
    np.testing.assert_array_equal(net.blobs['y'].data, x[[1, 3]])
    np.testing.assert_array_equal(net.blobs['w'].data, z[[1, 3]])
    net.blobs['y'].diff[...] = 1
    net.blobs['w'].diff[...] = 2
    net.blobs['x'].diff[...] = 9
    net.backward()
    np.testing.assert_array_equal(net.blobs['x'].diff, [[0, 0], [1, 1], [0, 0], [1, 1]])
    assert np.all(net.blobs['z'].diff[[0, 2]] == 0) and np.all(net.blobs['z'].diff[[1, 3]] == 2)


def test_filter_nothing_selected():
    net = make_net(layer('Filter', ['x', 's'], ['y']), {'x': (3, 2), 's': (3,)})
    net.forward()
    assert net.blobs['y'].shape == (0, 2)
    net.blobs['x'].diff[...] = 5
    net.backward()
    assert np.all(net.blobs['x'].diff == 0)


@pytest.mark.parametrize('inputs,tops,msg', [
    ({'x': (3, 2), 's': (3, 2)}, ('y',), 'must be 1 except the first'),
    ({'x': (3, 2), 's': (4,)}, ('y',), 'same first dimension'),
    ({'x': (3, 2), 's': (3,)}, ('y', 'w'), 'one top per filtered bottom'),
])
def test_filter_errors(inputs, tops, msg):
    bad('Filter', '', inputs, msg, bottoms=tuple(inputs), tops=tops)


def test_batch_reindex_accumulates_repeated_indices():
    net = make_net(layer('BatchReindex', ['x', 'i'], ['y']), {'x': (3, 2), 'i': (4,)})
    x = rand(3, 2)
    net.blobs['x'].data[...] = x
    net.blobs['i'].data[...] = [2, 0, 2, 2]
    net.forward()
    np.testing.assert_array_equal(net.blobs['y'].data, x[[2, 0, 2, 2]])
    net.blobs['y'].diff[...] = [[1, 1], [2, 2], [3, 3], [4, 4]]
    net.backward()
    np.testing.assert_array_equal(net.blobs['x'].diff, [[2, 2], [0, 0], [8, 8]])


def test_batch_reindex_index_out_of_range():
    net = make_net(layer('BatchReindex', ['x', 'i'], ['y']), {'x': (3, 2), 'i': (2,)})
    net.blobs['i'].data[...] = [0, 3]
    with pytest.raises(MinicaffeError, match=r'\[0, 3\)'):
        net.forward()


def test_batch_reindex_index_must_be_1d():
    bad('BatchReindex', '', {'x': (3, 2), 'i': (2, 1)}, 'exactly 1 axis', bottoms=('x', 'i'))


def test_index_inputs_refuse_force_backward():
    net = make_net(layer('Filter', ['x', 's'], ['y']), {'x': (3, 2), 's': (3,)})
    assert net.bottom_need_backward[1] == [True, False]
    net = make_net(layer('BatchReindex', ['x', 'i'], ['y']), {'x': (3, 2), 'i': (2,)})
    assert net.bottom_need_backward[1] == [True, False]


# ---------------------------------------------------------------- Parameter
def test_parameter_layer_exposes_its_blob():
    net = make_net(layer('Parameter', [], ['p'], 'parameter_param { shape { dim: 2 dim: 3 } }') +
                   layer('Eltwise', ['p', 'x'], ['y'], 'eltwise_param { operation: PROD }')
                   .replace('name: "l"', 'name: "m"'), {'x': (2, 3)})
    w = net.params['l'][0]
    assert w.shape == (2, 3)
    w.data[...] = rand(2, 3)
    x = rand(2, 3, seed=1)
    net.blobs['x'].data[...] = x
    net.forward()
    np.testing.assert_array_equal(net.blobs['p'].data, w.data)
    np.testing.assert_allclose(net.blobs['y'].data, w.data * x, rtol=1e-6)
    net.blobs['y'].diff[...] = 1
    net.backward()
    np.testing.assert_allclose(w.diff, x, rtol=1e-6)


def test_flatten_hands_its_diff_to_the_bottom_as_caffe_does():
    """Caffe's Flatten::Backward is bottom->ShareDiff(top): an ordinary bottom then reads
    the gradient; a bottom that was itself a Reshape view of another blob is cut loose
    from it, so that blob's diff never receives the gradient (real Caffe, found by
    tools/caffe_diff.py: no gradient reaches the layers below Reshape -> Flatten)."""
    from minicaffe.protoio import parse_text, pb
    import minicaffe as caffe

    def net(middle):
        text = ('force_backward: true\n'
                'layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 2'
                ' dim: 2 } } }\n'
                'layer { name: "s" type: "Scale" bottom: "x" top: "a" scale_param { filler {'
                ' type: "constant" value: 2 } } }\n%s\n'
                'layer { name: "f" type: "Flatten" bottom: "%s" top: "f" }\n'
                'layer { name: "p" type: "Power" bottom: "f" top: "p" power_param { scale: 3 } }'
                % middle)
        return caffe.Net(net_param=parse_text(text, pb.NetParameter()), phase=caffe.TRAIN)

    plain = net(('', 'a'))
    plain.blobs['x'].data[...] = 1
    plain.forward()
    plain.blobs['p'].diff[...] = 1
    plain.backward()
    assert (plain.blobs['a'].diff == 3).all() and (plain.blobs['x'].diff == 6).all()

    cut = net(('layer { name: "r" type: "Reshape" bottom: "a" top: "r" reshape_param {'
               ' shape { dim: 0 dim: -1 } } }', 'r'))
    cut.blobs['x'].data[...] = 1
    for _ in range(2):                          # every pass, not only the first
        cut.forward()
        cut.blobs['p'].diff[...] = 1
        cut.backward()
        assert (cut.blobs['r'].diff == 3).all()
        assert (cut.blobs['a'].diff == 0).all() and (cut.blobs['x'].diff == 0).all()
        assert (cut.params['s'][0].diff == 0).all()
