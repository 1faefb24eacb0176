"""Behaviour of LSTM, RNN and LSTMUnit beyond the conformance cases: the fused
layers against a plain float64 transcription of Caffe's unrolled net, hidden
state carried across forwards, expose_hidden's data-only sharing, N changes,
propagate_down rules and parameter errors."""
import numpy as np
import pytest

import minicaffe as caffe
from minicaffe import protoio
from minicaffe.errors import MinicaffeError
from minicaffe.protoio import pb


def make_net(layers, inputs, force_backward=True):
    tops = ''.join('top: "%s" ' % n for n in inputs)
    shapes = ''.join('shape { %s } ' % ' '.join('dim: %d' % d for d in s) for s in inputs.values())
    text = ('%s layer { name: "input" type: "Input" %s input_param { %s } }\n%s'
            % ('force_backward: true' if force_backward else '', tops, shapes, layers))
    return caffe.Net(net_param=protoio.parse_text(text, pb.NetParameter()), phase=caffe.TEST)


def rlayer(type_, bottoms, tops, num_output=3, extra='', name='rec', param=''):
    return ('layer { name: "%s" type: "%s" %s %s %s recurrent_param { num_output: %d %s'
            ' weight_filler { type: "uniform" min: -0.5 max: 0.5 }'
            ' bias_filler { type: "uniform" min: -0.2 max: 0.2 } } }'
            % (name, type_, ''.join('bottom: "%s" ' % b for b in bottoms),
               ''.join('top: "%s" ' % t for t in tops), param, num_output, extra))


def rand(*shape, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, size=shape).astype(np.float32)


def sig(x):
    return 1.0 / (1.0 + np.exp(-x))


# ------------------------------------------------ float64 transcription of Caffe's unrolled nets
def ref_lstm(x, cont, params, static=None, h0=None, c0=None, dtop=None):
    """Caffe's unrolled LSTM net (Slice, InnerProduct, Scale, Eltwise, LSTMUnit, Concat),
    one timestep at a time in float64.  Returns h, h_T, c_T and (with dtop) the diffs
    of x, x_static and every parameter."""
    x = x.astype(np.float64).reshape(x.shape[0], x.shape[1], -1)
    T, N = cont.shape
    W_xc, b_c = params[0].astype(np.float64), params[1].astype(np.float64)
    W_s = params[2].astype(np.float64) if static is not None else None
    W_hc = params[-1].astype(np.float64)
    H = W_hc.shape[1]
    h = np.zeros((N, H)) if h0 is None else h0.reshape(N, H).astype(np.float64)
    c = np.zeros((N, H)) if c0 is None else c0.reshape(N, H).astype(np.float64)
    xs = None if static is None else static.reshape(N, -1).astype(np.float64)
    hs, cs, hcs, acts = [h], [c], [], []
    for t in range(T):
        hc = cont[t][:, None] * h
        a = x[t] @ W_xc.T + b_c + hc @ W_hc.T
        if xs is not None:
            a = a + xs @ W_s.T
        i, f, o, g = sig(a[:, :H]), sig(a[:, H:2 * H]), sig(a[:, 2 * H:3 * H]), np.tanh(a[:, 3 * H:])
        f = cont[t][:, None] * f
        c = f * c + i * g
        h = o * np.tanh(c)
        hs.append(h), cs.append(c), hcs.append(hc), acts.append((i, f, o, g))
    out = np.stack(hs[1:])
    if dtop is None:
        return out, hs[-1], cs[-1]
    dtop = dtop.astype(np.float64)
    dW_xc, db, dW_hc = np.zeros_like(W_xc), np.zeros_like(b_c), np.zeros_like(W_hc)
    dx = np.zeros_like(x)
    dAs = []
    dh_next, dc = np.zeros((N, H)), np.zeros((N, H))
    for t in range(T - 1, -1, -1):
        i, f, o, g = acts[t]
        dh = dtop[t] + dh_next
        tc = np.tanh(cs[t + 1])
        dc = dc + dh * o * (1 - tc * tc)
        da = np.concatenate([dc * g * i * (1 - i), dc * cs[t] * f * (1 - f),
                             dh * tc * o * (1 - o), dc * i * (1 - g * g)], axis=1)
        dc = dc * f
        dh_next = cont[t][:, None] * (da @ W_hc)
        dW_xc += da.T @ x[t]
        db += da.sum(0)
        dW_hc += da.T @ hcs[t]
        dx[t] = da @ W_xc
        dAs.append(da)
    grads = {'x': dx, 'params': [dW_xc, db]}
    if xs is not None:
        das = np.sum(dAs, axis=0)
        grads['params'].append(das.T @ xs)
        grads['xs'] = das @ W_s
    grads['params'].append(dW_hc)
    return out, hs[-1], cs[-1], grads


