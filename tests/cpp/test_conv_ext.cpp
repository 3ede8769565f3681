// test_conv_ext.cpp — the ops from C++ (LibTorch), through the dispatcher, against at::conv2d
// (torch is the oracle here, as in the Python tests). Run by `make ctest`.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cstdio>
#include <vector>

#include "conv_params.h"

namespace {

int checks = 0, failures = 0;

void expect(bool ok, const char* what) {
  ++checks;
  std::printf("%s %s\n", ok ? "ok  " : "FAIL", what);
  if (!ok) ++failures;
}

double rel_error(const at::Tensor& a, const at::Tensor& e) {
  const double scale = e.abs().max().item<double>();
  return (a - e).abs().max().item<double>() / (scale > 0 ? scale : 1.0);
}

}  // namespace

int main() {
  using conv_ext::conv_out_size;
  expect(conv_out_size(8, 3, 1, 1, 1) == 8, "output size: 3x3 same");
  expect(conv_out_size(224, 7, 2, 3, 1) == 112, "output size: 7x7 stride 2 stem");
  expect(conv_out_size(9, 3, 2, 0, 2) == 3, "output size: dilation 2 stride 2");
  expect(conv_out_size(2, 5, 1, 1, 1) == 0, "output size: kernel larger than padded input");

  auto forward = c10::Dispatcher::singleton()
                     .findSchemaOrThrow("conv_ext::conv2d_forward", "")
                     .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                       at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, int64_t)>();
  auto backward_input = c10::Dispatcher::singleton()
                            .findSchemaOrThrow("conv_ext::conv2d_backward_input", "")
                            .typed<at::Tensor(const at::Tensor&, const at::Tensor&, c10::SymIntArrayRef,
                                              at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, int64_t)>();
  auto backward_weight = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("conv_ext::conv2d_backward_weight", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, c10::SymIntArrayRef,
                                               at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, int64_t)>();

  at::manual_seed(0);
  const auto opt = at::TensorOptions().dtype(at::kDouble);
  struct Case { std::vector<int64_t> x, w, stride, padding, dilation; int64_t groups; const char* name; };
  const std::vector<Case> cases = {
      {{2, 4, 9, 8}, {6, 2, 3, 3}, {1, 1}, {1, 1}, {1, 1}, 2, "grouped 3x3"},
      {{1, 3, 11, 7}, {5, 3, 3, 2}, {2, 1}, {0, 1}, {2, 1}, 1, "strided, dilated, asymmetric"},
      {{2, 4, 6, 6}, {4, 1, 3, 3}, {1, 1}, {1, 1}, {1, 1}, 4, "depthwise"},
  };
  for (const auto& c : cases) {
    const at::Tensor x = at::randn(c.x, opt), w = at::randn(c.w, opt), b = at::randn({c.w[0]}, opt);
    const at::Tensor y = forward.call(x, w, b, c.stride, c.padding, c.dilation, c.groups);
    const at::Tensor y_ref = at::conv2d(x, w, b, c.stride, c.padding, c.dilation, c.groups);
    expect(rel_error(y, y_ref) <= 1e-10, (std::string("forward: ") + c.name).c_str());

    // gradients of sum(y * dy) from torch's autograd, against our backward ops
    const at::Tensor dy = at::randn(y.sizes(), opt);
    const at::Tensor xg = x.clone().requires_grad_(), wg = w.clone().requires_grad_();
    (at::conv2d(xg, wg, b, c.stride, c.padding, c.dilation, c.groups) * dy).sum().backward();
    const at::Tensor dx = backward_input.call(dy, w, c10::fromIntArrayRefSlow(c.x), c.stride, c.padding, c.dilation, c.groups);
    const at::Tensor dw = backward_weight.call(dy, x, c10::fromIntArrayRefSlow(c.w), c.stride, c.padding, c.dilation, c.groups);
    expect(rel_error(dx, xg.grad()) <= 1e-10, (std::string("backward_input: ") + c.name).c_str());
    expect(rel_error(dw, wg.grad()) <= 1e-10, (std::string("backward_weight: ") + c.name).c_str());
  }

  bool threw = false;
  try {
    forward.call(at::randn({1, 12, 8, 8}), at::randn({4, 8, 3, 3}), std::nullopt, {1, 1}, {0, 0}, {1, 1}, 2);
  } catch (const c10::Error& e) {
    threw = std::string(e.what()).find("expected input to have 16 channels") != std::string::npos;
  }
  expect(threw, "bad channel count raises a c10::Error naming the channels");

  std::printf("%d passed, %d failed\n", checks - failures, failures);
  return failures == 0 ? 0 : 1;
}
