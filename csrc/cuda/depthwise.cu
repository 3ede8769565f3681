// depthwise.cu — depthwise convolution (one input channel per group: Cg == 1, any channel
// multiplier Kg), every dtype, any stride/padding/dilation: the forward pass (NCHW or NHWC) and
// the backward-weight pass (3x3, 5x5, 7x7; deterministic; see depthwise_bw_kernel below).
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


// ---- backward-weight: dw[k, 0, r, s] = sum_{n, oh, ow} dy[n, k, oh, ow] * x[n, k/Kg, ih, iw] ----
// A block is 32 output channels (one per lane, consecutive: coalesced for channels_last) x 8
// warps, each warp a strided share of the pixels of this block's slice (blockIdx.y of `splits`)
// of the N*P*Q pixels. Each thread keeps all R*S tap sums in registers, so dy is read once and
// x R*S times (from L1/L2). The 8 warps' sums are added in warp order in shared memory, each
// slice writes its partials, and a second kernel adds the slices in order: deterministic.
constexpr int kDwBwWarps = 8;

template <typename T, int kR, int kS>
__global__ void __launch_bounds__(32 * kDwBwWarps) depthwise_bw_kernel(Conv2dParams p, const T* __restrict__ dy,
                                                                       const T* __restrict__ x, int splits,
                                                                       acc_t<T>* __restrict__ part) {
  using A = acc_t<T>;
  __shared__ A red[kDwBwWarps][32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t k = int64_t(blockIdx.x) * 32 + lane;
  const bool k_ok = k < p.K;
  const int64_t c = k_ok ? k / p.Kg() : 0;
  const int64_t npq = p.N * p.P * p.Q;
  A acc[kR * kS];
#pragma unroll
  for (int t = 0; t < kR * kS; ++t) acc[t] = A(0);
  if (k_ok)
    for (int64_t i = int64_t(blockIdx.y) * kDwBwWarps + warp; i < npq; i += int64_t(splits) * kDwBwWarps) {
      const int64_t ow = i % p.Q, oh = (i / p.Q) % p.P, n = i / (p.Q * p.P);
      const A g = to_acc<A>(ldg(dy + n * p.ys_n + k * p.ys_k + oh * p.ys_p + ow * p.ys_q));
      const T* xc = x + n * p.xs_n + c * p.xs_c;
#pragma unroll
      for (int r = 0; r < kR; ++r) {
        const int64_t ih = oh * p.stride_h - p.pad_h + r * p.dil_h;
        if (ih < 0 || ih >= p.H) continue;
#pragma unroll
        for (int s = 0; s < kS; ++s) {
          const int64_t iw = ow * p.stride_w - p.pad_w + s * p.dil_w;
          if (iw < 0 || iw >= p.W) continue;
          acc[r * kS + s] += g * to_acc<A>(ldg(xc + ih * p.xs_h + iw * p.xs_w));
        }
      }
    }
  // add the warps' sums in warp order; slice blockIdx.y's partials -> part[y][k][tap]
#pragma unroll
  for (int t = 0; t < kR * kS; ++t) {
    red[warp][lane] = acc[t];
    __syncthreads();
    if (warp == 0 && k_ok) {
      A sum = red[0][lane];
      for (int w = 1; w < kDwBwWarps; ++w) sum += red[w][lane];
      part[(int64_t(blockIdx.y) * p.K + k) * (kR * kS) + t] = sum;
    }
    __syncthreads();
  }
}

// dw[k, 0, r, s] = sum over slices z, in order, of part[z][k][r*S + s]
template <typename T>
__global__ void depthwise_bw_reduce(Conv2dParams p, const acc_t<T>* __restrict__ part, int splits, T* __restrict__ dw) {
  using A = acc_t<T>;
  const int64_t taps = p.R * p.S, total = p.K * taps;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = i % taps, k = i / taps;
    A sum = 0;
    for (int z = 0; z < splits; ++z) sum += part[int64_t(z) * total + i];
    dw[k * p.ws_k + (t / p.S) * p.ws_r + (t % p.S) * p.ws_s] = from_acc<T>(sum);
  }
}

