"""Fully connected layers and Softmax: InnerProduct, Embed, Softmax.

All three view their input as a matrix: the axes before ``axis`` are rows
(M = count(0, axis)), the rest are columns (K = count(axis)), as Caffe does.

GPU mode: each layer has forward_gpu/backward_gpu on the blobs' device arrays
(CuPy): InnerProduct with device matrix products, Embed and Softmax with the
kernels in gpu/kernels/embed.cu and softmax.cu.
"""
import numpy as np

from .. import cmath
from ..blob import Blob, DTYPE
from ..fillers import fill
from .. import blas
from ..blas import gemm, gemm_tasks
from ..im2col import workspace
from ..threads import alternate, run_calls
from .base import Layer, register_layer


def _canonical_axis(layer, blob, axis):
    try:
        return blob.canonical_axis(axis)
    except ValueError as e:
        raise layer.error(str(e))


def _add_learnable(layer, shape, filler):
    blob = Blob(shape)
    fill(blob, filler, context=layer.name)
    layer.blobs.append(blob)


# Below this many rows, InnerProduct's forward GEMM is computed transposed.
FEW_ROWS = 128


@register_layer('InnerProduct')
class InnerProductLayer(Layer):
    """Fully connected layer (Caffe's InnerProductLayer).

    bottom: x of shape (d0, ..., d_{axis-1}, d_axis, ...), read as X (M, K) with
            M = count(0, axis), K = count(axis)
    top:    y of shape (d0, ..., d_{axis-1}, N), N = num_output
    blobs:  W (N, K) -- or (K, N) when ``transpose: true`` --, b (N) when bias_term.
    forward:  Y = X W^T + b        (transpose: Y = X W)
    backward: dX = dY W            (transpose: dX = dY W^T)
              dW += dY^T X         (transpose: dW += X^T dY)
              db += sum over rows of dY
    """
    static_reshape = True
    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom, top):
        p = self.layer_param.inner_product_param
        self.check(p.num_output > 0, 'inner_product_param { num_output } must be positive')
        self.num_output = p.num_output
        self.bias_term = p.bias_term
        self.transpose = p.transpose
        self.axis = _canonical_axis(self, bottom[0], p.axis)
        self.K = bottom[0].count_range(self.axis)
        if len(self.blobs) == 0:
            shape = (self.K, self.num_output) if self.transpose else (self.num_output, self.K)
            _add_learnable(self, shape, p.weight_filler)
            if self.bias_term:
                _add_learnable(self, (self.num_output,), p.bias_filler)
        else:
            want = 2 if self.bias_term else 1
            self.check(len(self.blobs) == want, 'expected %d learnable blobs, got %d'
                       % (want, len(self.blobs)))
        self.param_propagate_down = [True] * len(self.blobs)

    def reshape(self, bottom, top):
        axis = _canonical_axis(self, bottom[0], self.layer_param.inner_product_param.axis)
        k = bottom[0].count_range(axis)
        self.check(k == self.K, 'input size incompatible with inner product parameters:'
                   ' bottom shape %s gives %d inputs per row, the weights expect %d'
                   % (bottom[0].shape, k, self.K))
        self.axis = axis
        self.M = bottom[0].count_range(0, axis)
        top[0].reshape(bottom[0].shape[:axis] + (self.num_output,))

    def forward(self, bottom, top):
        x = bottom[0].data.reshape(self.M, self.K)
        y = top[0].data.reshape(self.M, self.num_output)
        if self.M < FEW_ROWS and not self.transpose and blas.name() != 'mkl':
            # A batch of a few rows (CaffeNet's fc6: 10 x 9216 by 9216 x 4096): OpenBLAS
            # computes y^T = W x^T 1.4x faster than y = x W^T, with the same sums
            # (bit-identical in our tests; with a transposed W they are not) --
            # then one small transposed copy.  MKL is the other way round: fc6's
            # y = x W^T took half the time of W x^T (benchmarks/bench_fc.py).
            yt = workspace('ip_forward', (self.num_output, self.M))
            gemm(self.blobs[0].data, x, yt, trans_a=self.transpose, trans_b=True)
            y[...] = yt.T
        else:
            gemm(x, self.blobs[0].data, y, trans_b=not self.transpose)
        if self.bias_term:
            y += self.blobs[1].data

    def backward(self, top, propagate_down, bottom):
        dy = top[0].diff.reshape(self.M, self.num_output)
        x = bottom[0].data.reshape(self.M, self.K)
        tasks = []
        if self.param_propagate_down[0]:
            # Caffe's accumulating GEMM (beta = 1): no 151 MB temporary for fc6
            dW = self.blobs[0].diff
            if self.transpose:
                tasks.append(gemm_tasks(x, dy, dW, trans_a=True, accumulate=True))
            else:
                tasks.append(gemm_tasks(dy, x, dW, trans_a=True, accumulate=True))
        if propagate_down[0]:
            tasks.append(gemm_tasks(dy, self.blobs[0].data, bottom[0].diff.reshape(self.M, self.K),
                                    trans_b=self.transpose))
        # both products' blocks in one round of the threads (the calls gemm would
        # make, so the same numbers): one wait for the pool instead of two, and
        # no core idles on the first product's last block
        run_calls(alternate(*tasks) if len(tasks) == 2 else [c for t in tasks for c in t])
        if self.bias_term and self.param_propagate_down[1]:
            self.blobs[1].diff += dy.sum(axis=0)

    # -- GPU: the same products on the device (cuBLAS through CuPy) ----------------
    def _gpu_weight_nk(self):
        w = self.blobs[0].gpu_data
        return w.T if self.transpose else w

    def forward_gpu(self, bottom, top):
        """Y = X W^T (+ b) with device matrices."""
        from ..gpu.backend import cupy_module
        cp = cupy_module()
        x = bottom[0].gpu_data.reshape(self.M, self.K)
        y = top[0].gpu_data.reshape(self.M, self.num_output)
        cp.matmul(x, self._gpu_weight_nk().T, out=y)
        if self.bias_term:
            y += self.blobs[1].gpu_data

    def backward_gpu(self, top, propagate_down, bottom):
        """dW += dY^T X (transpose: X^T dY), db += column sums of dY, dX = dY W."""
        from ..gpu.backend import cupy_module
        cp = cupy_module()
        dy = top[0].gpu_diff.reshape(self.M, self.num_output)
        if self.param_propagate_down[0]:
            x = bottom[0].gpu_data.reshape(self.M, self.K)
            dW = self.blobs[0].gpu_diff
            dW += cp.matmul(x.T, dy) if self.transpose else cp.matmul(dy.T, x)
        if self.bias_term and self.param_propagate_down[1]:
            db = self.blobs[1].gpu_diff
            db += dy.sum(axis=0)
        if propagate_down[0]:
            cp.matmul(dy, self._gpu_weight_nk(), out=bottom[0].gpu_diff.reshape(self.M, self.K))


