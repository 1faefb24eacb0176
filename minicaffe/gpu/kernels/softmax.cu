// Softmax over the channel axis of (outer, channels, inner) data and the softmax
// loss with ignore_label (Caffe's softmax_layer.cu, softmax_loss_layer.cu).
// A label outside [0, channels) that is not ignore_label gets count -1 (Caffe
// would read out of bounds); the layer turns that into an error.
#include "common.cuh"

// A label as Caffe reads it (static_cast<int>, truncating): -2 when it is the
// ignore_label, -1 when it lies outside [0, channels) (NaN and values beyond the
// int range included: the float is range-checked before the cast, which would be
// undefined for them), else the class index.
DEVICE int read_label(const float raw, const int channels, const int has_ignore_label,
    const int ignore_label) {
  if (!(raw >= -2147483648.f && raw < 2147483648.f)) {
    return -1;
  }
  const int v = (int)raw;
  if (has_ignore_label && v == ignore_label) {
    return -2;
  }
  return (v >= 0 && v < channels) ? v : -1;
}

KERNEL void channel_max(const int count, const int outer, const int channels,
    const int inner, const float* data, float* out) {
  CUDA_KERNEL_LOOP(index, count) {        // count = outer * inner
    const int n = (int)(index / inner);
    const int s = (int)(index % inner);
    float maxval = -FLT_MAX;
    for (int c = 0; c < channels; ++c) {
      const float v = data[((long long)n * channels + c) * inner + s];
      maxval = v > maxval ? v : maxval;
    }
    out[index] = maxval;
  }
}

KERNEL void channel_subtract_exp(const int count, const int outer, const int channels,
    const int inner, const float* channel_max, float* data) {
  CUDA_KERNEL_LOOP(index, count) {        // count = outer * channels * inner
    const int n = (int)(index / channels / inner);
    const int s = (int)(index % inner);
    data[index] = expf(data[index] - channel_max[n * inner + s]);
  }
}

KERNEL void channel_sum(const int count, const int outer, const int channels,
    const int inner, const float* data, float* channel_sum) {
  CUDA_KERNEL_LOOP(index, count) {
    const int n = (int)(index / inner);
    const int s = (int)(index % inner);
    float sum = 0;
    for (int c = 0; c < channels; ++c) {
      sum += data[((long long)n * channels + c) * inner + s];
    }
    channel_sum[index] = sum;
  }
}

KERNEL void channel_div(const int count, const int outer, const int channels,
    const int inner, const float* channel_sum, float* data) {
  CUDA_KERNEL_LOOP(index, count) {
    const int n = (int)(index / channels / inner);
    const int s = (int)(index % inner);
    data[index] /= channel_sum[n * inner + s];
  }
}

KERNEL void channel_dot(const int count, const int outer, const int channels,
    const int inner, const float* a, const float* b, float* dot) {
  CUDA_KERNEL_LOOP(index, count) {        // softmax backward: sum_c dy * y
    const int n = (int)(index / inner);
    const int s = (int)(index % inner);
    float d = 0;
    for (int c = 0; c < channels; ++c) {
      const long long i = ((long long)n * channels + c) * inner + s;
      d += a[i] * b[i];
    }
    dot[index] = d;
  }
}

KERNEL void softmax_loss_forward(const int nthreads, const float* prob, const float* label,
    float* loss, const int channels, const int inner, const int has_ignore_label,
    const int ignore_label, float* counts) {
  CUDA_KERNEL_LOOP(index, nthreads) {     // nthreads = outer * inner; summed afterwards
    const int n = (int)(index / inner);
    const int s = (int)(index % inner);
    const int label_value = read_label(label[index], channels, has_ignore_label, ignore_label);
    if (label_value == -2) {
      loss[index] = 0;
      counts[index] = 0;
    } else if (label_value == -1) {
      loss[index] = 0;        // Caffe reads out of bounds here; the layer reports
      counts[index] = -1;     // a count of -1 as a bad label instead
    } else {
      const float p = prob[((long long)n * channels + label_value) * inner + s];
      loss[index] = -logf(p > FLT_MIN ? p : FLT_MIN);
      counts[index] = 1;
    }
  }
}

KERNEL void softmax_loss_backward(const int nthreads, const float* label, float* bottom_diff,
    const int channels, const int inner, const int has_ignore_label, const int ignore_label,
    float* counts) {
  // bottom_diff holds prob on entry: subtract 1 at the label, zero ignored positions
  CUDA_KERNEL_LOOP(index, nthreads) {
    const int n = (int)(index / inner);
    const int s = (int)(index % inner);
    const int label_value = read_label(label[index], channels, has_ignore_label, ignore_label);
    if (label_value == -2) {
      for (int c = 0; c < channels; ++c) {
        bottom_diff[((long long)n * channels + c) * inner + s] = 0;
      }
      counts[index] = 0;
    } else if (label_value == -1) {
      counts[index] = -1;
    } else {
      bottom_diff[((long long)n * channels + label_value) * inner + s] -= 1;
      counts[index] = 1;
    }
  }
}
