"""Recurrent layers: LSTM, RNN and LSTMUnit (Caffe's recurrent_layer.cpp,
lstm_layer.cpp, rnn_layer.cpp, lstm_unit_layer.cpp).

Caffe builds LSTM and RNN as an unrolled internal Net (Slice, InnerProduct,
Scale, Eltwise, LSTMUnit/TanH, Concat layers over T timesteps).  Here the same
computation is fused: the input transform of all T timesteps is one GEMM, the
recurrence loops over the T timesteps with preallocated arrays, and the
backward pass (BPTT over the T steps of the last forward) batches every
parameter gradient into one GEMM per parameter.  The numbers are those of the
unrolled net, including its quirks, which are part of Caffe's behaviour:

* Without ``expose_hidden`` each forward starts from the previous forward's
  last h_T/c_T (zeros at first); cont_t = 0 clears it because cont multiplies
  h_{t-1} and the forget gate.  No gradient flows across forward calls.  When
  N changes, the carried state behaves as Caffe's reshaped blobs do: a smaller
  N keeps the first N*H stored values, a count beyond any earlier one starts
  from zeros.
* With ``expose_hidden`` h_0 (and c_0) come from bottoms and h_T (and c_T) go
  to tops, but Caffe shares only their *data* with the unrolled net: backward
  never writes the h_0/c_0 bottom diffs and ignores the h_T/c_T top diffs.
* Backward always writes the diffs of x (and x_static) and accumulates every
  parameter diff, whatever propagate_down / lr_mult say (the unrolled net is
  built with propagate_down forced on and all params learnable).  The cont
  bottom (index 1) can never receive a gradient (allow_force_backward False;
  an explicit ``propagate_down: true`` on it is an error, as in Caffe).
* The LSTMUnit backward uses f*(1-f) with f = cont*sigmoid(.), exactly as
  Caffe does (the true derivative only for binary cont).

GPU mode (forward_gpu/backward_gpu) runs the same fused scheme on the device:
the input transform and the parameter gradients are single GEMMs, and each
timestep is one recurrent GEMM plus the fused LSTM unit kernel
(kernels/lstm_unit.cu, which recomputes the gate activations from the stored
pre-activations in backward) or, for RNN, a tanh.  The carried hidden state
lives in a SyncedMemory, so it follows whichever side (host or device) ran last
and carries across forwards and across mode switches; exposed h_0/c_0 bottoms
and h_T/c_T tops are read and written through gpu_data.  The CPU path's skips of
all-zero GEMMs (sequence starts) are not taken on the device: they would need a
host round trip, and the product they skip is exactly zero anyway.
"""
import numpy as np

from .. import cmath, fillers
from ..blob import Blob, DTYPE, SyncedMemory
from ..blas import gemm, gemm_accumulate
from ..im2col import workspace
from .base import Layer, register_layer

_f = DTYPE


def _cupy():
    """The cupy module (imported on first GPU use only)."""
    from ..gpu.backend import cupy_module
    return cupy_module()


def _sigmoid_(a):
    """In-place logistic sigmoid, rounded as Caffe's LSTMUnit computes it.

    Caffe's ``1. / (1. + exp(-x))`` takes a float exp but adds and divides in
    double; near saturation (exp(-x) ~ 1e-5) doing it all in float32 moves
    1 - sigmoid, and with it the gate gradients, by a few tenths of a percent.
    """
    w64 = workspace('lstm_f64', a.shape, np.float64)
    w32 = workspace('lstm_f32', a.shape, _f)
    with np.errstate(over='ignore'):                 # exp(-x) = inf -> sigmoid 0, as in C
        np.negative(a, out=w64)
        np.exp(w64, out=w64)
        np.copyto(w32, w64)                          # expf(-x): rounded to float
        np.add(w32, 1.0, out=w64, dtype=np.float64)  # the rest in double
        np.divide(1.0, w64, out=a)
    return a


def _tanh(a, out):
    """Caffe's LSTMUnit tanh: 2 sigmoid(2x) - 1 = 2 / (1 + exp(-2x)) - 1, all in
    double (its sigmoid is instantiated for double there), rounded to float."""
    w64 = workspace('lstm_f64', a.shape, np.float64)
    with np.errstate(over='ignore'):
        np.multiply(a, -2.0, out=w64, dtype=np.float64)
        np.exp(w64, out=w64)
        w64 += 1.0
        np.divide(2.0, w64, out=w64)
        w64 -= 1.0
        np.copyto(out, w64)
    return out


def _nonzero(cont_t, h_prev):
    """False when cont_t * h_prev is exactly zero (all cont 0, h finite), so the
    recurrent GEMM can be skipped without changing any number (a sequence start)."""
    return bool(cont_t.any()) or not bool(np.isfinite(h_prev).all())


def _abs_max(a):
    """max |a| as a Python float (nan if a holds a NaN, 0 if empty)."""
    if a.size == 0:
        return 0.0
    hi, lo = float(a.max()), float(a.min())        # nan if a holds a NaN
    return max(hi, -lo) if hi == hi and lo == lo else float('nan')


def _zero_product(cont_t, d, w_max):
    """True when (d @ W) * cont_t is exactly zero: every cont_t is 0 and no sum of
    d @ W can overflow to inf (inf * 0 would be NaN), given w_max = max |W|.
    Then the GEMM can be skipped (sequence starts; zeros, up to their sign)."""
    if cont_t.any():
        return False
    bound = _abs_max(d) * w_max * d.shape[1]       # >= |any partial sum|
    return bound < 0.5 * float(np.finfo(_f).max)    # (margin for rounding)


