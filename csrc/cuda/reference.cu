// reference.cu — direct convolution on the GPU, written to be obviously correct: the oracle of
// every fast CUDA kernel (the CPU reference, csrc/cpu/reference.cpp, is the oracle of this one).
//
//   nvcc -std=c++17 -arch=sm_90 -I csrc -c csrc/cuda/reference.cu      (or: make cuda-check)
//
// Each pass is the formula of conv_params.h with any element strides (NCHW, NHWC or other),
// every stride/padding/dilation/groups, any dtype; sums in float (double for double), in a
// fixed order, so every run gives the same bits. Indices are 64-bit throughout.
//   forward          one thread per y element (grid-stride), gathers over c, r, s
//   backward-input   one thread per dx element, gathers the outputs that read it (no atomics)
//                    (both number their elements in memory order, NCHW or channels_last, so a
//                    warp's stores are coalesced either way)
//   backward-weight  one block per dw element: each thread sums a strided slice of (n, p, q),
//                    then a shared-memory tree reduction in a fixed order
//   backward-bias    one block per channel, the same reduction
// Slow (no data reuse beyond the caches), but every case goes through it correctly.
#include "common.cuh"
#include "launch.cuh"

namespace conv_ext {
namespace cuda {
namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kThreads) forward_kernel(Conv2dParams p, const T* __restrict__ x,
                                                           const T* __restrict__ w,
                                                           const T* __restrict__ bias, T* __restrict__ y) {
  using A = acc_t<T>;
  const int64_t Cg = p.Cg(), Kg = p.Kg();
  const int64_t total = p.N * p.K * p.P * p.Q;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    // i -> (n, k, oh, ow): ow fastest, or k fastest when y is channels_last (coalesced stores)
    int64_t n, k, oh, ow;
    if (p.ys_k == 1) k = i % p.K, ow = (i / p.K) % p.Q, oh = (i / (p.K * p.Q)) % p.P, n = i / (p.K * p.Q * p.P);
    else ow = i % p.Q, oh = (i / p.Q) % p.P, k = (i / (p.Q * p.P)) % p.K, n = i / (p.Q * p.P * p.K);
    const int64_t g = k / Kg;
    A sum = bias ? to_acc<A>(bias[k]) : A(0);
    for (int64_t c = 0; c < Cg; ++c)
      for (int64_t r = 0; r < p.R; ++r) {
        const int64_t ih = oh * p.stride_h - p.pad_h + r * p.dil_h;
        if (ih < 0 || ih >= p.H) continue;  // zero padding
        for (int64_t s = 0; s < p.S; ++s) {
          const int64_t iw = ow * p.stride_w - p.pad_w + s * p.dil_w;
          if (iw < 0 || iw >= p.W) continue;
          sum += to_acc<A>(x[n * p.xs_n + (g * Cg + c) * p.xs_c + ih * p.xs_h + iw * p.xs_w]) *
                 to_acc<A>(w[k * p.ws_k + c * p.ws_c + r * p.ws_r + s * p.ws_s]);
        }
      }
    y[n * p.ys_n + k * p.ys_k + oh * p.ys_p + ow * p.ys_q] = from_acc<T>(sum);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) backward_input_kernel(Conv2dParams p, const T* __restrict__ dy,
                                                                  const T* __restrict__ w, T* __restrict__ dx) {
  using A = acc_t<T>;
  const int64_t Cg = p.Cg(), Kg = p.Kg();
  const int64_t total = p.N * p.C * p.H * p.W;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    // i -> (n, c, ih, iw): iw fastest, or c fastest when dx is channels_last
    int64_t n, c, ih, iw;
    if (p.xs_c == 1) c = i % p.C, iw = (i / p.C) % p.W, ih = (i / (p.C * p.W)) % p.H, n = i / (p.C * p.W * p.H);
    else iw = i % p.W, ih = (i / p.W) % p.H, c = (i / (p.W * p.H)) % p.C, n = i / (p.W * p.H * p.C);
    const int64_t g = c / Cg, cg = c % Cg;
    A sum = 0;
    for (int64_t k = g * Kg; k < (g + 1) * Kg; ++k)
      for (int64_t r = 0; r < p.R; ++r) {
        // input row ih was read by output row oh when oh*stride_h - pad_h + r*dil_h == ih
        const int64_t th = ih + p.pad_h - r * p.dil_h;
        if (th < 0 || th % p.stride_h != 0) continue;
        const int64_t oh = th / p.stride_h;
        if (oh >= p.P) continue;
        for (int64_t s = 0; s < p.S; ++s) {
          const int64_t tw = iw + p.pad_w - s * p.dil_w;
          if (tw < 0 || tw % p.stride_w != 0) continue;
          const int64_t ow = tw / p.stride_w;
          if (ow >= p.Q) continue;
          sum += to_acc<A>(dy[n * p.ys_n + k * p.ys_k + oh * p.ys_p + ow * p.ys_q]) *
                 to_acc<A>(w[k * p.ws_k + cg * p.ws_c + r * p.ws_r + s * p.ws_s]);
        }
      }
    dx[n * p.xs_n + c * p.xs_c + ih * p.xs_h + iw * p.xs_w] = from_acc<T>(sum);
  }
}

