// Cross-channel LRN (Caffe's lrn_layer.cu): scale = k + alpha/size * sum of squares
// over the channel window, top = bottom * scale^-beta, and the backward pass.
// One thread per (n, h, w) walks the channels with a running window sum.
#include "common.cuh"

KERNEL void lrn_fill_scale(const int nthreads, const float* in, const int num,
    const int channels, const int height, const int width, const int size,
    const float alpha_over_size, const float k, float* scale) {
  CUDA_KERNEL_LOOP(index, nthreads) {     // nthreads = num * height * width
    const int w = (int)(index % width);
    const int h = (int)((index / width) % height);
    const int n = (int)(index / width / height);
    const long long offset = ((long long)n * channels * height + h) * width + w;
    const long long step = (long long)height * width;
    const float* in_off = in + offset;
    float* scale_off = scale + offset;
    int head = 0;
    const int pre_pad = (size - 1) / 2;
    const int post_pad = size - pre_pad - 1;
    float accum_scale = 0;
    while (head < post_pad && head < channels) {   // fill the window
      accum_scale += in_off[head * step] * in_off[head * step];
      ++head;
    }
    while (head < channels) {                       // slide it
      accum_scale += in_off[head * step] * in_off[head * step];
      if (head - size >= 0) {
        accum_scale -= in_off[(head - size) * step] * in_off[(head - size) * step];
      }
      scale_off[(head - post_pad) * step] = k + accum_scale * alpha_over_size;
      ++head;
    }
    while (head < channels + post_pad) {            // drain it
      if (head - size >= 0) {
        accum_scale -= in_off[(head - size) * step] * in_off[(head - size) * step];
      }
      scale_off[(head - post_pad) * step] = k + accum_scale * alpha_over_size;
      ++head;
    }
  }
}

KERNEL void lrn_compute_output(const int nthreads, const float* in, const float* scale,
    const float negative_beta, float* out) {
  CUDA_KERNEL_LOOP(index, nthreads) {
    out[index] = in[index] * powf(scale[index], negative_beta);
  }
}

KERNEL void lrn_compute_diff(const int nthreads, const float* bottom_data,
    const float* top_data, const float* scale, const float* top_diff, const int num,
    const int channels, const int height, const int width, const int size,
    const float negative_beta, const float cache_ratio, float* bottom_diff) {
  CUDA_KERNEL_LOOP(index, nthreads) {     // nthreads = num * height * width
    const int w = (int)(index % width);
    const int h = (int)((index / width) % height);
    const int n = (int)(index / width / height);
    const long long offset = ((long long)n * channels * height + h) * width + w;
    const long long step = (long long)height * width;
    const float* bottom_off = bottom_data + offset;
    const float* top_off = top_data + offset;
    const float* scale_off = scale + offset;
    const float* top_diff_off = top_diff + offset;
    float* bottom_diff_off = bottom_diff + offset;
    int head = 0;
    const int pre_pad = size - (size + 1) / 2;
    const int post_pad = size - pre_pad - 1;
    float accum_ratio = 0;
    while (head < post_pad && head < channels) {
      accum_ratio += top_diff_off[head * step] * top_off[head * step] / scale_off[head * step];
      ++head;
    }
    while (head < channels) {
      accum_ratio += top_diff_off[head * step] * top_off[head * step] / scale_off[head * step];
      if (head - size >= 0) {
        accum_ratio -= top_diff_off[(head - size) * step] * top_off[(head - size) * step]
            / scale_off[(head - size) * step];
      }
      bottom_diff_off[(head - post_pad) * step] =
          top_diff_off[(head - post_pad) * step] * powf(scale_off[(head - post_pad) * step], negative_beta)
          - cache_ratio * bottom_off[(head - post_pad) * step] * accum_ratio;
      ++head;
    }
    while (head < channels + post_pad) {
      if (head - size >= 0) {
        accum_ratio -= top_diff_off[(head - size) * step] * top_off[(head - size) * step]
            / scale_off[(head - size) * step];
      }
      bottom_diff_off[(head - post_pad) * step] =
          top_diff_off[(head - post_pad) * step] * powf(scale_off[(head - post_pad) * step], negative_beta)
          - cache_ratio * bottom_off[(head - post_pad) * step] * accum_ratio;
      ++head;
    }
  }
}