def ref_rnn(x, cont, params, static=None, h0=None, dtop=None):
    x = x.astype(np.float64).reshape(x.shape[0], x.shape[1], -1)
    T, N = cont.shape
    p = [q.astype(np.float64) for q in params]
    s = 3 if static is not None else 2
    W_xh, b_h, W_hh, W_ho, b_o = p[0], p[1], p[s], p[s + 1], p[s + 2]
    H = W_hh.shape[0]
    xs = None if static is None else static.reshape(N, -1).astype(np.float64)
    h = np.zeros((N, H)) if h0 is None else h0.reshape(N, H).astype(np.float64)
    hs, hcs, os_ = [h], [], []
    for t in range(T):
        hc = cont[t][:, None] * h
        a = x[t] @ W_xh.T + b_h + hc @ W_hh.T
        if xs is not None:
            a = a + xs @ p[2].T
        h = np.tanh(a)
        hs.append(h), hcs.append(hc), os_.append(np.tanh(h @ W_ho.T + b_o))
    out = np.stack(os_)
    if dtop is None:
        return out, hs[-1]
    g = [np.zeros_like(q) for q in p]
    dx, das, dh_next = np.zeros_like(x), np.zeros((N, H)), np.zeros((N, H))
    for t in range(T - 1, -1, -1):
        dz = dtop[t] * (1 - os_[t] ** 2)
        g[s + 1] += dz.T @ hs[t + 1]
        g[s + 2] += dz.sum(0)
        da = (dz @ W_ho + dh_next) * (1 - hs[t + 1] ** 2)
        dh_next = cont[t][:, None] * (da @ W_hh)
        g[0] += da.T @ x[t]
        g[1] += da.sum(0)
        g[s] += da.T @ hcs[t]
        dx[t] = da @ W_xh
        das += da
    grads = {'x': dx, 'params': g}
    if xs is not None:
        g[2] += das.T @ xs
        grads['xs'] = das @ p[2]
    return out, hs[-1], grads


def close(a, b, tol=2e-5):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64).reshape(np.shape(a)),
                               rtol=tol, atol=tol)


CONT = np.array([[0, 0, 0], [1, 1, 0], [1, 0, 1], [1, 1, 1]], np.float32)


def run(net, inputs, dtop=None):
    for k, v in inputs.items():
        net.blobs[k].data[...] = v
    net.forward()
    if dtop is not None:
        for k, v in dtop.items():
            net.blobs[k].diff[...] = v
        net.backward()


# ------------------------------------------------------------------ LSTM vs the transcription
@pytest.mark.parametrize('static', [False, True])
def test_lstm_matches_unrolled_net(static):
    T, N = CONT.shape
    inputs = {'x': rand(T, N, 2, 3, seed=1), 'cont': CONT}
    bottoms = ['x', 'cont']
    if static:
        inputs['xs'] = rand(N, 5, seed=2)
        bottoms.append('xs')
    net = make_net(rlayer('LSTM', bottoms, ['h'], num_output=4),
                   {k: v.shape for k, v in inputs.items()})
    params = [b.data.copy() for b in net.params['rec']]
    assert [p.shape for p in params] == ([(16, 6), (16,)] + ([(16, 5)] if static else []) + [(16, 4)])
    dtop = rand(T, N, 4, seed=3)
    run(net, inputs, {'h': dtop})
    out, _, _, g = ref_lstm(inputs['x'], CONT, params, static=inputs.get('xs'), dtop=dtop)
    close(net.blobs['h'].data, out)
    close(net.blobs['x'].diff, g['x'])
    for blob, want in zip(net.params['rec'], g['params']):
        close(blob.diff, want)
    if static:
        close(net.blobs['xs'].diff, g['xs'])
    assert np.all(net.blobs['cont'].diff == 0)


