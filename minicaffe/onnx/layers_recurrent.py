"""ONNX forms of Caffe's LSTM, RNN and LSTMUnit.

The recurrence is an ONNX Scan over the T timesteps with Caffe's exact cell,
so sequence continuation (`cont`), the static input and exposed hidden state
work as in Caffe (ONNX's own LSTM op has neither cont resets nor Caffe's gate
order i, f, o, g):

    LSTM  a_t = W_hc (cont_t h_{t-1}) + W_xc x_t + b_c [+ W_xc_static x_static]
          i, f, o = sigmoid(a_i, a_f, a_o), f *= cont_t, g = tanh(a_g)
          c_t = f c_{t-1} + i g,  h_t = o tanh(c_t)
    RNN   h_t = tanh(W_hh (cont_t h_{t-1}) + W_xh x_t + b_h [+ W_xh_static x_static])
          o_t = tanh(W_ho h_t + b_o)

The input transforms of all timesteps are one Gemm before the Scan.  h_0 (and
c_0) are zeros, or the bottoms with expose_hidden.  The state a minicaffe net
carries from one forward to the next is not part of the model: the export
starts every forward from zeros (Caffe's first forward).
"""
import numpy as np
from onnx import helper

from minicaffe.onnx.graph import GraphBuilder, value_info
from minicaffe.onnx.registry import converter


def _cell(b, a, c_prev, cont, H, hint):
    """Caffe's LSTMUnit on gate pre-activations a (N, 4H): returns (c, h)."""
    i, f, o, gg = b.split(a, [H] * 4, 1, hint + '_gates')
    i = b.node('Sigmoid', [i], hint + '_i')
    f = b.node('Mul', [b.node('Sigmoid', [f], hint + '_f_raw'), cont], hint + '_f')
    o = b.node('Sigmoid', [o], hint + '_o')
    gg = b.node('Tanh', [gg], hint + '_g')
    c = b.node('Add', [b.node('Mul', [f, c_prev], hint + '_fc'), b.node('Mul', [i, gg], hint + '_ig')],
               hint + '_c')
    h = b.node('Mul', [o, b.node('Tanh', [c], hint + '_tanh_c')], hint + '_h')
    return c, h


def _input_transform(ctx, W, bias, G):
    """(T, N, G): W x_t + b for every t, plus W_static x_static when given."""
    g, layer = ctx.g, ctx.layer
    T, N, D = layer.T, layer.N, layer.D
    x = g.reshape(ctx.bottoms[0], [T * N, D], ctx.hint('x_rows'))
    xw = g.node('Gemm', [x, ctx.param(W, 'W_x'), ctx.param(bias, 'b')], ctx.hint('xw_rows'), transB=1)
    xw = g.reshape(xw, [T, N, G], ctx.hint('xw'))
    if layer.static_input:
        xs = g.reshape(ctx.bottoms[2], [N, layer.Ds], ctx.hint('static_rows'))
        sw = g.node('MatMul', [xs, g.const(ctx.params[2].T, ctx.hint('W_static_T'))],
                    ctx.hint('static_w'))
        xw = g.node('Add', [xw, sw], ctx.hint('xw_static'))
    return xw


def _initial_states(ctx, count):
    g, layer = ctx.g, ctx.layer
    N, H = layer.N, layer.H
    if layer.expose_hidden:
        off = 2 + int(layer.static_input)
        return [g.reshape(ctx.bottoms[off + j], [N, H], ctx.hint('state0_%d' % j))
                for j in range(count)]
    return [g.const(np.zeros((N, H), np.float32), ctx.hint('zeros'))] * count