def _count(shape, start=0):
    return int(np.prod(shape[start:], dtype=np.int64))


class _RecurrentLayer(Layer):
    """Shared machinery of LSTM and RNN (Caffe's RecurrentLayer)."""
    num_recur = 1            # recurrent state blobs (h; LSTM: h, c)
    recur_names = ('h_0',)

    def __init__(self, layer_param, phase=None):
        super(_RecurrentLayer, self).__init__(layer_param, phase)
        rp = layer_param.recurrent_param
        self.expose_hidden = bool(rp.expose_hidden)
        n = self.num_recur if self.expose_hidden else 0
        # Caffe's MinBottomBlobs / MaxBottomBlobs / ExactNumTopBlobs
        self.min_num_bottom = 2 + n
        self.max_num_bottom = 3 + n
        self.exact_num_top = 1 + n

    def allow_force_backward(self, bottom_index):
        # Can't propagate to sequence continuation indicators.
        return bottom_index != 1

    # ---- setup ------------------------------------------------------------
    def setup(self, bottom, top):
        rp = self.layer_param.recurrent_param
        self.check(bottom[0].num_axes() >= 2,
                   'bottom[0] must have at least 2 axes -- (#timesteps, #streams, ...), got shape %s'
                   % (bottom[0].shape,))
        self.T, self.N = bottom[0].shape[0], bottom[0].shape[1]
        self.check(bottom[1].num_axes() == 2,
                   'bottom[1] (cont) must have exactly 2 axes -- (#timesteps, #streams), got shape %s'
                   % (bottom[1].shape,))
        self.check(bottom[1].shape == (self.T, self.N),
                   'bottom[1] (cont) shape %s does not match (T, N) = (%d, %d) of bottom[0] %s'
                   % (bottom[1].shape, self.T, self.N, bottom[0].shape))
        self.static_input = len(bottom) > 2 + (self.num_recur if self.expose_hidden else 0)
        if self.static_input:
            self.check(bottom[2].num_axes() >= 1 and bottom[2].shape[0] == self.N,
                       'bottom[2] (static input) must have shape (N, ...) with N = %d, got %s'
                       % (self.N, bottom[2].shape))
        self.check(rp.num_output > 0, 'recurrent_param.num_output must be positive')
        self.H = int(rp.num_output)
        self.D = _count(bottom[0].shape, 2)
        self.Ds = _count(bottom[2].shape, 1) if self.static_input else 0
        shapes = self.param_shapes()
        if len(self.blobs) == 0:
            for shape, is_bias in shapes:
                b = Blob(shape)
                fillers.fill(b, rp.bias_filler if is_bias else rp.weight_filler,
                             context=self.name)
                self.blobs.append(b)
        else:
            self.check(len(self.blobs) == len(shapes),
                       'has %d weight blobs but needs %d' % (len(self.blobs), len(shapes)))
            for i, (shape, _) in enumerate(shapes):
                self.check(tuple(self.blobs[i].shape) == tuple(shape),
                           'weight blob %d has shape %s, expected %s'
                           % (i, self.blobs[i].shape, tuple(shape)))
        self.param_propagate_down = [True] * len(self.blobs)
        self._state = [np.zeros(self.N * self.H, _f) for _ in range(self.num_recur)]
        # host/device copies of the carried state (only the host one in CPU mode)
        self._state_mem = [SyncedMemory(s) for s in self._state]
        self._bufN = None
        self._gpu_buf = None

    def param_shapes(self):
        raise NotImplementedError

    # ---- reshape ----------------------------------------------------------
    def reshape(self, bottom, top):
        x, cont = bottom[0], bottom[1]
        self.check(x.num_axes() >= 2,
                   'bottom[0] must have at least 2 axes -- (#timesteps, #streams, ...), got shape %s'
                   % (x.shape,))
        T, N = x.shape[0], x.shape[1]
        self.check(T == self.T, 'input number of timesteps changed: set up for T = %d, got %d '
                   '(bottom[0] shape %s)' % (self.T, T, x.shape))
        self.check(cont.shape == (T, N),
                   'bottom[1] (cont) must have shape (T, N) = (%d, %d), got %s' % (T, N, cont.shape))
        self.check(_count(x.shape, 2) == self.D,
                   'input size incompatible with the weights: bottom[0] %s has %d values per '
                   'timestep and stream, the weights expect %d' % (x.shape, _count(x.shape, 2), self.D))
        if self.static_input:
            xs = bottom[2]
            self.check(xs.num_axes() >= 1 and xs.shape[0] == N and _count(xs.shape, 1) == self.Ds,
                       'bottom[2] (static input) must have shape (N, ...) with N = %d and %d values'
                       ' per stream, got %s' % (N, self.Ds, xs.shape))
        self.N = N
        H = self.H
        if self.expose_hidden:
            off = 2 + int(self.static_input)
            for j in range(self.num_recur):
                self.check(bottom[off + j].shape == (1, N, H),
                           'bottom[%d] (%s) shape must match hidden state input shape (1, %d, %d), got %s'
                           % (off + j, self.recur_names[j], N, H, bottom[off + j].shape))
            for j in range(self.num_recur):
                top[1 + j].reshape((1, N, H))
        else:
            # Caffe's Blob::Reshape keeps the memory unless the count grows.
            for j in range(self.num_recur):
                if self._state[j].size < N * H:
                    self._state[j] = np.zeros(N * H, _f)
                    self._state_mem[j] = SyncedMemory(self._state[j])
        top[0].reshape((T, N, self.out_dim()))
        if self._bufN != N:
            self._alloc(T, N)
            self._bufN = N

    def out_dim(self):
        return self.H

    def _initial_state(self, bottom, j):
        N, H = self.N, self.H
        if self.expose_hidden:
            return bottom[2 + int(self.static_input) + j].data.reshape(N, H)
        return self._host_state(j)[:N * H].reshape(N, H)

    def _save_state(self, j, value):
        if not self.expose_hidden:
            self._host_state(j)[:value.size] = value.ravel()

    def _host_state(self, j):
        """The carried state j on the host (copied back if GPU mode wrote it last)."""
        mem = self._state_mem[j]
        if mem.dev is not None:
            mem.to_host()
        return self._state[j]

    def reset(self):
        """Caffe's RecurrentLayer::Reset: zero the carried hidden state."""
        for j in range(len(self._state)):
            self._host_state(j)[...] = 0

    # ---- GPU glue -----------------------------------------------------------
    def _gpu_initial_state(self, bottom, j):
        """h_0 (j = 0) / c_0 (j = 1) as an (N, H) device array."""
        N, H = self.N, self.H
        if self.expose_hidden:
            return bottom[2 + int(self.static_input) + j].gpu_data.reshape(N, H)
        return self._state_mem[j].to_device()[:N * H].reshape(N, H)

    def _gpu_save_state(self, j, value):
        if not self.expose_hidden:
            self._state_mem[j].to_device()[:value.size] = value.ravel()

    def _gpu_buffers(self, cp):
        """The device work arrays for the current (T, N), kept between calls."""
        key = (self.T, self.N)
        if self._gpu_buf is None or self._gpu_buf[0] != key:
            self._gpu_buf = (key, self._gpu_alloc(cp, self.T, self.N))
        return self._gpu_buf[1]

    def _check_propagate_down(self, propagate_down):
        if len(propagate_down) > 1 and propagate_down[1]:
            raise self.error('cannot backpropagate to sequence indicators (bottom[1], cont)')


