// op_handles.h — the conv_ext ops as typed dispatcher handles (resolved once), for C++ callers
// that must go through the dispatcher: autograd.cpp (backward calls the other ops, so double
// backward records its own graph) and python_module.cpp (conv_ext.conv2d's direct binding).
#pragma once
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/Tensor.h>

namespace conv_ext {

// The typed handle of op `name` (each caller keeps it in a function-local static: resolved once).
template <class Sig>
c10::TypedOperatorHandle<Sig> op_handle(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

inline at::Tensor forward_op(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& b,
                             at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  static auto op = op_handle<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                        at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, int64_t)>(
      "conv_ext::conv2d_forward");
  return op.call(x, w, b, stride, padding, dilation, groups);
}

// backward-input and backward-weight share a signature: (grad_output, weight | input, the size of
// the result, stride, padding, dilation, groups)
using BackwardSig = at::Tensor(const at::Tensor&, const at::Tensor&, c10::SymIntArrayRef, at::IntArrayRef,
                               at::IntArrayRef, at::IntArrayRef, int64_t);

inline at::Tensor backward_input_op(const at::Tensor& dy, const at::Tensor& w, c10::SymIntArrayRef input_size,
                                    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                                    int64_t groups) {
  static auto op = op_handle<BackwardSig>("conv_ext::conv2d_backward_input");
  return op.call(dy, w, input_size, stride, padding, dilation, groups);
}

inline at::Tensor backward_weight_op(const at::Tensor& dy, const at::Tensor& x, c10::SymIntArrayRef weight_size,
                                     at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                                     int64_t groups) {
  static auto op = op_handle<BackwardSig>("conv_ext::conv2d_backward_weight");
  return op.call(dy, x, weight_size, stride, padding, dilation, groups);
}

inline at::Tensor backward_bias_op(const at::Tensor& dy) {
  static auto op = op_handle<at::Tensor(const at::Tensor&)>("conv_ext::conv2d_backward_bias");
  return op.call(dy);
}

}  // namespace conv_ext
