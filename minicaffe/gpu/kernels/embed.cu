// Embedding lookup (Caffe's embed_layer.cu).  An index outside [0, input_dim)
// (LRCN pads with -1), or one that is not an integer, reads as an all-zero row
// and sends no gradient, as the CPU layer documents.
#include "common.cuh"

// The row an index value selects, or -1 when it selects none.  The float is
// range-checked before the cast (a cast of NaN or of a value beyond the int range
// is undefined), then must convert back exactly (2.5 selects nothing).
DEVICE int embed_row(const float raw, const int input_dim) {
  if (!(raw >= 0.f && raw < 2147483648.f)) {
    return -1;
  }
  const int index = (int)raw;
  return (index < input_dim && (float)index == raw) ? index : -1;
}

KERNEL void embed_forward(const int nthreads, const float* bottom, const float* weight,
    const int input_dim, const int num_output, float* top) {
  CUDA_KERNEL_LOOP(top_index, nthreads) {  // nthreads = M * num_output
    const long long n = top_index / num_output;
    const int d = (int)(top_index % num_output);
    const int index = embed_row(bottom[n], input_dim);
    top[top_index] = index >= 0 ? weight[(long long)index * num_output + d] : 0.f;
  }
}

// weight_diff += dy at each selected row; repeated indices meet in atomicAdd
// (the order of the additions, so the last bits of a sum, may vary run to run).
KERNEL void embed_backward(const int nthreads, const float* bottom, const float* top_diff,
    const int input_dim, const int num_output, float* weight_diff) {
  CUDA_KERNEL_LOOP(top_index, nthreads) {
    const long long n = top_index / num_output;
    const int d = (int)(top_index % num_output);
    const int index = embed_row(bottom[n], input_dim);
    if (index >= 0) {
      atomicAdd(weight_diff + (long long)index * num_output + d, top_diff[top_index]);
    }
  }
}