@register_layer('LSTM')
class LSTMLayer(_RecurrentLayer):
    """Long short-term memory over T timesteps of N independent streams (Caffe's LSTM).

    bottoms: x (T, N, ...) flattened from axis 2 to D; cont (T, N) (0 = sequence
             start); optional x_static (N, ...) flattened to D_s; with
             recurrent_param.expose_hidden also h_0 (1, N, H) and c_0 (1, N, H).
    tops:    h (T, N, H); with expose_hidden also h_T (1, N, H) and c_T (1, N, H).
    params:  W_xc (4H, D), b_c (4H), [W_xc_static (4H, D_s)], W_hc (4H, H);
             gate blocks of H in the order i, f, o, g.
    forward, for t = 1..T:
        a_t = W_hc (cont_t h_{t-1}) + W_xc x_t + b_c [+ W_xc_static x_static]
        i = sigmoid(a_i), f = cont_t sigmoid(a_f), o = sigmoid(a_o), g = tanh(a_g)
        c_t = f c_{t-1} + i g,   h_t = o tanh(c_t)
      h_0, c_0: the previous forward's h_T, c_T (zeros at first), or the bottoms
      with expose_hidden.
    backward (BPTT over the T steps; dc_T = 0, h_T/c_T top diffs ignored):
        dh_t = dtop_t + cont_{t+1} W_hc^T da_{t+1}
        dc_t = dc_t(from c_{t+1}: f_{t+1} dc_{t+1}) + dh_t o (1 - tanh^2 c_t)
        da_i = dc g i(1-i), da_f = dc c_{t-1} f(1-f), da_o = dh tanh(c) o(1-o),
        da_g = dc i (1-g^2)
        dW_xc += da^T x, db_c += sum da, dW_hc += da^T (cont h_{t-1}),
        dW_xc_static += (sum_t da)^T x_static; dx = da W_xc,
        dx_static = (sum_t da) W_xc_static.  No diff to cont, h_0, c_0.
    """
    num_recur = 2
    recur_names = ('h_0', 'c_0')

    def param_shapes(self):
        G = 4 * self.H
        shapes = [((G, self.D), False), ((G,), True)]
        if self.static_input:
            shapes.append(((G, self.Ds), False))
        shapes.append(((G, self.H), False))
        return shapes

    def _alloc(self, T, N):
        H = self.H
        self._G = np.empty((T, N, 4 * H), _f)      # gate activations i, f, o, g
        self._Hs = np.empty((T + 1, N, H), _f)     # h_0 .. h_T
        self._Cs = np.empty((T + 1, N, H), _f)     # c_0 .. c_T
        self._Hc = np.empty((T, N, H), _f)         # cont_t * h_{t-1}
        self._TC = np.empty((T, N, H), _f)         # tanh(c_t)
        self._cont = np.empty((T, N), _f)
        self._tmp4 = np.empty((N, 4 * H), _f)
        self._tmpH = np.empty((N, H), _f)
        self._dG = np.empty((T, N, 4 * H), _f)

    def forward(self, bottom, top):
        T, N, H = self.T, self.N, self.H
        H3 = 3 * H
        W_xc, b_c = self.blobs[0].data, self.blobs[1].data
        W_hc = self.blobs[-1].data
        G, Hs, Cs, Hc, TC, tmp4, tmpH = (self._G, self._Hs, self._Cs, self._Hc, self._TC,
                                         self._tmp4, self._tmpH)
        G2 = G.reshape(T * N, 4 * H)
        gemm(bottom[0].data.reshape(T * N, self.D), W_xc, G2, trans_b=True)
        G2 += b_c
        if self.static_input:
            G += gemm(bottom[2].data.reshape(N, self.Ds), self.blobs[2].data, trans_b=True)
        cont = self._cont
        cont[...] = bottom[1].data
        Hs[0] = self._initial_state(bottom, 0)
        Cs[0] = self._initial_state(bottom, 1)
        W_hcT = None        # W_hc^T made contiguous when first needed: NN GEMMs in the
        for t in range(T):  # loop are a little faster
            ct = cont[t][:, None]
            np.multiply(Hs[t], ct, out=Hc[t])
            g = G[t]
            if _nonzero(cont[t], Hs[t]):
                if W_hcT is None:   # (reused scratch: no fresh weight-sized pages per pass)
                    W_hcT = workspace('recurrent_W_hT', W_hc.T.shape)
                    np.copyto(W_hcT, W_hc.T)
                gemm(Hc[t], W_hcT, tmp4)
                g += tmp4
            _sigmoid_(g[:, :H3])
            _tanh(g[:, H3:], out=g[:, H3:])
            gi, gf, go, gg = g[:, :H], g[:, H:2 * H], g[:, 2 * H:H3], g[:, H3:]
            gf *= ct
            c = Cs[t + 1]
            np.multiply(gf, Cs[t], out=c)
            np.multiply(gi, gg, out=tmpH)
            c += tmpH
            _tanh(c, out=TC[t])
            np.multiply(go, TC[t], out=Hs[t + 1])
        top[0].data[...] = Hs[1:]
        if self.expose_hidden:
            top[1].data[...] = Hs[T]
            top[2].data[...] = Cs[T]
        else:
            self._save_state(0, Hs[T])
            self._save_state(1, Cs[T])

    def backward(self, top, propagate_down, bottom):
        self._check_propagate_down(propagate_down)
        T, N, H = self.T, self.N, self.H
        H3 = 3 * H
        G, Cs, Hc, TC, dG = self._G, self._Cs, self._Hc, self._TC, self._dG
        cont = self._cont
        W_hc = self.blobs[-1].data
        dtop = top[0].diff
        w_max = _abs_max(W_hc)
        dh = np.empty((N, H), _f)
        dc = np.zeros((N, H), _f)       # diff of c_t arriving from step t+1 (0 for c_T)
        dh_next = np.zeros((N, H), _f)  # diff of h_t arriving from step t+1 (0 for h_T)
        tmp = self._tmpH
        for t in range(T - 1, -1, -1):
            g = G[t]
            gi, gf, go, gg = g[:, :H], g[:, H:2 * H], g[:, 2 * H:H3], g[:, H3:]
            d = dG[t]
            di, df, do, dg = d[:, :H], d[:, H:2 * H], d[:, 2 * H:H3], d[:, H3:]
            np.add(dtop[t], dh_next, out=dh)
            tc = TC[t]
            # c_term_diff = dc + dh * o * (1 - tanh(c)^2)
            np.multiply(tc, tc, out=tmp)
            np.subtract(1.0, tmp, out=tmp)
            tmp *= go
            tmp *= dh
            dc += tmp
            # do = dh * tanh(c) * o * (1 - o)
            np.subtract(1.0, go, out=do)
            do *= go
            do *= tc
            do *= dh
            # di = dc * g * i * (1 - i)
            np.subtract(1.0, gi, out=di)
            di *= gi
            di *= gg
            di *= dc
            # df = dc * c_prev * f * (1 - f)
            np.subtract(1.0, gf, out=df)
            df *= gf
            df *= Cs[t]
            df *= dc
            # dg = dc * i * (1 - g^2)
            np.multiply(gg, gg, out=dg)
            np.subtract(1.0, dg, out=dg)
            dg *= gi
            dg *= dc
            # dc_{t-1} = dc * f
            dc *= gf
            if t > 0:
                if _zero_product(cont[t], d, w_max):
                    dh_next.fill(0)          # cont_t = 0 everywhere: a sequence start
                else:
                    gemm(d, W_hc, dh_next)
                    dh_next *= cont[t][:, None]
        dG2 = dG.reshape(T * N, 4 * H)
        x2 = bottom[0].data.reshape(T * N, self.D)
        # weight gradients accumulate inside the GEMM (beta = 1, as Caffe's
        # InnerProduct): no weight-sized temporary, one pass over each diff
        gemm_accumulate(dG2, x2, self.blobs[0].diff, trans_a=True)
        gemm_accumulate(dG2, Hc.reshape(T * N, H), self.blobs[-1].diff, trans_a=True)
        self.blobs[1].diff += dG2.sum(axis=0)
        gemm(dG2, self.blobs[0].data, bottom[0].diff.reshape(T * N, self.D))
        if self.static_input:
            dGs = dG.sum(axis=0)
            xs2 = bottom[2].data.reshape(N, self.Ds)
            gemm_accumulate(dGs, xs2, self.blobs[2].diff, trans_a=True)
            gemm(dGs, self.blobs[2].data, bottom[2].diff.reshape(N, self.Ds))

    # ---- GPU ------------------------------------------------------------------
    def _gpu_alloc(self, cp, T, N):
        H = self.H
        def e(*shape):
            return cp.empty(shape, dtype=_f)
        return dict(G=e(T, N, 4 * H),       # gate pre-activations (the kernel's X)
                    Hs=e(T + 1, N, H), Cs=e(T + 1, N, H), Hc=e(T, N, H),
                    cont=e(T, N), tmp4=e(N, 4 * H), dG=e(T, N, 4 * H),
                    dh=e(N, H), dh_next=e(N, H), dc=e(N, H), dc_prev=e(N, H))

    def forward_gpu(self, bottom, top):
        """forward on the device: one GEMM for the input transform of all T steps,
        then per step the recurrent GEMM and the fused lstm_unit_forward kernel."""
        from ..gpu.kernels import launch
        cp = _cupy()
        T, N, H = self.T, self.N, self.H
        b = self._gpu_buffers(cp)
        G, Hs, Cs, Hc, tmp4, cont = b['G'], b['Hs'], b['Cs'], b['Hc'], b['tmp4'], b['cont']
        W_xc, b_c = self.blobs[0].gpu_data, self.blobs[1].gpu_data
        W_hc = self.blobs[-1].gpu_data
        G2 = G.reshape(T * N, 4 * H)
        cp.matmul(bottom[0].gpu_data.reshape(T * N, self.D), W_xc.T, out=G2)
        G2 += b_c
        if self.static_input:
            G += cp.matmul(bottom[2].gpu_data.reshape(N, self.Ds), self.blobs[2].gpu_data.T)
        cont[...] = bottom[1].gpu_data
        Hs[0] = self._gpu_initial_state(bottom, 0)
        Cs[0] = self._gpu_initial_state(bottom, 1)
        W_hcT = W_hc.T
        for t in range(T):
            cp.multiply(Hs[t], cont[t][:, None], out=Hc[t])
            cp.matmul(Hc[t], W_hcT, out=tmp4)
            G[t] += tmp4
            launch('lstm_unit', 'lstm_unit_forward', N * H,
                   (N * H, H, Cs[t], G[t], cont[t], Cs[t + 1], Hs[t + 1]))
        top[0].gpu_data[...] = Hs[1:]
        if self.expose_hidden:
            top[1].gpu_data[...] = Hs[T]
            top[2].gpu_data[...] = Cs[T]
        else:
            self._gpu_save_state(0, Hs[T])
            self._gpu_save_state(1, Cs[T])

    def backward_gpu(self, top, propagate_down, bottom):
        """BPTT on the device: per step lstm_unit_backward (dc_{t-1} and the gate
        diffs) and the recurrent GEMM; then one GEMM per parameter and for dx."""
        self._check_propagate_down(propagate_down)
        from ..gpu.kernels import launch
        cp = _cupy()
        T, N, H = self.T, self.N, self.H
        b = self._gpu_buffers(cp)
        G, Cs, Hc, cont, dG = b['G'], b['Cs'], b['Hc'], b['cont'], b['dG']
        dh, dh_next, dc, dc_prev = b['dh'], b['dh_next'], b['dc'], b['dc_prev']
        W_hc = self.blobs[-1].gpu_data
        dtop = top[0].gpu_diff
        dc.fill(0)                      # dc_T = 0 (the c_T top diff is ignored)
        dh_next.fill(0)
        for t in range(T - 1, -1, -1):
            cp.add(dtop[t], dh_next, out=dh)
            launch('lstm_unit', 'lstm_unit_backward', N * H,
                   (N * H, H, Cs[t], G[t], Cs[t + 1], cont[t], dc, dh, dc_prev, dG[t]))
            dc, dc_prev = dc_prev, dc
            if t > 0:
                cp.matmul(dG[t], W_hc, out=dh_next)
                dh_next *= cont[t][:, None]
        dG2 = dG.reshape(T * N, 4 * H)
        x2 = bottom[0].gpu_data.reshape(T * N, self.D)
        for blob, rhs in ((self.blobs[0], x2), (self.blobs[-1], Hc.reshape(T * N, H))):
            d = blob.gpu_diff
            d += cp.matmul(dG2.T, rhs)
        db = self.blobs[1].gpu_diff
        db += dG2.sum(axis=0)
        cp.matmul(dG2, self.blobs[0].gpu_data, out=bottom[0].gpu_diff.reshape(T * N, self.D))
        if self.static_input:
            dGs = dG.sum(axis=0)
            dWs = self.blobs[2].gpu_diff
            dWs += cp.matmul(dGs.T, bottom[2].gpu_data.reshape(N, self.Ds))
            cp.matmul(dGs, self.blobs[2].gpu_data, out=bottom[2].gpu_diff.reshape(N, self.Ds))


