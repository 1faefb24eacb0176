// 2-D max and average pooling, forward and backward (Caffe's pooling_layer.cu).
// Windows follow Caffe's rules: hstart = ph*stride - pad, hend = min(hstart+k, H+pad);
// AVE divides by the window size counted with padding, clipped at H + pad.
#include "common.cuh"

KERNEL void max_pool_forward(const int nthreads, const float* bottom, const int channels,
    const int height, const int width, const int pooled_h, const int pooled_w,
    const int kernel_h, const int kernel_w, const int stride_h, const int stride_w,
    const int pad_h, const int pad_w, float* top, int* mask) {
  CUDA_KERNEL_LOOP(index, nthreads) {
    const int pw = (int)(index % pooled_w);
    const int ph = (int)((index / pooled_w) % pooled_h);
    const int c = (int)((index / pooled_w / pooled_h) % channels);
    const int n = (int)(index / pooled_w / pooled_h / channels);
    int hstart = ph * stride_h - pad_h;
    int wstart = pw * stride_w - pad_w;
    const int hend = hstart + kernel_h < height ? hstart + kernel_h : height;
    const int wend = wstart + kernel_w < width ? wstart + kernel_w : width;
    hstart = hstart > 0 ? hstart : 0;
    wstart = wstart > 0 ? wstart : 0;
    float maxval = -FLT_MAX;
    int maxidx = -1;
    const float* slice = bottom + ((long long)n * channels + c) * height * width;
    for (int h = hstart; h < hend; ++h) {
      for (int w = wstart; w < wend; ++w) {
        if (slice[h * width + w] > maxval) {   // first maximum wins, as in Caffe
          maxidx = h * width + w;
          maxval = slice[maxidx];
        }
      }
    }
    top[index] = maxval;
    mask[index] = maxidx;
  }
}

KERNEL void max_pool_backward(const int nthreads, const float* top_diff, const int* mask,
    const int channels, const int height, const int width, const int pooled_h,
    const int pooled_w, const int kernel_h, const int kernel_w, const int stride_h,
    const int stride_w, const int pad_h, const int pad_w, float* bottom_diff) {
  // one thread per bottom element: sums the diffs of the windows whose argmax it is
  CUDA_KERNEL_LOOP(index, nthreads) {
    const int w = (int)(index % width);
    const int h = (int)((index / width) % height);
    const int c = (int)((index / width / height) % channels);
    const int n = (int)(index / width / height / channels);
    const int phstart = (h + pad_h < kernel_h) ? 0 : (h + pad_h - kernel_h) / stride_h + 1;
    const int phend = (h + pad_h) / stride_h + 1 < pooled_h ? (h + pad_h) / stride_h + 1 : pooled_h;
    const int pwstart = (w + pad_w < kernel_w) ? 0 : (w + pad_w - kernel_w) / stride_w + 1;
    const int pwend = (w + pad_w) / stride_w + 1 < pooled_w ? (w + pad_w) / stride_w + 1 : pooled_w;
    float gradient = 0;
    const long long offset = ((long long)n * channels + c) * pooled_h * pooled_w;
    for (int ph = phstart; ph < phend; ++ph) {
      for (int pw = pwstart; pw < pwend; ++pw) {
        if (mask[offset + ph * pooled_w + pw] == h * width + w) {
          gradient += top_diff[offset + ph * pooled_w + pw];
        }
      }
    }
    bottom_diff[index] = gradient;
  }
}

KERNEL void ave_pool_forward(const int nthreads, const float* bottom, const int channels,
    const int height, const int width, const int pooled_h, const int pooled_w,
    const int kernel_h, const int kernel_w, const int stride_h, const int stride_w,
    const int pad_h, const int pad_w, float* top) {
  CUDA_KERNEL_LOOP(index, nthreads) {
    const int pw = (int)(index % pooled_w);
    const int ph = (int)((index / pooled_w) % pooled_h);
    const int c = (int)((index / pooled_w / pooled_h) % channels);
    const int n = (int)(index / pooled_w / pooled_h / channels);
    int hstart = ph * stride_h - pad_h;
    int wstart = pw * stride_w - pad_w;
    int hend = hstart + kernel_h < height + pad_h ? hstart + kernel_h : height + pad_h;
    int wend = wstart + kernel_w < width + pad_w ? wstart + kernel_w : width + pad_w;
    const int pool_size = (hend - hstart) * (wend - wstart);
    hstart = hstart > 0 ? hstart : 0;
    wstart = wstart > 0 ? wstart : 0;
    hend = hend < height ? hend : height;
    wend = wend < width ? wend : width;
    float aveval = 0;
    const float* slice = bottom + ((long long)n * channels + c) * height * width;
    for (int h = hstart; h < hend; ++h) {
      for (int w = wstart; w < wend; ++w) {
        aveval += slice[h * width + w];
      }
    }
    top[index] = aveval / pool_size;
  }
}

KERNEL void ave_pool_backward(const int nthreads, const float* top_diff, const int channels,
    const int height, const int width, const int pooled_h, const int pooled_w,
    const int kernel_h, const int kernel_w, const int stride_h, const int stride_w,
    const int pad_h, const int pad_w, float* bottom_diff) {
  CUDA_KERNEL_LOOP(index, nthreads) {
    const int w = (int)(index % width) + pad_w;
    const int h = (int)((index / width) % height) + pad_h;
    const int c = (int)((index / width / height) % channels);
    const int n = (int)(index / width / height / channels);
    const int phstart = (h < kernel_h) ? 0 : (h - kernel_h) / stride_h + 1;
    const int phend = h / stride_h + 1 < pooled_h ? h / stride_h + 1 : pooled_h;
    const int pwstart = (w < kernel_w) ? 0 : (w - kernel_w) / stride_w + 1;
    const int pwend = w / stride_w + 1 < pooled_w ? w / stride_w + 1 : pooled_w;
    float gradient = 0;
    const float* slice = top_diff + ((long long)n * channels + c) * pooled_h * pooled_w;
    for (int ph = phstart; ph < phend; ++ph) {
      for (int pw = pwstart; pw < pwend; ++pw) {
        int hstart = ph * stride_h - pad_h;
        int wstart = pw * stride_w - pad_w;
        int hend = hstart + kernel_h < height + pad_h ? hstart + kernel_h : height + pad_h;
        int wend = wstart + kernel_w < width + pad_w ? wstart + kernel_w : width + pad_w;
        const int pool_size = (hend - hstart) * (wend - wstart);
        gradient += slice[ph * pooled_w + pw] / pool_size;
      }
    }
    bottom_diff[index] = gradient;
  }
}