def test_lstm_non_binary_cont_uses_caffes_forget_gate_derivative():
    # f = cont * sigmoid(a_f) and Caffe's LSTMUnit backward uses f * (1 - f).
    cont = np.array([[0.0, 0.5], [0.25, 1.0], [2.0, 0.75]], np.float32)
    inputs = {'x': rand(3, 2, 3, seed=4), 'cont': cont}
    net = make_net(rlayer('LSTM', ['x', 'cont'], ['h']), {k: v.shape for k, v in inputs.items()})
    params = [b.data.copy() for b in net.params['rec']]
    dtop = rand(3, 2, 3, seed=5)
    run(net, inputs, {'h': dtop})
    out, _, _, g = ref_lstm(inputs['x'], cont, params, dtop=dtop)
    close(net.blobs['h'].data, out)
    close(net.blobs['x'].diff, g['x'])
    for blob, want in zip(net.params['rec'], g['params']):
        close(blob.diff, want)


@pytest.mark.parametrize('static', [False, True])
def test_rnn_matches_unrolled_net(static):
    T, N = CONT.shape
    inputs = {'x': rand(T, N, 3, seed=6), 'cont': CONT}
    bottoms = ['x', 'cont']
    if static:
        inputs['xs'] = rand(N, 2, 2, seed=7)
        bottoms.append('xs')
    net = make_net(rlayer('RNN', bottoms, ['o'], num_output=5),
                   {k: v.shape for k, v in inputs.items()})
    params = [b.data.copy() for b in net.params['rec']]
    assert [p.shape for p in params] == ([(5, 3), (5,)] + ([(5, 4)] if static else [])
                                         + [(5, 5), (5, 5), (5,)])
    dtop = rand(T, N, 5, seed=8)
    run(net, inputs, {'o': dtop})
    out, _, g = ref_rnn(inputs['x'], CONT, params, static=inputs.get('xs'), dtop=dtop)
    close(net.blobs['o'].data, out)
    close(net.blobs['x'].diff, g['x'])
    for blob, want in zip(net.params['rec'], g['params']):
        close(blob.diff, want)
    if static:
        close(net.blobs['xs'].diff, g['xs'])


@pytest.mark.parametrize('type_', ['LSTM', 'RNN'])
def test_param_diffs_accumulate(type_):
    inputs = {'x': rand(4, 3, 2, seed=9), 'cont': CONT}
    net = make_net(rlayer(type_, ['x', 'cont'], ['y']), {k: v.shape for k, v in inputs.items()})
    run(net, inputs, {'y': rand(4, 3, 3, seed=10)})
    first = [b.diff.copy() for b in net.params['rec']]
    assert all(np.abs(d).max() > 0 for d in first)
    net.backward()
    for b, d in zip(net.params['rec'], first):
        close(b.diff, 2 * d)


def test_bias_filler_and_default_fillers():
    net = make_net('layer { name: "rec" type: "LSTM" bottom: "x" bottom: "cont" top: "h"'
                   ' recurrent_param { num_output: 2 bias_filler { type: "constant" value: 0.25 } } }',
                   {'x': (2, 1, 3), 'cont': (2, 1)})
    w, b, whc = (p.data for p in net.params['rec'])
    assert np.all(b == 0.25)
    assert np.all(w == 0) and np.all(whc == 0)   # default filler: constant 0


# ------------------------------------------------------------------ hidden state across forwards
@pytest.mark.parametrize('type_', ['LSTM', 'RNN'])
def test_one_step_at_a_time_equals_full_sequence(type_):
    # Caffe's LSTMLayerTest.TestForward: the state carries over between forwards.
    T, N = 4, 3
    x = rand(T, N, 2, seed=11)
    cont = np.ones((T, N), np.float32)
    cont[0] = 0
    full = make_net(rlayer(type_, ['x', 'cont'], ['y']), {'x': (T, N, 2), 'cont': (T, N)})
    run(full, {'x': x, 'cont': cont})
    step = make_net(rlayer(type_, ['x', 'cont'], ['y']), {'x': (1, N, 2), 'cont': (1, N)})
    for a, b in zip(step.params['rec'], full.params['rec']):
        a.data[...] = b.data
    for t in range(T):
        run(step, {'x': x[t:t + 1], 'cont': cont[t:t + 1]})
        close(step.blobs['y'].data[0], full.blobs['y'].data[t], 1e-5)
    # cont = 0 at every step: every step restarts from zero state
    for t in range(T):
        run(step, {'x': x[t:t + 1], 'cont': np.zeros((1, N), np.float32)})
        ref = (ref_lstm(x[t:t + 1], np.zeros((1, N), np.float32),
                        [p.data for p in step.params['rec']])[0] if type_ == 'LSTM' else
               ref_rnn(x[t:t + 1], np.zeros((1, N), np.float32), [p.data for p in step.params['rec']])[0])
        close(step.blobs['y'].data, ref)


