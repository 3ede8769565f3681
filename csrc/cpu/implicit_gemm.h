// implicit_gemm.h — implicit_gemm.cpp's float32 entry points, one per ISA (per_isa.h), for the
// files that run them on problems of their own: bf16_pairs.cpp (bfloat16 pairs) and winograd.cpp
// (backward-weight again where Winograd's is not finite). Parameters: implicit_gemm.cpp.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>

#include "../conv_params.h"

namespace conv_ext {
namespace cpu {
#define CONV_EXT_IMPLICIT_GEMM_DECLS                                                                                  \
  bool implicit_gemm_forward(const Conv2dParams& p, const float* x, const float* w, const float* bias, float* y,    \
                             bool nhwc, const at::Tensor* filter, bool pairs, uint16_t* y16, const uint16_t* w16,  \
                             at::Half* yh);                                                                        \
  bool implicit_gemm_backward_input(const Conv2dParams& p, const float* dy, const float* w, float* dx, bool nhwc,  \
                                    const at::Tensor* filter, bool pairs, uint16_t* dx16, const uint16_t* w16,     \
                                    at::Half* dxh);                                                                \
  void implicit_gemm_backward_weight(const Conv2dParams& p, const float* dy, const float* x, float* dwt, bool nhwc, \
                                     bool pairs, uint16_t* dw16);
namespace avx512 {
CONV_EXT_IMPLICIT_GEMM_DECLS
}
namespace avx2 {
CONV_EXT_IMPLICIT_GEMM_DECLS
}
#undef CONV_EXT_IMPLICIT_GEMM_DECLS
}  // namespace cpu
}  // namespace conv_ext
