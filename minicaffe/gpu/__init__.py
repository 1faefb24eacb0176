"""The GPU side of minicaffe: CUDA kernels (``kernels/*.cu``) loaded with
``cupy.RawModule``.

Status: the kernels for im2col/col2im, max/average pooling, cross-channel LRN,
softmax and softmax loss, the fused LSTM unit, Embed and Eltwise MAX are written
and checked in CI without a GPU (every file compiles with nvcc for sm_80/sm_90,
and the same sources built for the CPU with ``MINICAFFE_CPU_EMULATION`` are
compared with the NumPy layers).  Blobs with device memory and the layers'
device dispatch are not wired yet, so :func:`minicaffe.set_mode_gpu` still
refuses with a clear error.
"""
from .backend import available, require_cupy  # noqa: F401
from .kernels import KERNEL_DIR, kernel_files, load_module, launch  # noqa: F401