def test_state_survives_in_place_layer_on_the_output():
    # A later in-place layer rewrites the top; the carried state and backward use the
    # LSTM's own h_t (Caffe's unrolled blobs), not the rewritten top.
    layers = (rlayer('LSTM', ['x', 'cont'], ['h']) +
              ' layer { name: "scale" type: "Power" bottom: "h" top: "h" power_param { scale: 3 } }')
    inputs = {'x': rand(2, 2, 3, seed=12), 'cont': np.array([[0, 0], [1, 1]], np.float32)}
    net = make_net(layers, {k: v.shape for k, v in inputs.items()})
    params = [b.data.copy() for b in net.params['rec']]
    dtop = rand(2, 2, 3, seed=13)
    run(net, inputs, {'h': dtop})
    out, hT, cT, g = ref_lstm(inputs['x'], inputs['cont'], params, dtop=3 * dtop)
    close(net.blobs['h'].data, 3 * out)
    for blob, want in zip(net.params['rec'], g['params']):
        close(blob.diff, want)
    cont2 = np.ones((2, 2), np.float32)
    run(net, {'cont': cont2})
    out2 = ref_lstm(inputs['x'], cont2, params, h0=hT, c0=cT)[0]
    close(net.blobs['h'].data, 3 * out2)


def test_changing_batch_size_follows_caffes_blob_memory():
    # N may change (T may not).  Caffe's h_T/c_T blobs keep their memory when the count
    # shrinks (the first N*H values carry on) and start from zeros when it grows.
    H = 3
    x = rand(2, 4, 2, seed=14)
    net = make_net(rlayer('LSTM', ['x', 'cont'], ['h']), {'x': (2, 4, 2), 'cont': (2, 4)})
    params = [b.data.copy() for b in net.params['rec']]
    ones4 = np.ones((2, 4), np.float32)
    run(net, {'x': x, 'cont': ones4})
    _, hT, cT = ref_lstm(x, ones4, params)
    for name in ('x', 'cont'):
        net.blobs[name].reshape((2, 2) + net.blobs[name].shape[2:])
    ones2 = np.ones((2, 2), np.float32)
    run(net, {'x': x[:, :2], 'cont': ones2})
    assert net.blobs['h'].shape == (2, 2, H)
    close(net.blobs['h'].data, ref_lstm(x[:, :2], ones2, params, h0=hT[:2], c0=cT[:2])[0])
    for name in ('x', 'cont'):
        net.blobs[name].reshape((2, 6) + net.blobs[name].shape[2:])
    x6 = rand(2, 6, 2, seed=15)
    ones6 = np.ones((2, 6), np.float32)
    run(net, {'x': x6, 'cont': ones6})
    close(net.blobs['h'].data, ref_lstm(x6, ones6, params)[0])


def test_reset_clears_the_state():
    net = make_net(rlayer('RNN', ['x', 'cont'], ['o']), {'x': (1, 2, 2), 'cont': (1, 2)})
    x = rand(1, 2, 2, seed=16)
    run(net, {'x': x, 'cont': np.ones((1, 2), np.float32)})
    first = net.blobs['o'].data.copy()
    run(net, {'x': x})
    assert not np.allclose(net.blobs['o'].data, first)
    net.layer_dict['rec'].reset()
    run(net, {'x': x})
    close(net.blobs['o'].data, first, 1e-6)


