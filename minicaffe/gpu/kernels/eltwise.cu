// Eltwise MAX (Caffe's eltwise_layer.cu): the running max over bottoms and the
// index of the winning bottom; later bottoms must be strictly greater, except
// that bottom 1 wins a tie with bottom 0 (the first pair is compared with >).
#include "common.cuh"

KERNEL void max_forward(const int nthreads, const float* bottom_a, const float* bottom_b,
    const int blob_idx, float* top, int* mask) {
  CUDA_KERNEL_LOOP(index, nthreads) {
    float maxval = -FLT_MAX;
    int maxidx = -1;
    if (bottom_a[index] > bottom_b[index]) {
      // only update for very first bottom_data blob (blob_idx == 0)
      if (blob_idx == 0) {
        maxval = bottom_a[index];
        top[index] = maxval;
        maxidx = blob_idx;
        mask[index] = maxidx;
      }
    } else {
      maxval = bottom_b[index];
      top[index] = maxval;
      maxidx = blob_idx + 1;
      mask[index] = maxidx;
    }
  }
}

KERNEL void max_backward(const int nthreads, const float* top_diff, const int blob_idx,
    const int* mask, float* bottom_diff) {
  CUDA_KERNEL_LOOP(index, nthreads) {
    bottom_diff[index] = (mask[index] == blob_idx) ? top_diff[index] : 0.f;
  }
}