@register_layer('RNN')
class RNNLayer(_RecurrentLayer):
    """Simple recurrent net over T timesteps of N streams (Caffe's RNN).

    bottoms: x (T, N, ...) flattened to D; cont (T, N); optional x_static (N, ...)
             flattened to D_s; with expose_hidden also h_0 (1, N, H).
    tops:    o (T, N, H); with expose_hidden also h_T (1, N, H).  H = num_output.
    params:  W_xh (H, D), b_h (H), [W_xh_static (H, D_s)], W_hh (H, H),
             W_ho (H, H), b_o (H).
    forward, for t = 1..T:
        h_t = tanh(W_hh (cont_t h_{t-1}) + W_xh x_t + b_h [+ W_xh_static x_static])
        o_t = tanh(W_ho h_t + b_o)
      h_0: the previous forward's h_T (zeros at first), or the bottom with expose_hidden.
    backward (BPTT; the h_T top diff is ignored, no diff to cont or h_0):
        dz_t = dtop_t (1 - o_t^2);  dW_ho += dz^T h, db_o += sum dz
        dh_t = W_ho^T dz_t + cont_{t+1} W_hh^T da_{t+1};  da_t = dh_t (1 - h_t^2)
        dW_hh += da^T (cont h_{t-1}), dW_xh += da^T x, db_h += sum da,
        dW_xh_static += (sum_t da)^T x_static; dx = da W_xh, dx_static = (sum_t da) W_xh_static
    """
    num_recur = 1
    recur_names = ('h_0',)

    def param_shapes(self):
        H = self.H
        shapes = [((H, self.D), False), ((H,), True)]
        if self.static_input:
            shapes.append(((H, self.Ds), False))
        shapes += [((H, H), False), ((H, H), False), ((H,), True)]
        return shapes

    def _alloc(self, T, N):
        H = self.H
        self._Hs = np.empty((T + 1, N, H), _f)   # h_0 .. h_T
        self._Hc = np.empty((T, N, H), _f)       # cont_t * h_{t-1}
        self._A = np.empty((T, N, H), _f)        # pre-activation buffer, then diffs
        self._O = np.empty((T, N, H), _f)        # o_1 .. o_T
        self._cont = np.empty((T, N), _f)
        self._tmpH = np.empty((N, H), _f)

    def forward(self, bottom, top):
        T, N, H = self.T, self.N, self.H
        s = 3 if self.static_input else 2
        W_xh, b_h = self.blobs[0].data, self.blobs[1].data
        W_hh, W_ho, b_o = self.blobs[s].data, self.blobs[s + 1].data, self.blobs[s + 2].data
        Hs, Hc, A, O, tmp = self._Hs, self._Hc, self._A, self._O, self._tmpH
        A2 = A.reshape(T * N, H)
        gemm(bottom[0].data.reshape(T * N, self.D), W_xh, A2, trans_b=True)
        A2 += b_h
        if self.static_input:
            A += gemm(bottom[2].data.reshape(N, self.Ds), self.blobs[2].data, trans_b=True)
        cont = self._cont
        cont[...] = bottom[1].data
        Hs[0] = self._initial_state(bottom, 0)
        W_hhT = workspace('recurrent_W_hT', W_hh.T.shape)     # reused scratch, as in LSTM
        np.copyto(W_hhT, W_hh.T)
        for t in range(T):
            np.multiply(Hs[t], cont[t][:, None], out=Hc[t])
            if _nonzero(cont[t], Hs[t]):
                gemm(Hc[t], W_hhT, tmp)
                np.add(A[t], tmp, out=tmp)
                cmath.tanhf(tmp, out=Hs[t + 1])
            else:
                cmath.tanhf(A[t], out=Hs[t + 1])
        O2 = O.reshape(T * N, H)
        gemm(Hs[1:].reshape(T * N, H), W_ho, O2, trans_b=True)
        O2 += b_o
        cmath.tanhf(O2, out=O2)
        top[0].data[...] = O
        if self.expose_hidden:
            top[1].data[...] = Hs[T]
        else:
            self._save_state(0, Hs[T])

    def backward(self, top, propagate_down, bottom):
        self._check_propagate_down(propagate_down)
        T, N, H = self.T, self.N, self.H
        s = 3 if self.static_input else 2
        W_hh, W_ho = self.blobs[s].data, self.blobs[s + 1].data
        Hs, Hc, O, cont = self._Hs, self._Hc, self._O, self._cont
        # o_t = tanh(z_t): dz = dtop * (1 - o^2)
        dZ = np.multiply(O, O)
        np.subtract(1.0, dZ, out=dZ)
        dZ *= top[0].diff
        dZ2 = dZ.reshape(T * N, H)
        H2 = Hs[1:].reshape(T * N, H)
        gemm_accumulate(dZ2, H2, self.blobs[s + 1].diff, trans_a=True)
        self.blobs[s + 2].diff += dZ2.sum(axis=0)
        dHo = gemm(dZ2, W_ho).reshape(T, N, H)   # diff of h_t from o_t
        dA = self._A                                  # reuse: da_t
        dh_next = np.zeros((N, H), _f)
        for t in range(T - 1, -1, -1):
            d = dA[t]
            np.add(dHo[t], dh_next, out=d)            # dh_t
            h = Hs[t + 1]
            np.multiply(h, h, out=dh_next)
            np.subtract(1.0, dh_next, out=dh_next)
            d *= dh_next                              # da_t = dh_t (1 - h_t^2)
            if t > 0:
                gemm(d, W_hh, dh_next)
                dh_next *= cont[t][:, None]
        dA2 = dA.reshape(T * N, H)
        x2 = bottom[0].data.reshape(T * N, self.D)
        gemm_accumulate(dA2, x2, self.blobs[0].diff, trans_a=True)
        self.blobs[1].diff += dA2.sum(axis=0)
        gemm_accumulate(dA2, Hc.reshape(T * N, H), self.blobs[s].diff, trans_a=True)
        gemm(dA2, self.blobs[0].data, bottom[0].diff.reshape(T * N, self.D))
        if self.static_input:
            dAs = dA.sum(axis=0)
            xs2 = bottom[2].data.reshape(N, self.Ds)
            gemm_accumulate(dAs, xs2, self.blobs[2].diff, trans_a=True)
            gemm(dAs, self.blobs[2].data, bottom[2].diff.reshape(N, self.Ds))

    # ---- GPU ------------------------------------------------------------------
    def _gpu_alloc(self, cp, T, N):
        H = self.H
        def e(*shape):
            return cp.empty(shape, dtype=_f)
        return dict(Hs=e(T + 1, N, H), Hc=e(T, N, H), A=e(T, N, H), O=e(T, N, H),
                    cont=e(T, N), tmp=e(N, H), dh_next=e(N, H))

    def forward_gpu(self, bottom, top):
        """forward on the device: input and output transforms as single GEMMs,
        the recurrence one GEMM and tanh per step."""
        cp = _cupy()
        T, N, H = self.T, self.N, self.H
        s = 3 if self.static_input else 2
        b = self._gpu_buffers(cp)
        Hs, Hc, A, O, tmp, cont = b['Hs'], b['Hc'], b['A'], b['O'], b['tmp'], b['cont']
        W_xh, b_h = self.blobs[0].gpu_data, self.blobs[1].gpu_data
        W_hh, W_ho, b_o = (self.blobs[s].gpu_data, self.blobs[s + 1].gpu_data,
                           self.blobs[s + 2].gpu_data)
        A2 = A.reshape(T * N, H)
        cp.matmul(bottom[0].gpu_data.reshape(T * N, self.D), W_xh.T, out=A2)
        A2 += b_h
        if self.static_input:
            A += cp.matmul(bottom[2].gpu_data.reshape(N, self.Ds), self.blobs[2].gpu_data.T)
        cont[...] = bottom[1].gpu_data
        Hs[0] = self._gpu_initial_state(bottom, 0)
        W_hhT = W_hh.T
        for t in range(T):
            cp.multiply(Hs[t], cont[t][:, None], out=Hc[t])
            cp.matmul(Hc[t], W_hhT, out=tmp)
            cp.add(A[t], tmp, out=tmp)
            cp.tanh(tmp, out=Hs[t + 1])
        O2 = O.reshape(T * N, H)
        cp.matmul(Hs[1:].reshape(T * N, H), W_ho.T, out=O2)
        O2 += b_o
        cp.tanh(O2, out=O2)
        top[0].gpu_data[...] = O
        if self.expose_hidden:
            top[1].gpu_data[...] = Hs[T]
        else:
            self._gpu_save_state(0, Hs[T])

    def backward_gpu(self, top, propagate_down, bottom):
        self._check_propagate_down(propagate_down)
        cp = _cupy()
        T, N, H = self.T, self.N, self.H
        s = 3 if self.static_input else 2
        b = self._gpu_buffers(cp)
        Hs, Hc, O, cont, dh_next = b['Hs'], b['Hc'], b['O'], b['cont'], b['dh_next']
        W_hh, W_ho = self.blobs[s].gpu_data, self.blobs[s + 1].gpu_data
        dZ = cp.multiply(O, O)
        cp.subtract(_f(1), dZ, out=dZ)
        dZ *= top[0].gpu_diff
        dZ2 = dZ.reshape(T * N, H)
        H2 = Hs[1:].reshape(T * N, H)
        dW_ho, db_o = self.blobs[s + 1].gpu_diff, self.blobs[s + 2].gpu_diff
        dW_ho += cp.matmul(dZ2.T, H2)
        db_o += dZ2.sum(axis=0)
        dHo = cp.matmul(dZ2, W_ho).reshape(T, N, H)
        dA = b['A']                                   # reuse: da_t
        dh_next.fill(0)
        for t in range(T - 1, -1, -1):
            d = dA[t]
            cp.add(dHo[t], dh_next, out=d)
            h = Hs[t + 1]
            cp.multiply(h, h, out=dh_next)
            cp.subtract(_f(1), dh_next, out=dh_next)
            d *= dh_next
            if t > 0:
                cp.matmul(d, W_hh, out=dh_next)
                dh_next *= cont[t][:, None]
        dA2 = dA.reshape(T * N, H)
        x2 = bottom[0].gpu_data.reshape(T * N, self.D)
        dW_xh, db_h, dW_hh = self.blobs[0].gpu_diff, self.blobs[1].gpu_diff, self.blobs[s].gpu_diff
        dW_xh += cp.matmul(dA2.T, x2)
        db_h += dA2.sum(axis=0)
        dW_hh += cp.matmul(dA2.T, Hc.reshape(T * N, H))
        cp.matmul(dA2, self.blobs[0].gpu_data, out=bottom[0].gpu_diff.reshape(T * N, self.D))
        if self.static_input:
            dAs = dA.sum(axis=0)
            dWs = self.blobs[2].gpu_diff
            dWs += cp.matmul(dAs.T, bottom[2].gpu_data.reshape(N, self.Ds))
            cp.matmul(dAs, self.blobs[2].gpu_data, out=bottom[2].gpu_diff.reshape(N, self.Ds))