# ------------------------------------------------------------------ expose_hidden
def test_lstm_expose_hidden_shares_only_data():
    T, N, H = 3, 2, 3
    inputs = {'x': rand(T, N, 4, seed=17), 'cont': np.ones((T, N), np.float32),
              'h0': rand(1, N, H, seed=18), 'c0': rand(1, N, H, seed=19)}
    net = make_net(rlayer('LSTM', ['x', 'cont', 'h0', 'c0'], ['h', 'hT', 'cT'], extra='expose_hidden: true'),
                   {k: v.shape for k, v in inputs.items()})
    params = [b.data.copy() for b in net.params['rec']]
    for name in ('h0', 'c0'):
        net.blobs[name].diff[...] = 7.0          # Caffe never writes these diffs
    dtop = rand(T, N, H, seed=20)
    run(net, inputs, {'h': dtop, 'hT': rand(1, N, H, seed=21), 'cT': rand(1, N, H, seed=22)})
    out, hT, cT, g = ref_lstm(inputs['x'], inputs['cont'], params, h0=inputs['h0'],
                              c0=inputs['c0'], dtop=dtop)   # h_T / c_T diffs ignored
    close(net.blobs['h'].data, out)
    close(net.blobs['hT'].data, hT)
    close(net.blobs['cT'].data, cT)
    close(net.blobs['x'].diff, g['x'])
    for blob, want in zip(net.params['rec'], g['params']):
        close(blob.diff, want)
    assert np.all(net.blobs['h0'].diff == 7.0) and np.all(net.blobs['c0'].diff == 7.0)
    # no state is carried: the same inputs give the same outputs again
    run(net, {})
    close(net.blobs['h'].data, out)


def test_rnn_expose_hidden_with_static_input():
    T, N, H = 2, 3, 4
    inputs = {'x': rand(T, N, 2, seed=23), 'cont': np.ones((T, N), np.float32),
              'xs': rand(N, 3, seed=24), 'h0': rand(1, N, H, seed=25)}
    net = make_net(rlayer('RNN', ['x', 'cont', 'xs', 'h0'], ['o', 'hT'], num_output=H,
                          extra='expose_hidden: true'), {k: v.shape for k, v in inputs.items()})
    params = [b.data.copy() for b in net.params['rec']]
    assert [p.shape for p in params] == [(4, 2), (4,), (4, 3), (4, 4), (4, 4), (4,)]
    dtop = rand(T, N, H, seed=26)
    run(net, inputs, {'o': dtop, 'hT': np.ones((1, N, H), np.float32)})
    out, hT, g = ref_rnn(inputs['x'], inputs['cont'], params, static=inputs['xs'],
                         h0=inputs['h0'], dtop=dtop)
    close(net.blobs['o'].data, out)
    close(net.blobs['hT'].data, hT)
    close(net.blobs['xs'].diff, g['xs'])
    for blob, want in zip(net.params['rec'], g['params']):
        close(blob.diff, want)
    assert np.all(net.blobs['h0'].diff == 0)


# ------------------------------------------------------------------ propagate_down / force_backward
def test_cont_never_gets_a_gradient_and_x_always_does():
    # force_backward: x gets its diff, cont (allow_force_backward False) does not.
    net = make_net(rlayer('LSTM', ['x', 'cont'], ['h']), {'x': (2, 2, 3), 'cont': (2, 2)})
    lid = list(net._layer_names).index('rec')
    assert net.bottom_need_backward[lid] == [True, False]
    # Without force_backward the unrolled net still writes x's diff and every param diff.
    net = make_net(rlayer('LSTM', ['x', 'cont'], ['h'], param='loss_weight: 1'),
                   {'x': (2, 2, 3), 'cont': (2, 2)}, force_backward=False)
    run(net, {'x': rand(2, 2, 3, seed=27), 'cont': np.array([[0, 0], [1, 1]], np.float32)}, {})
    assert np.abs(net.blobs['x'].diff).max() > 0
    assert all(np.abs(b.diff).max() > 0 for b in net.params['rec'])


def test_explicit_propagate_down_on_cont_is_refused():
    net = make_net(rlayer('LSTM', ['x', 'cont'], ['h'], param='propagate_down: true propagate_down: true loss_weight: 1'),
                   {'x': (2, 2, 3), 'cont': (2, 2)})
    run(net, {'x': rand(2, 2, 3)})
    with pytest.raises(MinicaffeError, match='sequence indicators'):
        net.backward()


