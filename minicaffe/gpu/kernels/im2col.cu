// im2col / col2im (Caffe's im2col.cu): the 2-D kernels, then the N-D ones.
// The 2-D kernels take a batch of images as B * C channels (the columns of
// consecutive images are consecutive).
// col has shape (channels * kernel_h * kernel_w, height_col * width_col).
#include "common.cuh"

KERNEL void im2col_gpu_kernel(const int n, const float* data_im, const int height,
    const int width, const int kernel_h, const int kernel_w, const int pad_h,
    const int pad_w, const int stride_h, const int stride_w, const int dilation_h,
    const int dilation_w, const int height_col, const int width_col, float* data_col) {
  // one thread per (channel, output row, output column): copies kernel_h*kernel_w values
  CUDA_KERNEL_LOOP(index, n) {
    const int h_index = (int)(index / width_col);
    const int h_col = h_index % height_col;
    const int w_col = (int)(index % width_col);
    const int c_im = h_index / height_col;
    const int c_col = c_im * kernel_h * kernel_w;
    const int h_offset = h_col * stride_h - pad_h;
    const int w_offset = w_col * stride_w - pad_w;
    float* col = data_col + ((long long)c_col * height_col + h_col) * width_col + w_col;
    const float* im = data_im + ((long long)c_im * height + h_offset) * width + w_offset;
    for (int i = 0; i < kernel_h; ++i) {
      for (int j = 0; j < kernel_w; ++j) {
        const int h_im = h_offset + i * dilation_h;
        const int w_im = w_offset + j * dilation_w;
        *col = (h_im >= 0 && w_im >= 0 && h_im < height && w_im < width)
            ? im[i * dilation_h * width + j * dilation_w] : 0.f;
        col += (long long)height_col * width_col;
      }
    }
  }
}

KERNEL void col2im_gpu_kernel(const int n, const float* data_col, const int height,
    const int width, const int channels, const int kernel_h, const int kernel_w,
    const int pad_h, const int pad_w, const int stride_h, const int stride_w,
    const int dilation_h, const int dilation_w, const int height_col, const int width_col,
    float* data_im) {
  // one thread per image element: gathers every column entry that came from it
  // (no atomics needed), summed in Caffe's order.
  CUDA_KERNEL_LOOP(index, n) {
    float val = 0;
    const int w_im = (int)(index % width) + pad_w;
    const int h_im = (int)((index / width) % height) + pad_h;
    const int c_im = (int)(index / ((long long)width * height));
    const int kernel_extent_w = (kernel_w - 1) * dilation_w + 1;
    const int kernel_extent_h = (kernel_h - 1) * dilation_h + 1;
    const int w_col_start = (w_im < kernel_extent_w) ? 0 : (w_im - kernel_extent_w) / stride_w + 1;
    const int w_col_end = w_im / stride_w + 1 < width_col ? w_im / stride_w + 1 : width_col;
    const int h_col_start = (h_im < kernel_extent_h) ? 0 : (h_im - kernel_extent_h) / stride_h + 1;
    const int h_col_end = h_im / stride_h + 1 < height_col ? h_im / stride_h + 1 : height_col;
    for (int h_col = h_col_start; h_col < h_col_end; h_col += 1) {
      for (int w_col = w_col_start; w_col < w_col_end; w_col += 1) {
        int h_k = (h_im - h_col * stride_h);
        int w_k = (w_im - w_col * stride_w);
        if (h_k % dilation_h == 0 && w_k % dilation_w == 0) {
          h_k /= dilation_h;
          w_k /= dilation_w;
          const long long data_col_index =
              ((((long long)c_im * kernel_h + h_k) * kernel_w + w_k) * height_col + h_col)
              * width_col + w_col;
          val += data_col[data_col_index];
        }
      }
    }
    data_im[index] = val;
  }
}

// N-D im2col / col2im (Caffe's im2col_nd_gpu / col2im_nd_gpu) for any number
// of spatial axes up to MAX_SPATIAL_AXES.  geom holds 6 * num_axes ints:
// input sizes, output (column) sizes, kernel, pad, stride, dilation.
// Columns: row (channel, kernel offset), column output position, row-major.
#define MAX_SPATIAL_AXES 8