@register_layer('Embed')
class EmbedLayer(Layer):
    """Embedding lookup (Caffe's EmbedLayer): a one-hot InnerProduct without the one-hot.

    bottom: indices, any shape S, values integers in [0, input_dim)
    top:    shape S + (num_output,)
    blobs:  W (input_dim, num_output) -- not transposed --, b (num_output) when bias_term.
    forward:  y[i] = W[x[i]] + b
    backward: dW[x[i]] += dy[i] (summed over repeated indices); db += sum_i dy[i];
              no gradient to the indices.

    Out-of-range indices: LRCN pads sentences with -1, and Caffe then reads memory
    outside W.  minicaffe instead treats any index outside [0, input_dim) (or not an
    integer) as an all-zero weight row: y[i] = b (0 without a bias), and such positions
    send no gradient to W (the bias still gets its usual gradient).
    """
    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom, top):
        p = self.layer_param.embed_param
        self.check(p.num_output > 0, 'embed_param { num_output } must be positive')
        self.check(p.input_dim > 0, 'embed_param { input_dim } must be positive')
        self.num_output, self.input_dim, self.bias_term = p.num_output, p.input_dim, p.bias_term
        if len(self.blobs) == 0:
            _add_learnable(self, (self.input_dim, self.num_output), p.weight_filler)
            if self.bias_term:
                _add_learnable(self, (self.num_output,), p.bias_filler)
        self.param_propagate_down = [True] * len(self.blobs)

    def allow_force_backward(self, bottom_index):
        return False

    def reshape(self, bottom, top):
        top[0].reshape(bottom[0].shape + (self.num_output,))

    def _indices(self, bottom):
        """Flat int indices and the mask of those inside [0, input_dim)."""
        raw = bottom[0].data.reshape(-1)
        idx = raw.astype(np.int64)
        valid = (idx >= 0) & (idx < self.input_dim) & (idx == raw)
        return np.where(valid, idx, 0), valid

    def forward(self, bottom, top):
        idx, valid = self._indices(bottom)
        y = top[0].data.reshape(-1, self.num_output)
        np.take(self.blobs[0].data, idx, axis=0, out=y)
        y[~valid] = 0
        if self.bias_term:
            y += self.blobs[1].data

    def backward(self, top, propagate_down, bottom):
        self.check(not propagate_down[0], 'Embed cannot backpropagate to its index input')
        dy = top[0].diff.reshape(-1, self.num_output)
        if self.param_propagate_down[0]:
            idx, valid = self._indices(bottom)
            np.add.at(self.blobs[0].diff, idx[valid], dy[valid])
        if self.bias_term and self.param_propagate_down[1]:
            self.blobs[1].diff += dy.sum(axis=0)

    # -- GPU: kernels/embed.cu (same out-of-range rule as above) -------------------
    def forward_gpu(self, bottom, top):
        """One thread per output value gathers its weight row entry (0 for an
        out-of-range index), then the bias is added."""
        from ..gpu.kernels import launch
        x = bottom[0].gpu_data
        y = top[0].gpu_data.reshape(-1, self.num_output)
        launch('embed', 'embed_forward', y.size,
               (y.size, x, self.blobs[0].gpu_data, self.input_dim, self.num_output, y))
        if self.bias_term:
            y += self.blobs[1].gpu_data

    def backward_gpu(self, top, propagate_down, bottom):
        """dW rows accumulate with atomicAdd (repeated indices add up); db += sum dy."""
        self.check(not propagate_down[0], 'Embed cannot backpropagate to its index input')
        from ..gpu.kernels import launch
        dy = top[0].gpu_diff.reshape(-1, self.num_output)
        if self.param_propagate_down[0]:
            launch('embed', 'embed_backward', dy.size,
                   (dy.size, bottom[0].gpu_data, dy, self.input_dim, self.num_output,
                    self.blobs[0].gpu_diff))
        if self.bias_term and self.param_propagate_down[1]:
            db = self.blobs[1].gpu_diff
            db += dy.sum(axis=0)