def _recurrence(ctx, G, W_h, step):
    """Scan over t of step(b, states, g_t, cont_t) -> new states (the first is
    also stacked as the output); g_t (N, G) are the input transforms."""
    g, layer = ctx.g, ctx.layer
    T, N, H = layer.T, layer.N, layer.H
    ctx.fixed_batch('a recurrent layer: axis 0 is time and the state has one row per stream')
    nstate = 2 if ctx.lp.type == 'LSTM' else 1
    xw = _input_transform(ctx, 0, 1, G)
    cont = g.unsqueeze(ctx.bottoms[1], [2], ctx.hint('cont'))
    states0 = _initial_states(ctx, nstate)
    W_hT = g.const(ctx.params[W_h].T, ctx.hint('W_h_T'))
    b = GraphBuilder(g.opset, parent=g)
    names = [b.fresh(ctx.hint(n)) for n in ('h_prev', 'c_prev')[:nstate]]
    g_t, cont_t = b.fresh(ctx.hint('g_t')), b.fresh(ctx.hint('cont_t'))
    h_cont = b.node('Mul', [names[0], cont_t], ctx.hint('h_cont'))
    a = b.node('Add', [g_t, b.node('MatMul', [h_cont, W_hT], ctx.hint('hw'))], ctx.hint('a'))
    new = step(b, names, a, cont_t)
    out = b.node('Identity', [new[0]], ctx.hint('h_out'))
    body = helper.make_graph(
        b.nodes, ctx.hint('step'),
        [value_info(n, [N, H]) for n in names] + [value_info(g_t, [N, G]), value_info(cont_t, [N, 1])],
        [value_info(n, [N, H]) for n in new] + [value_info(out, [N, H])])
    outs = g.node('Scan', states0 + [xw, cont], ctx.hint('scan'), outputs=nstate + 1, body=body,
                  num_scan_inputs=2)
    return outs[:nstate], outs[nstate]


def _exposed(ctx, finals):
    """The h_T (and c_T) tops with expose_hidden: (1, N, H)."""
    if not ctx.layer.expose_hidden:
        return []
    return [ctx.g.unsqueeze(v, [0], ctx.hint(n)) for v, n in zip(finals, ('h_T', 'c_T'))]


@converter('LSTM')
def lstm(ctx):
    H = ctx.layer.H

    def step(b, states, a, cont_t):
        c, h = _cell(b, a, states[1], cont_t, H, ctx.hint('cell'))
        return [h, c]

    finals, hs = _recurrence(ctx, 4 * H, len(ctx.params) - 1, step)
    return [ctx.g.node('Identity', [hs], ctx.hint())] + _exposed(ctx, finals)


@converter('RNN')
def rnn(ctx):
    g, layer = ctx.g, ctx.layer
    T, N, H = layer.T, layer.N, layer.H
    s = 3 if layer.static_input else 2

    def step(b, states, a, cont_t):
        return [b.node('Tanh', [a], ctx.hint('h'))]

    finals, hs = _recurrence(ctx, H, s, step)
    o = g.node('Gemm', [g.reshape(hs, [T * N, H], ctx.hint('h_rows')), ctx.param(s + 1, 'W_ho'),
                        ctx.param(s + 2, 'b_o')], ctx.hint('o_rows'), transB=1)
    o = g.node('Tanh', [g.reshape(o, [T, N, H], ctx.hint('o_pre'))], ctx.hint())
    return [o] + _exposed(ctx, finals)


@converter('LSTMUnit')
def lstm_unit(ctx):
    """c = cont sigmoid(x_f) c_prev + sigmoid(x_i) tanh(x_g), h = sigmoid(x_o) tanh(c)."""
    g = ctx.g
    ctx.fixed_batch('the unit reshapes its (1, N, ...) bottoms by N')
    _, N, H = ctx.bottom_shapes[0]
    c_prev = g.reshape(ctx.bottoms[0], [N, H], ctx.hint('c_prev'))
    a = g.reshape(ctx.bottoms[1], [N, 4 * H], ctx.hint('gates_in'))
    cont = g.reshape(ctx.bottoms[2], [N, 1], ctx.hint('cont'))
    c, h = _cell(g, a, c_prev, cont, H, ctx.hint())
    return [g.reshape(c, [1, N, H], ctx.hint('c')), g.reshape(h, [1, N, H], ctx.hint('h'))]
