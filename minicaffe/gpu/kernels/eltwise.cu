// Eltwise MAX (Caffe's eltwise_layer.cu): the running max over bottoms and the
// index of the winning bottom.  Called with (bottom 0, bottom 1, 0) first, then
// (top, bottom i, i - 1) for i >= 2.  Ties follow Caffe's CPU rule, which the
// CPU layer implements: bottom 1 wins a tie with bottom 0, a later bottom must
// be strictly greater (Caffe's own GPU kernel lets later bottoms win ties;
// the values are the same, only the gradient routing of exact ties differs).
#include "common.cuh"

KERNEL void max_forward(const int nthreads, const float* bottom_a, const float* bottom_b,
    const int blob_idx, float* top, int* mask) {
  CUDA_KERNEL_LOOP(index, nthreads) {
    const float a = bottom_a[index];
    const float b = bottom_b[index];
    if (blob_idx == 0) {
      if (a > b) {
        top[index] = a;
        mask[index] = 0;
      } else {
        top[index] = b;
        mask[index] = 1;
      }
    } else if (b > a) {
      top[index] = b;
      mask[index] = blob_idx + 1;
    }
  }
}

KERNEL void max_backward(const int nthreads, const float* top_diff, const int blob_idx,
    const int* mask, float* bottom_diff) {
  CUDA_KERNEL_LOOP(index, nthreads) {
    bottom_diff[index] = (mask[index] == blob_idx) ? top_diff[index] : 0.f;
  }
}
