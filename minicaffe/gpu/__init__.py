"""The GPU side of minicaffe: CUDA kernels (``kernels/*.cu``) loaded with
``cupy.RawModule``.

backend.py finds CuPy (optional: the ``[cuda13]``/``[cuda12]`` extras); kernels.py
compiles and launches the kernels (im2col/col2im, pooling, LRN, softmax and its
loss, the fused LSTM unit, Embed, Eltwise MAX).  In GPU mode (set_mode_gpu) blobs
hold device arrays and minicaffe.mode dispatches each layer to its forward_gpu /
backward_gpu where it has one (CuPy array code elsewhere).  CI has no GPU: every
.cu compiles with nvcc, the same sources built for the CPU
(``MINICAFFE_CPU_EMULATION``) are compared with the NumPy layers, and the GPU
paths run against tests/fake_cupy.py.

Import direction: kernels and minicaffe.rng import backend; backend imports
neither (they register what reset() must clear through backend.on_reset).
"""
from .backend import available, require_cupy  # noqa: F401
from .kernels import KERNEL_DIR, kernel_files, load_module, launch  # noqa: F401
