// The LSTM unit, fused (Caffe's lstm_unit_layer.cu): X holds the gate
// pre-activations (i, f, o, g blocks of H per stream), cont zeroes the forget gate.
// Caffe's sigmoid takes a float exp and divides in double; tanh is 2 sigmoid(2x) - 1
// evaluated in double; both are kept so the numbers match the CPU path.
#include "common.cuh"

DEVICE float lstm_sigmoid(const float x) {
  return (float)(1. / (1. + (double)expf(-x)));
}

DEVICE float lstm_tanh(const float x) {
  return (float)(2. / (1. + exp(-2. * (double)x)) - 1.);
}

KERNEL void lstm_unit_forward(const int nthreads, const int dim, const float* C_prev,
    const float* X, const float* cont, float* C, float* H) {
  CUDA_KERNEL_LOOP(index, nthreads) {     // nthreads = N * dim
    const int n = (int)(index / dim);
    const int d = (int)(index % dim);
    const float* x = X + 4LL * dim * n;
    const float i = lstm_sigmoid(x[d]);
    const float f = (cont[n] == 0) ? 0.f : cont[n] * lstm_sigmoid(x[dim + d]);
    const float o = lstm_sigmoid(x[2 * dim + d]);
    const float g = lstm_tanh(x[3 * dim + d]);
    const float c = f * C_prev[index] + i * g;
    C[index] = c;
    H[index] = o * lstm_tanh(c);
  }
}

KERNEL void lstm_unit_backward(const int nthreads, const int dim, const float* C_prev,
    const float* X, const float* C, const float* cont, const float* C_diff,
    const float* H_diff, float* C_prev_diff, float* X_diff) {
  CUDA_KERNEL_LOOP(index, nthreads) {
    const int n = (int)(index / dim);
    const int d = (int)(index % dim);
    const float* x = X + 4LL * dim * n;
    const float i = lstm_sigmoid(x[d]);
    const float f = (cont[n] == 0) ? 0.f : cont[n] * lstm_sigmoid(x[dim + d]);
    const float o = lstm_sigmoid(x[2 * dim + d]);
    const float g = lstm_tanh(x[3 * dim + d]);
    const float c_prev = C_prev[index];
    const float tanh_c = lstm_tanh(C[index]);
    float* xd = X_diff + 4LL * dim * n;
    const float c_term_diff = C_diff[index] + H_diff[index] * o * (1 - tanh_c * tanh_c);
    C_prev_diff[index] = c_term_diff * f;
    xd[d] = c_term_diff * g * i * (1 - i);
    xd[dim + d] = c_term_diff * c_prev * f * (1 - f);
    xd[2 * dim + d] = H_diff[index] * tanh_c * o * (1 - o);
    xd[3 * dim + d] = c_term_diff * i * (1 - g * g);
  }
}