// pixel slices: ~2048 pixels each, at most 64; a function of the problem only (deterministic)
int depthwise_bw_splits(const Conv2dParams& p) {
  const int64_t s = ceil_div(p.N * p.P * p.Q, 2048);
  return static_cast<int>(s < 1 ? 1 : (s > 64 ? 64 : s));
}

}  // namespace

bool depthwise_supports(const Conv2dParams& p) { return p.Cg() == 1 && p.groups == p.C; }

bool depthwise_backward_weight_supports(const Conv2dParams& p) {
  return depthwise_supports(p) && p.R == p.S && (p.R == 3 || p.R == 5 || p.R == 7) &&
         ceil_div(p.K, 32) < (int64_t(1) << 31);
}

size_t depthwise_backward_weight_workspace(const Conv2dParams& p, int elem_size) {
  const size_t acc_size = elem_size == 8 ? 8 : 4;
  return static_cast<size_t>(depthwise_bw_splits(p)) * static_cast<size_t>(p.K * p.R * p.S) * acc_size;
}

template <typename T>
cudaError_t depthwise_backward_weight(const Conv2dParams& p, const T* dy, const T* x, T* dw, void* workspace,
                                      cudaStream_t stream) {
  if (p.N * p.P * p.Q == 0 || p.K == 0) return cudaSuccess;  // the op zeroes dw for N == 0
  const int splits = depthwise_bw_splits(p);
  acc_t<T>* part = static_cast<acc_t<T>*>(workspace);
  const dim3 grid(static_cast<unsigned>(ceil_div(p.K, 32)), static_cast<unsigned>(splits));
  auto run = [&](auto* kernel) { CONV_EXT_LAUNCH(kernel, grid, 32 * kDwBwWarps, 0, stream, p, dy, x, splits, part); };
  if (p.R == 3) run(depthwise_bw_kernel<T, 3, 3>);
  else if (p.R == 5) run(depthwise_bw_kernel<T, 5, 5>);
  else run(depthwise_bw_kernel<T, 7, 7>);
  cudaError_t err = CONV_EXT_LAST_ERROR();
  if (err != cudaSuccess) return err;
  auto* reduce = depthwise_bw_reduce<T>;
  CONV_EXT_LAUNCH(reduce, grid_for(p.K * p.R * p.S, 256), 256, 0, stream, p, static_cast<const acc_t<T>*>(part), splits, dw);
  return CONV_EXT_LAST_ERROR();
}

template <typename T>
cudaError_t depthwise_forward(const Conv2dParams& p, const T* x, const T* w, const T* bias, T* y,
                              cudaStream_t stream) {
  if (p.N * p.K * p.P * p.Q == 0) return cudaSuccess;
  // the thread order follows the layout; the indexing itself uses p's strides either way
  if (is_nhwc(p)) return launch<T, true>(p, x, w, bias, y, stream);
  return launch<T, false>(p, x, w, bias, y, stream);
}

#define CONV_EXT_INSTANTIATE_BW(T) \
  template cudaError_t depthwise_backward_weight<T>(const Conv2dParams&, const T*, const T*, T*, void*, cudaStream_t);
CONV_EXT_INSTANTIATE_BW(float)
CONV_EXT_INSTANTIATE_BW(double)
CONV_EXT_INSTANTIATE_BW(__half)
CONV_EXT_INSTANTIATE_BW(__nv_bfloat16)
#undef CONV_EXT_INSTANTIATE_BW
template cudaError_t depthwise_forward<float>(const Conv2dParams&, const float*, const float*, const float*, float*, cudaStream_t);
template cudaError_t depthwise_forward<double>(const Conv2dParams&, const double*, const double*, const double*, double*, cudaStream_t);
template cudaError_t depthwise_forward<__half>(const Conv2dParams&, const __half*, const __half*, const __half*, __half*, cudaStream_t);
template cudaError_t depthwise_forward<__nv_bfloat16>(const Conv2dParams&, const __nv_bfloat16*, const __nv_bfloat16*,
                                                      const __nv_bfloat16*, __nv_bfloat16*, cudaStream_t);

}  // namespace cuda
}  // namespace conv_ext