def test_lstm_unit_layer_matches_formula_and_skips_cont():
    N, H = 3, 2
    c_prev, X = rand(1, N, H, seed=28), rand(1, N, 4 * H, seed=29)
    cont = np.array([[1, 0, 1]], np.float32)
    net = make_net('layer { name: "u" type: "LSTMUnit" bottom: "c_prev" bottom: "X" bottom: "cont"'
                   ' top: "c" top: "h" }', {'c_prev': (1, N, H), 'X': (1, N, 4 * H), 'cont': (1, N)})
    lid = list(net._layer_names).index('u')
    assert net.bottom_need_backward[lid] == [True, True, False]
    dc, dh = rand(1, N, H, seed=30), rand(1, N, H, seed=31)
    run(net, {'c_prev': c_prev, 'X': X, 'cont': cont}, {'c': dc, 'h': dh})
    a = X[0].astype(np.float64)
    i, f, o, g = sig(a[:, :H]), cont[0][:, None] * sig(a[:, H:2 * H]), sig(a[:, 2 * H:3 * H]), np.tanh(a[:, 3 * H:])
    c = f * c_prev[0] + i * g
    close(net.blobs['c'].data[0], c)
    close(net.blobs['h'].data[0], o * np.tanh(c))
    dct = dc[0] + dh[0] * o * (1 - np.tanh(c) ** 2)
    close(net.blobs['c_prev'].diff[0], dct * f)
    close(net.blobs['X'].diff[0], np.concatenate(
        [dct * g * i * (1 - i), dct * c_prev[0] * f * (1 - f), dh[0] * np.tanh(c) * o * (1 - o),
         dct * i * (1 - g * g)], axis=1))
    assert np.all(net.blobs['cont'].diff == 0)


# ------------------------------------------------------------------ errors
def bad(layers, inputs, msg):
    with pytest.raises(MinicaffeError, match=msg) as e:
        make_net(layers, inputs)
    return str(e.value)


@pytest.mark.parametrize('type_', ['LSTM', 'RNN'])
def test_parameter_errors(type_):
    shapes = {'x': (2, 3, 4), 'cont': (2, 3)}
    assert 'layer "rec"' in bad(rlayer(type_, ['x', 'cont'], ['y'], num_output=0), shapes,
                                'num_output must be positive')
    bad(rlayer(type_, ['x', 'cont'], ['y']), {'x': (2, 3, 4), 'cont': (2, 4)}, r'cont\) shape')
    bad(rlayer(type_, ['x', 'cont'], ['y']), {'x': (2, 3, 4), 'cont': (6,)}, 'exactly 2 axes')
    bad(rlayer(type_, ['x', 'cont'], ['y']), {'x': (6,), 'cont': (2, 3)}, 'at least 2 axes')
    bad(rlayer(type_, ['x', 'cont', 'xs'], ['y']), dict(shapes, xs=(4, 2)), 'static input')
    bad(rlayer(type_, ['x', 'cont'], ['y', 'z']), shapes, 'exactly 1 top')
    bad(rlayer(type_, ['x', 'cont'], ['y', 'hT'] + (['cT'] if type_ == 'LSTM' else []),
               extra='expose_hidden: true'), shapes, 'at least')
    n = 2 if type_ == 'LSTM' else 1
    bad(rlayer(type_, ['x', 'cont'] + ['s%d' % i for i in range(n)], ['y'] + ['t%d' % i for i in range(n)],
               extra='expose_hidden: true'), dict(shapes, **{'s%d' % i: (1, 3, 5) for i in range(n)}),
        'hidden state input shape')


def test_timesteps_may_not_change():
    net = make_net(rlayer('LSTM', ['x', 'cont'], ['h']), {'x': (2, 3, 4), 'cont': (2, 3)})
    net.blobs['x'].reshape(3, 3, 4)
    net.blobs['cont'].reshape(3, 3)
    with pytest.raises(MinicaffeError, match='number of timesteps changed'):
        net.forward()


def test_input_size_may_not_change():
    net = make_net(rlayer('LSTM', ['x', 'cont'], ['h']), {'x': (2, 3, 4), 'cont': (2, 3)})
    net.blobs['x'].reshape(2, 3, 5)
    with pytest.raises(MinicaffeError, match='input size incompatible'):
        net.forward()


def test_lstm_unit_shape_errors():
    unit = ('layer { name: "u" type: "LSTMUnit" bottom: "c" bottom: "X" bottom: "cont"'
            ' top: "c1" top: "h1" }')
    bad(unit, {'c': (1, 3, 2), 'X': (1, 3, 7), 'cont': (1, 3)}, '4\\*H = 8')
    bad(unit, {'c': (1, 3, 2), 'X': (1, 3, 8), 'cont': (3,)}, 'bottom\\[2\\] \\(cont\\)')
    bad(unit, {'c': (2, 3, 2), 'X': (1, 3, 8), 'cont': (1, 3)}, 'bottom\\[0\\] \\(c_prev\\)')
