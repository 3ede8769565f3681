// gemm_1x1.cpp — 1x1, stride-1, unpadded convolutions on NCHW tensors as a GEMM on the tensor
// as it lies (no reorder, no packing of activations), forward and backward-input.
//
//   forward         per image and group: Y[k, pix] = bias[k] + sum_c W[k, c] * X[c, pix]
//   backward-input  per image and group: dX[c, pix] = sum_k W[k, c] * dY[k, pix]
// (pix = h*W + w runs over the contiguous plane). The micro-kernel of simd.h is used with its
// rows i = output channels (weights broadcast, straight from w: row stride Cg or 1) and its
// vectors = 4 x 16 consecutive pixels (masked loads/stores at the plane's end), so every load
// and store of activations is a contiguous vector.
//
// Blocking: a task is (image, group, 64-pixel column block [NV*VL]); inside it the reduction is
// split in panels of 256 channels (accumulated in the output) so the X panel (256 x 64 floats,
// 64 KiB) stays in L1/L2 while all K rows sweep it.
// NHWC 1x1 convolutions need no special file: implicit_gemm reads NHWC 1x1 inputs in place
// (its "direct" mode), which is Y[NHW, K] = X[NHW, C] · W^T on the tensor as it lies.
// backward-weight of 1x1 layers runs in implicit_gemm (per-thread partials, fixed-order sum).
//
// Speed (2 cores Zen 4, batch 8, PYTHONPATH=. python benchmarks/cpu_kernels.py --cases 1x1;
// torch in brackets): 64->256@56 fwd 82 GFLOP/s [55] (1.49x), bwd-input 161 [122];
// 256->64@56 fwd 132 [93] (1.42x), bwd-input 55 [32]; 512->128@28 fwd 150 [127]; at 14x14 and
// 7x7 planes (1024->256, 512->2048) 0.65-0.93x torch (the pixel vector is short, W is re-read).
#ifndef CONV_EXT_ISA_NS
#include <ATen/ATen.h>

#include "algorithms.h"
#include "kernel_util.h"

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")
#define CONV_EXT_ISA_NS avx512
#define CONV_EXT_ISA_BITS 512
#include "simd.h"
#include "gemm_1x1.cpp"
#undef CONV_EXT_ISA_NS
#undef CONV_EXT_ISA_BITS
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define CONV_EXT_ISA_NS avx2
#define CONV_EXT_ISA_BITS 256
#include "simd.h"
#include "gemm_1x1.cpp"
#undef CONV_EXT_ISA_NS
#undef CONV_EXT_ISA_BITS
#pragma GCC pop_options

namespace conv_ext {
namespace cpu {
namespace {

bool supports(const Conv2dParams& p, at::ScalarType dtype) {
  return dtype == at::kFloat && simd_available() && is_nchw(p) && weight_is_kcrs(p) && p.R == 1 && p.S == 1 &&
         p.stride_h == 1 && p.stride_w == 1 && p.pad_h == 0 && p.pad_w == 0;
}

void run_forward(const Conv2dParams& p, Operands& o) {
  const float* bias = o.bias.defined() ? o.bias.const_data_ptr<float>() : nullptr;
  auto f = use_avx512() ? avx512::gemm_1x1_nchw : avx2::gemm_1x1_nchw;
  f(p, o.a.const_data_ptr<float>(), o.b.const_data_ptr<float>(), bias, o.out.mutable_data_ptr<float>(), false);
}

void run_backward_input(const Conv2dParams& p, Operands& o) {
  auto f = use_avx512() ? avx512::gemm_1x1_nchw : avx2::gemm_1x1_nchw;
  f(p, o.a.const_data_ptr<float>(), o.b.const_data_ptr<float>(), nullptr, o.out.mutable_data_ptr<float>(), true);
}

const bool registered = register_algorithm({"gemm_1x1", Pass::Forward, 20, supports, run_forward}) &&
                        register_algorithm({"gemm_1x1", Pass::BackwardInput, 20, supports, run_backward_input});

}  // namespace
}  // namespace cpu
}  // namespace conv_ext

#else  // ---------------- compiled once per ISA ----------------

namespace conv_ext {
namespace cpu {
namespace CONV_EXT_ISA_NS {

// forward (transpose = false):  out[n, g*Kg + k, pix] = bias + sum_c w[g*Kg + k, c] * in[n, g*Cg + c, pix]
// backward-input (true):        out[n, g*Cg + c, pix] = sum_k w[g*Kg + k, c] * in[n, g*Kg + k, pix]
void gemm_1x1_nchw(const Conv2dParams& p, const float* in, const float* w, const float* bias, float* out,
                   bool transpose) {
  const int64_t G = p.groups, Cg = p.Cg(), Kg = p.Kg(), HW = p.H * p.W, N = p.N;
  const int64_t Mi = transpose ? Cg : Kg;   // output channels per group (tile rows)
  const int64_t Li = transpose ? Kg : Cg;   // reduction length
  const int64_t Ct_in = transpose ? p.K : p.C, Ct_out = transpose ? p.C : p.K;
  const int nv = choose_nv(HW);
  const int64_t NVL = nv * VL, MR = Isa::mr(nv), npb = ceil_div(HW, NVL);
  const int64_t lc = std::min<int64_t>(Li, 256);  // reduction panel
  const int64_t nlc = ceil_div(Li, lc);
  for_each_task(N * G * npb, p.macs(), [&](int64_t task) {
    const int64_t n = task / (G * npb), g = (task / npb) % G, pb = task % npb;
    const int64_t pix0 = pb * NVL, valid = std::min(NVL, HW - pix0);
    M m[4];
    make_masks(nv, valid, m);
    const int64_t zero = 0;
    for (int64_t lb = 0; lb < nlc; ++lb) {
      const int64_t l0 = lb * lc, ll = std::min(lc, Li - l0);
      for (int64_t i0 = 0; i0 < Mi; i0 += MR) {
        Tile t;
        if (transpose) {  // A(i = c, l = k) = w[(g*Kg + l0 + l)*Cg + i0 + i]
          t.a = w + (g * Kg + l0) * Cg + i0, t.a_is = 1, t.a_ls = Cg;
        } else {  // A(i = k, l = c) = w[(g*Kg + i0 + i)*Cg + l0 + l]
          t.a = w + (g * Kg + i0) * Cg + l0, t.a_is = Cg, t.a_ls = 1;
        }
        t.b = in + ((n * Ct_in + g * Li + l0) * HW) + pix0, t.b_ls = HW;
        t.a_off = &zero, t.b_off = &zero, t.nseg = 1, t.len = ll;
        t.mr = static_cast<int>(std::min(MR, Mi - i0));
        t.c = out + (n * Ct_out + g * Mi + i0) * HW + pix0, t.ldc = HW;
        t.accumulate = lb > 0;
        t.bias_i = (lb == 0 && bias) ? bias + g * Mi + i0 : nullptr;
        t.bmask = m;
        t.cmask = valid < NVL ? m : nullptr;
        if (valid < NVL) run_tile<true>(nv, t);
        else run_tile<false>(nv, t);
      }
    }
  });
}

}  // namespace CONV_EXT_ISA_NS
}  // namespace cpu
}  // namespace conv_ext

#endif