@register_layer('LSTMUnit')
class LSTMUnitLayer(Layer):
    """One LSTM timestep nonlinearity (Caffe's LSTMUnit, the LSTM layer's helper).

    bottoms: c_prev (1, N, H); x = gate inputs (1, N, 4H) in blocks i, f, o, g;
             cont (1, N).
    tops:    c (1, N, H), h (1, N, H).
    forward: i = sigmoid(x_i), f = cont sigmoid(x_f), o = sigmoid(x_o), g = tanh(x_g)
             c = f c_prev + i g,   h = o tanh(c)
    backward (to c_prev and x, never to cont; both are written when either is asked):
             dc' = dc + dh o (1 - tanh^2 c);  dc_prev = dc' f
             dx_i = dc' g i(1-i), dx_f = dc' c_prev f(1-f), dx_o = dh tanh(c) o(1-o),
             dx_g = dc' i (1-g^2)
    """
    exact_num_bottom = 3
    exact_num_top = 2

    def allow_force_backward(self, bottom_index):
        return bottom_index != 2

    def reshape(self, bottom, top):
        N = bottom[0].shape[1] if bottom[0].num_axes() >= 2 else -1
        names = ('c_prev', 'x (gate inputs)', 'cont')
        for i, b in enumerate(bottom):
            want = 2 if i == 2 else 3
            self.check(b.num_axes() == want and b.shape[0] == 1 and b.shape[1] == N,
                       'bottom[%d] (%s) must have %d axes with shape (1, N%s), N = %d; got %s'
                       % (i, names[i], want, ', ...' if want == 3 else '', N, b.shape))
        self.H = bottom[0].shape[2]
        self.check(bottom[1].shape[2] == 4 * self.H,
                   'bottom[1] (gate inputs) must have 4*H = %d channels (H = %d from c_prev), got %s'
                   % (4 * self.H, self.H, bottom[1].shape))
        top[0].reshape(bottom[0].shape)
        top[1].reshape(bottom[0].shape)

    def _acts(self, bottom):
        H = self.H
        X = bottom[1].data[0]
        acts = np.array(X, dtype=_f, copy=True)
        _sigmoid_(acts[:, :3 * H])
        _tanh(acts[:, 3 * H:], out=acts[:, 3 * H:])
        acts[:, H:2 * H] *= bottom[2].data[0][:, None]
        return acts

    def forward(self, bottom, top):
        H = self.H
        a = self._acts(bottom)
        i, f, o, g = a[:, :H], a[:, H:2 * H], a[:, 2 * H:3 * H], a[:, 3 * H:]
        c = f * bottom[0].data[0] + i * g
        h = o * _tanh(c, np.empty_like(c))
        top[0].data[0] = c
        top[1].data[0] = h

    def backward(self, top, propagate_down, bottom):
        if len(propagate_down) > 2 and propagate_down[2]:
            raise self.error('cannot backpropagate to sequence indicators (bottom[2], cont)')
        if not (propagate_down[0] or propagate_down[1]):
            return
        H = self.H
        a = self._acts(bottom)
        i, f, o, g = a[:, :H], a[:, H:2 * H], a[:, 2 * H:3 * H], a[:, 3 * H:]
        c_prev = bottom[0].data[0]
        tc = _tanh(top[0].data[0], np.empty_like(top[0].data[0]))
        dc_top, dh = top[0].diff[0], top[1].diff[0]
        dc = dc_top + dh * o * (1 - tc * tc)
        dX = bottom[1].diff[0]
        dX[:, :H] = dc * g * i * (1 - i)
        dX[:, H:2 * H] = dc * c_prev * f * (1 - f)
        dX[:, 2 * H:3 * H] = dh * tc * o * (1 - o)
        dX[:, 3 * H:] = dc * i * (1 - g * g)
        bottom[0].diff[0] = dc * f

    # ---- GPU: kernels/lstm_unit.cu (Caffe's lstm_unit_layer.cu) ----------------
    def forward_gpu(self, bottom, top):
        from ..gpu.kernels import launch
        N, H = bottom[0].shape[1], self.H
        launch('lstm_unit', 'lstm_unit_forward', N * H,
               (N * H, H, bottom[0].gpu_data, bottom[1].gpu_data, bottom[2].gpu_data,
                top[0].gpu_data, top[1].gpu_data))

    def backward_gpu(self, top, propagate_down, bottom):
        if len(propagate_down) > 2 and propagate_down[2]:
            raise self.error('cannot backpropagate to sequence indicators (bottom[2], cont)')
        if not (propagate_down[0] or propagate_down[1]):
            return
        from ..gpu.kernels import launch
        N, H = bottom[0].shape[1], self.H
        launch('lstm_unit', 'lstm_unit_backward', N * H,
               (N * H, H, bottom[0].gpu_data, bottom[1].gpu_data, top[0].gpu_data,
                bottom[2].gpu_data, top[0].gpu_diff, top[1].gpu_diff,
                bottom[0].gpu_diff, bottom[1].gpu_diff))