def softmax(x, axis, out=None):
    """Max-subtracted softmax of ``x`` along ``axis`` (float32, as Caffe computes it:
    the exponential is expf's; into ``out`` if given)."""
    e = np.subtract(x, x.max(axis=axis, keepdims=True), dtype=DTYPE, out=out)
    cmath.expf(e, out=e)
    e /= e.sum(axis=axis, keepdims=True)
    return e


def softmax_gpu(cp, x, y, copy=True):
    """Softmax over axis 1 of the device array x of shape (outer, C, inner) into y
    (same shape; ``copy=False`` when y already holds x, in place), with Caffe's
    kernels: channel max, subtract and exp, channel sum, divide."""
    from ..gpu.kernels import launch
    outer, channels, inner = x.shape
    n = outer * inner
    if copy:
        y[...] = x
    scale = cp.empty(n, dtype=np.float32)
    args = (outer, channels, inner)
    launch('softmax', 'channel_max', n, (n,) + args + (y, scale))
    launch('softmax', 'channel_subtract_exp', y.size, (y.size,) + args + (scale, y))
    launch('softmax', 'channel_sum', n, (n,) + args + (y, scale))
    launch('softmax', 'channel_div', y.size, (y.size,) + args + (scale, y))


@register_layer('Softmax')
class SoftmaxLayer(Layer):
    """Softmax along ``softmax_param { axis }`` (default 1).

    bottom: x, any shape with the softmax axis of size C
    top:    y = exp(x - max_c x) / sum_c exp(x - max_c x), same shape
    backward: dx = (dy - sum_c(dy * y)) * y
    """
    supports_in_place = True
    static_reshape = True
    exact_num_bottom = 1
    exact_num_top = 1

    def reshape(self, bottom, top):
        self.axis = _canonical_axis(self, bottom[0], self.layer_param.softmax_param.axis)
        top[0].reshape(bottom[0].shape)

    def forward(self, bottom, top):
        top[0].data[...] = softmax(bottom[0].data, self.axis)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        y, dy = top[0].data, top[0].diff
        dot = (dy * y).sum(axis=self.axis, keepdims=True)
        bottom[0].diff[...] = (dy - dot) * y

    # -- GPU: kernels/softmax.cu on the (outer, C, inner) view ------------------------
    def _dims(self, blob):
        s = blob.shape
        return blob.count_range(0, self.axis), s[self.axis], blob.count_range(self.axis + 1)

    def forward_gpu(self, bottom, top):
        """As forward, in Caffe's kernel steps (in place works: y is written from x)."""
        from ..gpu.backend import cupy_module
        dims = self._dims(bottom[0])
        softmax_gpu(cupy_module(), bottom[0].gpu_data.reshape(dims),
                    top[0].gpu_data.reshape(dims), copy=top[0] is not bottom[0])

    def backward_gpu(self, top, propagate_down, bottom):
        """dx = (dy - sum_c dy * y) * y; the channel dot runs in a kernel."""
        if not propagate_down[0]:
            return
        from ..gpu.backend import cupy_module
        from ..gpu.kernels import launch
        cp = cupy_module()
        outer, channels, inner = dims = self._dims(top[0])
        y = top[0].gpu_data.reshape(dims)
        dy = top[0].gpu_diff.reshape(dims)
        dot = cp.empty(outer * inner, dtype=np.float32)
        launch('softmax', 'channel_dot', dot.size, (dot.size, outer, channels, inner, dy, y, dot))
        dx = bottom[0].gpu_diff.reshape(dims)
        cp.subtract(dy, dot.reshape(outer, 1, inner), out=dx)
        dx *= y

