// checks.h — argument checks shared by every backend, run once before any kernel.
//
// Each make_*_params function validates the tensors and the geometry of one op and returns a
// Conv2dParams with sizes filled in (strides are filled by set_strides once the backend has
// chosen the layout it will run in). Errors are RuntimeErrors that name the argument and the
// values, e.g. "expected input to have 16 channels (groups=2 x weight.size(1)=8), got 12".
#pragma once
#include <torch/library.h>
#include <ATen/ATen.h>

#include "conv_params.h"

namespace conv_ext {

// forward: input (N, C, H, W), weight (K, C/groups, R, S), bias (K,) or none
Conv2dParams make_forward_params(const at::Tensor& input, const at::Tensor& weight,
                                 const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                 at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups);

// backward-input: grad_output (N, K, P, Q), weight (K, C/groups, R, S), input_size = (N, C, H, W)
Conv2dParams make_backward_input_params(const at::Tensor& grad_output, const at::Tensor& weight,
                                        at::IntArrayRef input_size, at::IntArrayRef stride,
                                        at::IntArrayRef padding, at::IntArrayRef dilation,
                                        int64_t groups);

// backward-weight: grad_output (N, K, P, Q), input (N, C, H, W), weight_size = (K, C/groups, R, S)
Conv2dParams make_backward_weight_params(const at::Tensor& grad_output, const at::Tensor& input,
                                         at::IntArrayRef weight_size, at::IntArrayRef stride,
                                         at::IntArrayRef padding, at::IntArrayRef dilation,
                                         int64_t groups);

// backward-bias: grad_output (N, K, P, Q)
void check_backward_bias(const at::Tensor& grad_output);

// The memory format a pass runs in and returns: channels_last when either operand suggests it
// (the rule torch's CPU convolution follows); the Python fake kernels apply the same rule.
at::MemoryFormat conv_memory_format(const at::Tensor& a, const at::Tensor& b);

// The backward-weight result in the layout of the convolution (fmt), as torch returns it, so
// AccumulateGrad does not reorder it into a channels_last parameter on every step; `kcrs` is
// where the kernels write (KCRS, contiguous): `out` itself, or an alias of it with KCRS strides
// when both layouts are the same bytes (1x1 filters, one input channel per group), or else a
// separate tensor that finish() copies into `out`.
struct WeightGrad {
  at::Tensor out, kcrs;
  WeightGrad(at::IntArrayRef weight_size, const at::TensorOptions& options, at::MemoryFormat fmt);
  at::Tensor finish() {
    if (!kcrs.is_alias_of(out)) out.copy_(kcrs);
    return out;
  }
};

// Element strides of x (N,C,H,W), w (K,Cg,R,S) and y (N,K,P,Q) into p. A tensor contiguous in
// `fmt` (w: in NCHW) gets the canonical strides of that format, whatever torch stored for its
// size-1 dimensions, so kernels can test the layout with is_nchw / is_nhwc / weight_is_kcrs.
void set_strides(Conv2dParams& p, const at::Tensor& x, const at::Tensor& w, const at::Tensor& y,
                 at::MemoryFormat fmt);

}  // namespace conv_ext