KERNEL void im2col_nd_kernel(const int n, const int num_axes, const float* data_im,
    const int* geom, float* data_col) {
  // one thread per (channel, output position); n = channels * prod(col sizes)
  CUDA_KERNEL_LOOP(index, n) {
    const int* im_shape = geom;
    const int* col_shape = geom + num_axes;
    const int* kernel = geom + 2 * num_axes;
    const int* pad = geom + 3 * num_axes;
    const int* stride = geom + 4 * num_axes;
    const int* dilation = geom + 5 * num_axes;
    int out_pos[MAX_SPATIAL_AXES];
    long long col_count = 1, im_count = 1, kernel_count = 1;
    for (int d = 0; d < num_axes; ++d) {
      col_count *= col_shape[d];
      im_count *= im_shape[d];
      kernel_count *= kernel[d];
    }
    long long rem = index;
    for (int d = num_axes - 1; d >= 0; --d) {
      out_pos[d] = (int)(rem % col_shape[d]);
      rem /= col_shape[d];
    }
    const long long c = rem;
    const long long pos = index % col_count;
    const float* im = data_im + c * im_count;
    for (long long k = 0; k < kernel_count; ++k) {
      long long kr = k;
      long long im_off = 0;
      int inside = 1;
      int k_pos[MAX_SPATIAL_AXES];
      for (int d = num_axes - 1; d >= 0; --d) {
        k_pos[d] = (int)(kr % kernel[d]);
        kr /= kernel[d];
      }
      for (int d = 0; d < num_axes; ++d) {
        const int p = out_pos[d] * stride[d] - pad[d] + k_pos[d] * dilation[d];
        inside = inside && p >= 0 && p < im_shape[d];
        im_off = im_off * im_shape[d] + p;
      }
      data_col[(c * kernel_count + k) * col_count + pos] = inside ? im[im_off] : 0.f;
    }
  }
}

KERNEL void col2im_nd_kernel(const int n, const int num_axes, const float* data_col,
    const int* geom, float* data_im) {
  // one thread per image element: sums the column entries taken from it,
  // kernel offsets in ascending order; n = channels * prod(input sizes)
  CUDA_KERNEL_LOOP(index, n) {
    const int* im_shape = geom;
    const int* col_shape = geom + num_axes;
    const int* kernel = geom + 2 * num_axes;
    const int* pad = geom + 3 * num_axes;
    const int* stride = geom + 4 * num_axes;
    const int* dilation = geom + 5 * num_axes;
    int im_pos[MAX_SPATIAL_AXES];
    long long col_count = 1, kernel_count = 1;
    for (int d = 0; d < num_axes; ++d) {
      col_count *= col_shape[d];
      kernel_count *= kernel[d];
    }
    long long rem = index;
    for (int d = num_axes - 1; d >= 0; --d) {
      im_pos[d] = (int)(rem % im_shape[d]);
      rem /= im_shape[d];
    }
    const long long c = rem;
    float val = 0;
    for (long long k = 0; k < kernel_count; ++k) {
      long long kr = k;
      int k_pos[MAX_SPATIAL_AXES];
      for (int d = num_axes - 1; d >= 0; --d) {
        k_pos[d] = (int)(kr % kernel[d]);
        kr /= kernel[d];
      }
      long long col_off = 0;
      int ok = 1;
      for (int d = 0; d < num_axes && ok; ++d) {
        int q = im_pos[d] + pad[d] - k_pos[d] * dilation[d];
        if (q < 0 || q % stride[d] != 0) {
          ok = 0;
        } else {
          q /= stride[d];
          if (q >= col_shape[d]) {
            ok = 0;
          } else {
            col_off = col_off * col_shape[d] + q;
          }
        }
      }
      if (ok) {
        val += data_col[(c * kernel_count + k) * col_count + col_off];
      }
    }
    data_im[index] = val;
  }
}
