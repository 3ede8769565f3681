// depthwise.cu — forward depthwise convolution (one input channel per group: Cg == 1, any
// channel multiplier Kg), for contiguous NCHW or NHWC, every dtype, any stride/padding/dilation.
//
//   nvcc -std=c++17 -arch=sm_90 -I csrc -c csrc/cuda/depthwise.cu      (or: make cuda-check)
//
// Depthwise convolution does R*S multiply-adds per output: far too little arithmetic for a
// GEMM (an implicit GEMM would have a reduction depth of R*S = 9) and bound by memory traffic,
// so the kernel is a direct one tuned for bandwidth:
//   - one thread per output element, consecutive threads on consecutive memory of y
//     (ow fastest for NCHW, the channel fastest for NHWC): coalesced stores, and coalesced
//     input loads whose neighbours (other taps, other threads) hit in L1;
//   - the common kernel sizes (3x3, 5x5, 7x7) are template parameters, so the tap loops unroll
//     and the tap offsets are constants; other sizes run the same code with run-time loops;
//   - loads through the read-only path (__ldg), accumulation in float (double for double);
//   - the 64-bit linear index is split into coordinates once per output.
// What the generic reference does instead: a loop over Cg (= 1), run-time tap loops with
// divisions per output, no layout-aware thread order (NHWC outputs are strided across a warp).
#include "common.cuh"
#include "launch.cuh"

namespace conv_ext {
namespace cuda {
namespace {

constexpr int kDwThreads = 256;

template <typename T> __device__ __forceinline__ T ldg(const T* p) { return __ldg(p); }

template <typename T, int kR, int kS, bool kNhwc>  // kR = kS = 0: sizes read from p at run time
__global__ void __launch_bounds__(kDwThreads) depthwise_kernel(Conv2dParams p, const T* __restrict__ x,
                                                             const T* __restrict__ w,
                                                             const T* __restrict__ bias, T* __restrict__ y) {
  using A = acc_t<T>;
  const int R = kR > 0 ? kR : static_cast<int>(p.R), S = kS > 0 ? kS : static_cast<int>(p.S);
  const int64_t Kg = p.Kg();
  const int64_t total = p.N * p.K * p.P * p.Q;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    int64_t n, k, oh, ow;
    if (kNhwc) {  // i -> (n, oh, ow, k), k fastest: consecutive threads write consecutive channels
      k = i % p.K;
      ow = (i / p.K) % p.Q;
      oh = (i / (p.K * p.Q)) % p.P;
      n = i / (p.K * p.Q * p.P);
    } else {  // i -> (n, k, oh, ow), ow fastest
      ow = i % p.Q;
      oh = (i / p.Q) % p.P;
      k = (i / (p.Q * p.P)) % p.K;
      n = i / (p.Q * p.P * p.K);
    }
    const int64_t c = k / Kg;  // the one input channel of this output channel's group
    const T* xc = x + n * p.xs_n + c * p.xs_c;
    const T* wk = w + k * p.ws_k;
    const int64_t ih0 = oh * p.stride_h - p.pad_h, iw0 = ow * p.stride_w - p.pad_w;
    A sum = bias ? to_acc<A>(ldg(bias + k)) : A(0);
    // with kR, kS > 0, R and S are compile-time constants and both loops unroll
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const int64_t ih = ih0 + r * p.dil_h;
      if (ih < 0 || ih >= p.H) continue;  // zero padding
#pragma unroll
      for (int s = 0; s < S; ++s) {
        const int64_t iw = iw0 + s * p.dil_w;
        if (iw < 0 || iw >= p.W) continue;
        sum += to_acc<A>(ldg(xc + ih * p.xs_h + iw * p.xs_w)) * to_acc<A>(ldg(wk + r * p.ws_r + s * p.ws_s));
      }
    }
    y[n * p.ys_n + k * p.ys_k + oh * p.ys_p + ow * p.ys_q] = from_acc<T>(sum);
  }
}

template <typename T, bool kNhwc>
cudaError_t launch(const Conv2dParams& p, const T* x, const T* w, const T* bias, T* y, cudaStream_t stream) {
  const int64_t total = p.N * p.K * p.P * p.Q;
  const unsigned grid = grid_for(total, kDwThreads);
  auto run = [&](auto* kernel) { CONV_EXT_LAUNCH(kernel, grid, kDwThreads, 0, stream, p, x, w, bias, y); };
  if (p.R == 3 && p.S == 3)
    run(depthwise_kernel<T, 3, 3, kNhwc>);
  else if (p.R == 5 && p.S == 5)
    run(depthwise_kernel<T, 5, 5, kNhwc>);
  else if (p.R == 7 && p.S == 7)
    run(depthwise_kernel<T, 7, 7, kNhwc>);
  else
    run(depthwise_kernel<T, 0, 0, kNhwc>);
  return CONV_EXT_LAST_ERROR();
}


}  // namespace

bool depthwise_supports(const Conv2dParams& p) { return p.Cg() == 1 && p.groups == p.C; }

template <typename T>
cudaError_t depthwise_forward(const Conv2dParams& p, const T* x, const T* w, const T* bias, T* y,
                              cudaStream_t stream) {
  if (p.N * p.K * p.P * p.Q == 0) return cudaSuccess;
  // the thread order follows the layout; the indexing itself uses p's strides either way
  if (is_nhwc(p)) return launch<T, true>(p, x, w, bias, y, stream);
  return launch<T, false>(p, x, w, bias, y, stream);
}

template cudaError_t depthwise_forward<float>(const Conv2dParams&, const float*, const float*, const float*, float*, cudaStream_t);
template cudaError_t depthwise_forward<double>(const Conv2dParams&, const double*, const double*, const double*, double*, cudaStream_t);
template cudaError_t depthwise_forward<__half>(const Conv2dParams&, const __half*, const __half*, const __half*, __half*, cudaStream_t);
template cudaError_t depthwise_forward<__nv_bfloat16>(const Conv2dParams&, const __nv_bfloat16*, const __nv_bfloat16*,
                                                      const __nv_bfloat16*, __nv_bfloat16*, cudaStream_t);

}  // namespace cuda
}  // namespace conv_ext
