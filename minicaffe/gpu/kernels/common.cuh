// Shared by every minicaffe kernel: Caffe's grid-stride loop (CUDA_KERNEL_LOOP).
//
// Built by nvcc (through cupy.RawModule) the kernels run on the GPU.  Built by a
// host C++ compiler with -DMINICAFFE_CPU_EMULATION the same sources become plain
// C functions: the grid-stride loop becomes a serial loop over every index and
// atomicAdd a plain add, so CI (which has no GPU) can run each kernel's logic and
// compare it with the NumPy layers.
#ifndef MINICAFFE_COMMON_CUH
#define MINICAFFE_COMMON_CUH

#ifdef MINICAFFE_CPU_EMULATION
#include <math.h>
#include <float.h>
#define KERNEL extern "C"
#define DEVICE static inline
#define CUDA_KERNEL_LOOP(i, n) for (long long i = 0; i < (long long)(n); ++i)
static inline float atomicAdd(float* address, float val) {
  float old = *address;
  *address = old + val;
  return old;
}
#else
#define KERNEL extern "C" __global__
#define DEVICE __device__ __forceinline__
#ifndef FLT_MAX
#define FLT_MAX 3.402823466e+38F
#endif
#ifndef FLT_MIN
#define FLT_MIN 1.175494351e-38F
#endif
// Every thread visits index, index + gridDim.x * blockDim.x, ... (any grid size works).
#define CUDA_KERNEL_LOOP(i, n)                                         \
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; \
       i < (long long)(n); i += (long long)blockDim.x * gridDim.x)
#endif

#endif  // MINICAFFE_COMMON_CUH
