// conv_params.h — one description of a 2-D convolution, read by every kernel.
//
// Plain C++ (no torch headers) so that CPU kernels, CUDA kernels (compiled with plain nvcc)
// and the C++ tests all share it. Arguments are checked once (csrc/checks.cpp) before a
// Conv2dParams is filled; kernels may assume it describes a valid convolution.
//
//   input  x : N x C x H x W          (element strides xs_n, xs_c, xs_h, xs_w)
//   weight w : K x C/groups x R x S   (element strides ws_k, ws_c, ws_r, ws_s)
//   output y : N x K x P x Q          (element strides ys_n, ys_k, ys_p, ys_q)
//
//   P = (H + 2*pad_h - dil_h*(R-1) - 1) / stride_h + 1
//   Q = (W + 2*pad_w - dil_w*(S-1) - 1) / stride_w + 1
//
//   y[n,k,p,q] = bias[k] + sum_{c,r,s} x[n, g*Cg + c, p*stride_h - pad_h + r*dil_h,
//                                                   q*stride_w - pad_w + s*dil_w] * w[k,c,r,s]
//   with g = k / Kg, Cg = C/groups, Kg = K/groups, and x = 0 outside the image.
//
// The same struct describes the two backward passes: backward-input reads y-shaped dy and w
// and writes x-shaped dx; backward-weight reads dy and x and writes w-shaped dw. Strides are
// in elements and 64-bit, so any tensor of up to 2^63 elements can be indexed.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define CONV_EXT_HD __host__ __device__ __forceinline__
#else
#define CONV_EXT_HD inline
#endif

namespace conv_ext {

struct Conv2dParams {
  int64_t N = 0, C = 0, H = 0, W = 0;  // input:  batch x channels x height x width
  int64_t K = 0, R = 0, S = 0;         // weight: out_channels x (C/groups) x kernel_h x kernel_w
  int64_t P = 0, Q = 0;                // output: height x width
  int64_t stride_h = 1, stride_w = 1;
  int64_t pad_h = 0, pad_w = 0;
  int64_t dil_h = 1, dil_w = 1;
  int64_t groups = 1;

  // element strides of the three tensors (the output of whichever pass is running included)
  int64_t xs_n = 0, xs_c = 0, xs_h = 0, xs_w = 0;
  int64_t ws_k = 0, ws_c = 0, ws_r = 0, ws_s = 0;
  int64_t ys_n = 0, ys_k = 0, ys_p = 0, ys_q = 0;

  CONV_EXT_HD int64_t Cg() const { return C / groups; }  // input channels per group
  CONV_EXT_HD int64_t Kg() const { return K / groups; }  // output channels per group

  // multiply-adds of one forward pass (= of each backward pass): N*K*P*Q*Cg*R*S
  CONV_EXT_HD int64_t macs() const { return N * K * P * Q * Cg() * R * S; }
};

// Output size along one axis; <= 0 means the kernel does not fit in the padded input.
CONV_EXT_HD int64_t conv_out_size(int64_t in, int64_t kernel, int64_t stride, int64_t pad,
                                  int64_t dil) {
  const int64_t span = dil * (kernel - 1) + 1;  // the kernel's extent, dilation included
  const int64_t padded = in + 2 * pad;
  return padded < span ? 0 : (padded - span) / stride + 1;
}

// True when x, w and y are all contiguous NCHW (KCRS for w).
CONV_EXT_HD bool is_nchw(const Conv2dParams& p) {
  return p.xs_w == 1 && p.xs_h == p.W && p.xs_c == p.H * p.W && p.xs_n == p.C * p.H * p.W &&
         p.ys_q == 1 && p.ys_p == p.Q && p.ys_k == p.P * p.Q && p.ys_n == p.K * p.P * p.Q;
}

// True when x and y are both contiguous channels_last (NHWC in memory).
CONV_EXT_HD bool is_nhwc(const Conv2dParams& p) {
  return p.xs_c == 1 && p.xs_w == p.C && p.xs_h == p.W * p.C && p.xs_n == p.H * p.W * p.C &&
         p.ys_k == 1 && p.ys_q == p.K && p.ys_p == p.Q * p.K && p.ys_n == p.P * p.Q * p.K;
}

// True for a 1x1 convolution at stride 1 without padding: y's pixels are x's (P == H, Q == W),
// and each pass is a GEMM over them.
CONV_EXT_HD bool is_pointwise(const Conv2dParams& p) {
  return p.R == 1 && p.S == 1 && p.stride_h == 1 && p.stride_w == 1 && p.pad_h == 0 && p.pad_w == 0;
}

// True when w is contiguous K x Cg x R x S.
CONV_EXT_HD bool weight_is_kcrs(const Conv2dParams& p) {
  return p.ws_s == 1 && p.ws_r == p.S && p.ws_c == p.R * p.S && p.ws_k == p.Cg() * p.R * p.S;
}

// True when w is a contiguous channels_last filter: K x R x S x Cg in memory.
CONV_EXT_HD bool weight_is_krsc(const Conv2dParams& p) {
  return p.ws_c == 1 && p.ws_s == p.Cg() && p.ws_r == p.S * p.Cg() && p.ws_k == p.R * p.S * p.Cg();
}

}  // namespace conv_ext