// Sum of the kThreads values in `part` (shared), in a fixed tree order; the result in part[0].
template <typename A>
__device__ void block_tree_sum(A* part) {
  for (int half = kThreads / 2; half > 0; half /= 2) {
    __syncthreads();
    if (threadIdx.x < half) part[threadIdx.x] += part[threadIdx.x + half];
  }
  __syncthreads();
}

template <typename T>
__global__ void __launch_bounds__(kThreads) backward_weight_kernel(Conv2dParams p, const T* __restrict__ dy,
                                                                   const T* __restrict__ x, T* __restrict__ dw) {
  using A = acc_t<T>;
  __shared__ A part[kThreads];
  const int64_t Cg = p.Cg(), Kg = p.Kg();
  const int64_t total = p.K * Cg * p.R * p.S;
  const int64_t NPQ = p.N * p.P * p.Q;
  for (int64_t i = blockIdx.x; i < total; i += gridDim.x) {  // one dw element per block iteration
    const int64_t s = i % p.S, r = (i / p.S) % p.R, c = (i / (p.S * p.R)) % Cg, k = i / (p.S * p.R * Cg);
    const int64_t g = k / Kg;
    A sum = 0;
    for (int64_t j = threadIdx.x; j < NPQ; j += kThreads) {
      const int64_t ow = j % p.Q, oh = (j / p.Q) % p.P, n = j / (p.Q * p.P);
      const int64_t ih = oh * p.stride_h - p.pad_h + r * p.dil_h;
      const int64_t iw = ow * p.stride_w - p.pad_w + s * p.dil_w;
      if (ih < 0 || ih >= p.H || iw < 0 || iw >= p.W) continue;
      sum += to_acc<A>(dy[n * p.ys_n + k * p.ys_k + oh * p.ys_p + ow * p.ys_q]) *
             to_acc<A>(x[n * p.xs_n + (g * Cg + c) * p.xs_c + ih * p.xs_h + iw * p.xs_w]);
    }
    part[threadIdx.x] = sum;
    block_tree_sum(part);
    if (threadIdx.x == 0) dw[k * p.ws_k + c * p.ws_c + r * p.ws_r + s * p.ws_s] = from_acc<T>(part[0]);
    __syncthreads();  // part[0] is read before the next iteration overwrites part
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) backward_bias_kernel(const T* __restrict__ dy, int64_t N, int64_t K,
                                                                 int64_t PQ, int64_t s_n, int64_t s_k,
                                                                 int64_t s_i, T* __restrict__ db) {
  using A = acc_t<T>;
  __shared__ A part[kThreads];
  for (int64_t k = blockIdx.x; k < K; k += gridDim.x) {
    A sum = 0;
    for (int64_t j = threadIdx.x; j < N * PQ; j += kThreads) {
      const int64_t n = j / PQ, i = j % PQ;
      sum += to_acc<A>(dy[n * s_n + k * s_k + i * s_i]);
    }
    part[threadIdx.x] = sum;
    block_tree_sum(part);
    if (threadIdx.x == 0) db[k] = from_acc<T>(part[0]);
    __syncthreads();
  }
}

}  // namespace

