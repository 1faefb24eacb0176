"""The CUDA kernels without a GPU: each .cu compiles with nvcc, and the same sources
built for the CPU (MINICAFFE_CPU_EMULATION: the grid-stride loop becomes a plain
loop) reproduce Caffe's numbers on the conformance inputs -- the only way CI sees
the kernels' arithmetic."""
import ctypes
import shutil
import subprocess

import h5py
import numpy as np
import pytest

from conformance import CONFORMANCE
from minicaffe.gpu.kernels import KERNEL_DIR, kernel_files

NVCC = shutil.which('nvcc')
CXX = shutil.which('g++') or shutil.which('c++')
F32P = np.ctypeslib.ndpointer(np.float32, flags='C_CONTIGUOUS')
I32P = np.ctypeslib.ndpointer(np.int32, flags='C_CONTIGUOUS')


def test_kernel_sources_present():
    names = {p.rsplit('/', 1)[-1] for p in kernel_files()}
    assert {'im2col.cu', 'pooling.cu', 'lrn.cu', 'softmax.cu', 'lstm_unit.cu',
            'embed.cu', 'eltwise.cu'} <= names


@pytest.mark.skipif(NVCC is None, reason='nvcc is not installed on this machine')
@pytest.mark.parametrize('arch', ['sm_80', 'sm_90'])
@pytest.mark.parametrize('path', kernel_files(), ids=lambda p: p.rsplit('/', 1)[-1])
def test_kernel_compiles_with_nvcc(path, arch, tmp_path):
    out = tmp_path / 'k.ptx'
    r = subprocess.run([NVCC, '-arch=' + arch, '--std=c++14', '--ptx', '-I', KERNEL_DIR,
                        '-o', str(out), path], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert out.stat().st_size > 0


@pytest.fixture(scope='module')
def lib(tmp_path_factory):
    if CXX is None:
        pytest.skip('no C++ compiler for the CPU emulation build')
    d = tmp_path_factory.mktemp('emu')
    src = d / 'all_kernels.cpp'
    src.write_text(''.join('#include "%s"\n' % p for p in kernel_files()))
    so = d / 'kernels.so'
    r = subprocess.run([CXX, '-O1', '-x', 'c++', '-DMINICAFFE_CPU_EMULATION', '-shared', '-fPIC',
                        '-I', KERNEL_DIR, '-o', str(so), str(src)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return ctypes.CDLL(str(so))


def call(lib, name, *args):
    conv = []
    for a in args:
        if isinstance(a, np.ndarray):
            assert a.flags.c_contiguous and a.dtype in (np.float32, np.int32)
            conv.append(a.ctypes.data_as(ctypes.c_void_p))
        elif isinstance(a, float):
            conv.append(ctypes.c_float(a))
        else:
            conv.append(ctypes.c_int(int(a)))
    getattr(lib, name)(*conv)


def ref(case):
    return h5py.File(CONFORMANCE / 'layers' / case / 'ref.h5', 'r')


def close(ours, want, rtol=1e-5, atol=1e-6):
    np.testing.assert_allclose(ours, want, rtol=rtol, atol=atol)


def test_im2col_and_col2im_match_numpy(lib):
    from minicaffe.im2col import col2im, im2col
    rng = np.random.default_rng(0)
    C, H, W, kh, kw, ph, pw, sh, sw, dh, dw = 3, 7, 6, 3, 2, 1, 0, 2, 1, 1, 2
    x = rng.standard_normal((1, C, H, W)).astype(np.float32)
    oh = (H + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
    ow = (W + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    col = np.zeros((C * kh * kw, oh * ow), np.float32)
    call(lib, 'im2col_gpu_kernel', C * oh * ow, np.ascontiguousarray(x[0]), H, W, kh, kw, ph, pw,
         sh, sw, dh, dw, oh, ow, col)
    want = im2col(x, (kh, kw), (sh, sw), (ph, pw), (dh, dw)).reshape(C * kh * kw, -1)
    np.testing.assert_array_equal(col, want)
    back = np.zeros((C, H, W), np.float32)
    call(lib, 'col2im_gpu_kernel', C * H * W, col, H, W, C, kh, kw, ph, pw, sh, sw, dh, dw,
         oh, ow, back)
    want_back = col2im(col.reshape((1, C, kh, kw, oh, ow)), (H, W), (kh, kw), (sh, sw),
                       (ph, pw), (dh, dw))
    close(back, np.asarray(want_back).reshape(C, H, W))


@pytest.mark.parametrize('case,mode', [('pool_max_pad', 'max'), ('pool_ave_pad', 'ave')])
def test_pooling_matches_caffe(lib, case, mode):
    f = ref(case)
    x = f['input/x'][()]
    y_ref, dy, dx_ref = f['data/y'][()], f['diff/y'][()], f['diff/x'][()]
    N, C, H, W = x.shape
    PH, PW = y_ref.shape[2:]
    geom = (3, 3, 2, 2, 1, 1)
    y = np.zeros_like(y_ref)
    dx = np.zeros_like(x)
    if mode == 'max':
        mask = np.zeros(y.shape, np.int32)
        call(lib, 'max_pool_forward', y.size, x, C, H, W, PH, PW, *geom, y, mask)
        call(lib, 'max_pool_backward', x.size, np.ascontiguousarray(dy), mask, C, H, W, PH, PW,
             *geom, dx)
    else:
        call(lib, 'ave_pool_forward', y.size, x, C, H, W, PH, PW, *geom, y)
        call(lib, 'ave_pool_backward', x.size, np.ascontiguousarray(dy), C, H, W, PH, PW, *geom, dx)
    close(y, y_ref)
    close(dx, dx_ref)


def test_lrn_across_channels_matches_caffe(lib):
    f = ref('lrn_across')
    x, y_ref = f['input/x'][()], f['data/y'][()]
    dy, dx_ref = np.ascontiguousarray(f['diff/y'][()]), f['diff/x'][()]
    N, C, H, W = x.shape
    size, alpha, beta, k = 5, 0.1, 0.75, 1.0
    scale = np.zeros_like(x)
    y = np.zeros_like(x)
    call(lib, 'lrn_fill_scale', N * H * W, x, N, C, H, W, size, alpha / size, k, scale)
    call(lib, 'lrn_compute_output', x.size, x, scale, -beta, y)
    close(y, y_ref)
    dx = np.zeros_like(x)
    call(lib, 'lrn_compute_diff', N * H * W, x, y, scale, dy, N, C, H, W, size, -beta,
         2.0 * alpha * beta / size, dx)
    close(dx, dx_ref)


def test_softmax_loss_matches_caffe(lib):
    f = ref('softmax_loss_ignore_valid')
    x, label = f['input/x'][()], np.ascontiguousarray(f['input/label'][()])
    N, C, H, W = x.shape
    inner = H * W
    prob = x.copy()
    cmax = np.zeros((N, inner), np.float32)
    csum = np.zeros((N, inner), np.float32)
    call(lib, 'channel_max', N * inner, N, C, inner, prob, cmax)
    call(lib, 'channel_subtract_exp', prob.size, N, C, inner, cmax, prob)
    call(lib, 'channel_sum', N * inner, N, C, inner, prob, csum)
    call(lib, 'channel_div', prob.size, N, C, inner, csum, prob)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    close(prob, e / e.sum(axis=1, keepdims=True))
    loss = np.zeros((N, inner), np.float32)
    counts = np.zeros((N, inner), np.float32)
    call(lib, 'softmax_loss_forward', N * inner, prob, label, loss, C, inner, 1, 2, counts)
    close(loss.sum() / counts.sum(), f['data/loss'][()])
    diff = prob.copy()
    call(lib, 'softmax_loss_backward', N * inner, label, diff, C, inner, 1, 2, counts)
    # the reference ran no backward into the Input blob: compare with the NumPy layer
    from minicaffe.gradcheck import make_layer
    layer, bottom, top = make_layer('type: "SoftmaxWithLoss" loss_param { ignore_label: 2 '
                                    'normalization: VALID }', [x, label])
    layer.forward(bottom, top)
    top[0].diff[...] = 1.0
    layer.backward(top, [True, False], bottom)
    close(diff / counts.sum(), bottom[0].diff)      # loss weight 1, VALID normalization


def test_lstm_unit_matches_caffe(lib):
    f = ref('lstm_unit')
    c_prev, gates = f['input/c_prev'][()], f['input/gates'][()]
    cont = np.ascontiguousarray(f['input/cont1'][()])
    N, H = c_prev.shape[1], c_prev.shape[2]
    c = np.zeros_like(c_prev)
    h = np.zeros_like(c_prev)
    call(lib, 'lstm_unit_forward', N * H, H, c_prev, gates, cont, c, h)
    close(c, f['data/c'][()])
    close(h, f['data/h'][()])
    dc_prev = np.zeros_like(c_prev)
    dgates = np.zeros_like(gates)
    call(lib, 'lstm_unit_backward', N * H, H, c_prev, gates, c, cont,
         np.ascontiguousarray(f['diff/c'][()]), np.ascontiguousarray(f['diff/h'][()]),
         dc_prev, dgates)
    close(dc_prev, f['diff/c_prev'][()])
    close(dgates, f['diff/gates'][()])


def test_embed_matches_caffe_and_skips_out_of_range(lib):
    f = ref('embed')
    x = f['input/x'][()]
    W, b = f['param/embed/0'][()], f['param/embed/1'][()]
    M, D = x.size, W.shape[1]
    y = np.zeros((M, D), np.float32)
    call(lib, 'embed_forward', M * D, np.ascontiguousarray(x.reshape(-1)), W, W.shape[0], D, y)
    close(y + b, f['data/y'][()].reshape(M, D))
    dW = np.zeros_like(W)
    dy = np.ascontiguousarray(f['diff/y'][()].reshape(M, D))
    call(lib, 'embed_backward', M * D, np.ascontiguousarray(x.reshape(-1)), dy, W.shape[0], D, dW)
    close(dW, f['param_diff/embed/0'][()])
    # -1 padding and too-large indices: zero rows, no gradient (the CPU layer's rule)
    bad = np.array([-1, 7, 2], np.float32)
    y = np.ones((3, D), np.float32)
    call(lib, 'embed_forward', 3 * D, bad, W, W.shape[0], D, y)
    assert not y[:2].any() and np.array_equal(y[2], W[2])
    dW = np.zeros_like(W)
    call(lib, 'embed_backward', 3 * D, bad, np.ones((3, D), np.float32), W.shape[0], D, dW)
    assert np.array_equal(dW.sum(axis=1) != 0, np.arange(W.shape[0]) == 2)


def test_eltwise_max_matches_caffe(lib):
    f = ref('eltwise_max')
    a, b = f['input/a'][()], f['input/b'][()]
    y = np.zeros_like(a)
    mask = np.full(a.shape, -1, np.int32)
    call(lib, 'max_forward', a.size, a, b, 0, y, mask)
    close(y, f['data/y'][()])
    dy = np.ascontiguousarray(f['diff/y'][()])
    for i, name in enumerate('ab'):
        d = np.zeros_like(a)
        call(lib, 'max_backward', a.size, dy, i, mask, d)
        close(d, f['diff/' + name][()])


def test_gpu_mode_without_cupy_is_a_clear_error():
    import minicaffe as caffe
    from minicaffe.errors import MinicaffeError
    with pytest.raises(MinicaffeError, match='CuPy|device|GPU'):
        caffe.set_mode_gpu()
    caffe.set_mode_cpu()
