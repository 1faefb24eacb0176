// Embedding lookup (Caffe's embed_layer.cu).  An index outside [0, input_dim)
// (LRCN pads with -1) reads as an all-zero row and sends no gradient, as the
// CPU layer documents.
#include "common.cuh"

KERNEL void embed_forward(const int nthreads, const float* bottom, const float* weight,
    const int input_dim, const int num_output, float* top) {
  CUDA_KERNEL_LOOP(top_index, nthreads) {  // nthreads = M * num_output
    const int n = (int)(top_index / num_output);
    const int d = (int)(top_index % num_output);
    const float raw = bottom[n];
    const int index = (int)raw;
    const int valid = index >= 0 && index < input_dim && (float)index == raw;
    top[top_index] = valid ? weight[(long long)index * num_output + d] : 0.f;
  }
}

KERNEL void embed_backward(const int nthreads, const float* bottom, const float* top_diff,
    const int input_dim, const int num_output, float* weight_diff) {
  CUDA_KERNEL_LOOP(top_index, nthreads) {
    const int n = (int)(top_index / num_output);
    const int d = (int)(top_index % num_output);
    const float raw = bottom[n];
    const int index = (int)raw;
    if (index >= 0 && index < input_dim && (float)index == raw) {
      atomicAdd(weight_diff + (long long)index * num_output + d, top_diff[top_index]);
    }
  }
}