template <typename T>
cudaError_t reference_forward(const Conv2dParams& p, const T* x, const T* w, const T* bias, T* y,
                              cudaStream_t stream) {
  const int64_t total = p.N * p.K * p.P * p.Q;
  if (total == 0) return cudaSuccess;
  auto* kernel = forward_kernel<T>;
  CONV_EXT_LAUNCH(kernel, grid_for(total, kThreads), kThreads, 0, stream, p, x, w, bias, y);
  return CONV_EXT_LAST_ERROR();
}

template <typename T>
cudaError_t reference_backward_input(const Conv2dParams& p, const T* dy, const T* w, T* dx,
                                     cudaStream_t stream) {
  const int64_t total = p.N * p.C * p.H * p.W;
  if (total == 0) return cudaSuccess;
  auto* kernel = backward_input_kernel<T>;
  CONV_EXT_LAUNCH(kernel, grid_for(total, kThreads), kThreads, 0, stream, p, dy, w, dx);
  return CONV_EXT_LAST_ERROR();
}

template <typename T>
cudaError_t reference_backward_weight(const Conv2dParams& p, const T* dy, const T* x, T* dw,
                                      cudaStream_t stream) {
  const int64_t total = p.K * p.Cg() * p.R * p.S;
  if (total == 0) return cudaSuccess;
  const unsigned blocks = static_cast<unsigned>(total < (int64_t(1) << 20) ? total : (int64_t(1) << 20));
  auto* kernel = backward_weight_kernel<T>;
  CONV_EXT_LAUNCH(kernel, blocks, kThreads, 0, stream, p, dy, x, dw);
  return CONV_EXT_LAST_ERROR();
}

template <typename T>
cudaError_t backward_bias(const T* dy, int64_t N, int64_t K, int64_t PQ, int64_t s_n, int64_t s_k,
                          int64_t s_i, T* db, cudaStream_t stream) {
  if (K == 0) return cudaSuccess;
  const unsigned blocks = static_cast<unsigned>(K < (int64_t(1) << 20) ? K : (int64_t(1) << 20));
  auto* kernel = backward_bias_kernel<T>;
  CONV_EXT_LAUNCH(kernel, blocks, kThreads, 0, stream, dy, N, K, PQ, s_n, s_k, s_i, db);
  return CONV_EXT_LAST_ERROR();
}

#define CONV_EXT_INSTANTIATE(T)                                                                         \
  template cudaError_t reference_forward<T>(const Conv2dParams&, const T*, const T*, const T*, T*,      \
                                            cudaStream_t);                                              \
  template cudaError_t reference_backward_input<T>(const Conv2dParams&, const T*, const T*, T*,         \
                                                   cudaStream_t);                                       \
  template cudaError_t reference_backward_weight<T>(const Conv2dParams&, const T*, const T*, T*,        \
                                                    cudaStream_t);                                      \
  template cudaError_t backward_bias<T>(const T*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, \
                                        T*, cudaStream_t);
CONV_EXT_INSTANTIATE(float)
CONV_EXT_INSTANTIATE(double)
CONV_EXT_INSTANTIATE(__half)
CONV_EXT_INSTANTIATE(__nv_bfloat16)
#undef CONV_EXT_INSTANTIATE

}  // namespace cuda
}  // namespace conv_ext
