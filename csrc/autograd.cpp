// autograd.cpp — the gradients of every conv_ext op, registered for the Autograd key.
//
// Each op is linear in each tensor argument, so each gradient is another conv_ext op (g is
// the incoming gradient):
//   y  = forward(x, w) + b        ->  dx = backward_input(g, w),  dw = backward_weight(g, x),
//                                     db = backward_bias(g)
//   dx = backward_input(dy, w)    ->  d(dy) = forward(g, w),      dw = backward_weight(dy, g)
//   dw = backward_weight(dy, x)   ->  d(dy) = forward(x, g),      dx = backward_input(dy, g)
//   db = backward_bias(dy)        ->  d(dy) = g broadcast over (N, P, Q)
// Backward calls the ops through the dispatcher, so with create_graph the backward ops record
// their own graph: double backward (gradgradcheck, gradient penalties, MAML) works. Only the
// gradients autograd asks for are computed.
//
// Why C++ and not torch.library.register_autograd in Python: on small layers the Python
// autograd.Function costs ~20 us per forward and ~30 us per backward (measured on the
// (1,3,8,8)->16 layer), several times the kernels' own time. And why our own graph nodes, not
// torch::autograd::Function: Function::apply keeps its state in a string-keyed map of IValues and
// wraps every output generically, ~14 us per recorded forward of that layer against torch's own
// ~4 us (its nodes are structs with plain fields, built as below). With these nodes, same layer,
// 2 threads, Xeon, best of 9 x 2000 calls, recorded forward minus unrecorded: ~2 us (torch ~2-4);
// forward + backward of x, w, b: 87.5 -> 51.8 us (torch 65.9; with this round's other small-layer
// changes: argument parsing of pairs, 4 FMA chains in bwd_input_pixel_rows).
#include <torch/autograd.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/library.h>

#include "op_handles.h"

namespace conv_ext {
namespace {

using torch::autograd::SavedVariable;
using torch::autograd::variable_list;

// A node of the graph: the geometry of the op that made it, up to two saved tensors (a, b), and
// the op's gradients. Edge i of the node is the i-th tensor argument of the op (an undefined bias
// gets an invalid edge, which never asks for a gradient).
struct ConvNode : public torch::autograd::Node {
  SavedVariable a, b;
  std::vector<int64_t> stride, padding, dilation;
  int64_t groups = 1;

  void save(const at::Tensor& first, const at::Tensor& second, at::IntArrayRef st, at::IntArrayRef pad,
            at::IntArrayRef dil, int64_t g) {
    a = SavedVariable(first, false), b = SavedVariable(second, false);
    stride = st.vec(), padding = pad.vec(), dilation = dil.vec(), groups = g;
  }

  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    a.reset_data();
    b.reset_data();
  }

  variable_list apply(variable_list&& grads) override {
    std::lock_guard<std::mutex> lock(mutex_);
    variable_list out(num_outputs());
    if (grads[0].defined()) gradients(grads[0], out);
    return out;
  }

 protected:
  // out[i] = the gradient for edge i, computed only where the backward pass needs it
  virtual void gradients(const at::Tensor& g, variable_list& out) = 0;
  bool wants(size_t edge) const { return task_should_compute_output(edge); }
};

//   y  = forward(x, w) + b        ->  dx = backward_input(g, w),  dw = backward_weight(g, x),
//                                     db = backward_bias(g)                      [a = x, b = w]
struct ForwardBackward : ConvNode {
  std::string name() const override { return "ConvExtForwardBackward"; }
  void gradients(const at::Tensor& g, variable_list& out) override {
    const at::Tensor x = a.unpack(), w = b.unpack();
    if (wants(0)) out[0] = backward_input_op(g, w, x.sym_sizes(), stride, padding, dilation, groups);
    if (wants(1)) out[1] = backward_weight_op(g, x, w.sym_sizes(), stride, padding, dilation, groups);
    if (wants(2)) out[2] = backward_bias_op(g);
  }
};

//   dx = backward_input(dy, w)    ->  d(dy) = forward(g, w),      dw = backward_weight(dy, g)  [a = dy, b = w]
struct BackwardInputBackward : ConvNode {
  std::string name() const override { return "ConvExtBackwardInputBackward"; }
  void gradients(const at::Tensor& g, variable_list& out) override {
    const at::Tensor dy = a.unpack(), w = b.unpack();
    if (wants(0)) out[0] = forward_op(g, w, std::nullopt, stride, padding, dilation, groups);
    if (wants(1)) out[1] = backward_weight_op(dy, g, w.sym_sizes(), stride, padding, dilation, groups);
  }
};

//   dw = backward_weight(dy, x)   ->  d(dy) = forward(x, g),      dx = backward_input(dy, g)  [a = dy, b = x]
struct BackwardWeightBackward : ConvNode {
  std::string name() const override { return "ConvExtBackwardWeightBackward"; }
  void gradients(const at::Tensor& g, variable_list& out) override {
    const at::Tensor dy = a.unpack(), x = b.unpack();
    if (wants(0)) out[0] = forward_op(x, g, std::nullopt, stride, padding, dilation, groups);
    if (wants(1)) out[1] = backward_input_op(dy, g, x.sym_sizes(), stride, padding, dilation, groups);
  }
};

//   db = backward_bias(dy)        ->  d(dy) = g broadcast over (N, P, Q)
struct BackwardBiasBackward : ConvNode {
  std::vector<c10::SymInt> shape;  // dy's
  std::string name() const override { return "ConvExtBackwardBiasBackward"; }
  void gradients(const at::Tensor& g, variable_list& out) override {
    if (wants(0)) out[0] = g.view_symint({1, g.sym_size(0), 1, 1}).expand_symint(shape);
  }
};

bool requires_grad(const at::Tensor& t) { return t.defined() && t.requires_grad(); }
bool requires_grad(const std::optional<at::Tensor>& t) { return t.has_value() && requires_grad(*t); }
// forward-mode AD (dual tensors, torch.func.jvp): the tangent of t (undefined: none) and its primal
at::Tensor tangent(const at::Tensor& t) { return t.defined() ? t._fw_grad(/*level=*/0) : at::Tensor(); }
at::Tensor tangent(const std::optional<at::Tensor>& t) { return t.has_value() ? tangent(*t) : at::Tensor(); }
bool has_tangent(const auto& t) { return tangent(t).defined(); }
at::Tensor primal(const at::Tensor& t) { return t._fw_primal(/*level=*/0); }
// The tangent of op(a, b), an op linear in each of a and b: op(a', b) + op(a, b'), the terms whose
// argument has a tangent (undefined when neither has one)
template <class Op>
at::Tensor product_rule(const at::Tensor& a, const at::Tensor& b, const Op& op) {
  const at::Tensor a_t = tangent(a), b_t = tangent(b);
  at::Tensor t;
  if (a_t.defined()) t = op(a_t, primal(b));
  if (b_t.defined()) t = t.defined() ? t.add(op(primal(a), b_t)) : op(primal(a), b_t);
  return t;
}

// Runs `compute` (the op below autograd). When grad mode is on and an input requires grad, the
// result gets a new NodeT as its grad_fn, set up by setup(node), with the op's tensors `edges` as
// its edges; without one -- inference, and every backward pass without create_graph -- no node.
// When an input carries a tangent (forward-mode AD), the result gets tangent_of(result): each op is
// linear in each argument, so a tangent is the op again with one argument's tangent in its place.
// These are the steps torch's generated autograd kernels take, and like theirs they compose with
// torch.func's transforms (grad, vjp, jacrev, jvp, vmap over any of them).
template <class NodeT, class Compute, class Setup, class TangentOf, class... T>
at::Tensor call(const Compute& compute, const Setup& setup, const TangentOf& tangent_of, const T&... edges) {
  const bool rec = at::GradMode::is_enabled() && (requires_grad(edges) || ...);
  const bool dual = (has_tangent(edges) || ...);
  at::Tensor result;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    result = compute();
  }
  if (rec) {
    auto node = c10::make_intrusive<NodeT>();
    setup(*node);
    node->set_next_edges(torch::autograd::collect_next_edges(edges...));
    torch::autograd::set_history(result, node);
  }
  if (dual) result._set_fw_grad(tangent_of(result), /*level=*/0, /*is_inplace_op=*/false);
  return result;
}

//   y = forward(x, w) + b:  y' = forward(x', w) + forward(x, w') + b'
at::Tensor forward_autograd(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& b,
                            at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  auto tangent_of = [&](const at::Tensor& y) {
    at::Tensor t = product_rule(x, w, [&](const at::Tensor& xv, const at::Tensor& wv) {
      return forward_op(xv, wv, std::nullopt, stride, padding, dilation, groups);
    });
    const at::Tensor bt = tangent(b);
    if (!bt.defined()) return t;
    const at::Tensor b4 = bt.view({1, -1, 1, 1});
    return t.defined() ? t.add(b4) : b4.expand(y.sizes()).clone(y.suggest_memory_format());
  };
  return call<ForwardBackward>([&] { return forward_op(x, w, b, stride, padding, dilation, groups); },
                               [&](ConvNode& n) { n.save(x, w, stride, padding, dilation, groups); }, tangent_of,
                               x, w, b);
}

//   dx = backward_input(dy, w):  dx' = backward_input(dy', w) + backward_input(dy, w')
at::Tensor backward_input_autograd(const at::Tensor& dy, const at::Tensor& w, c10::SymIntArrayRef input_size,
                                   at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                                   int64_t groups) {
  auto tangent_of = [&](const at::Tensor&) {
    return product_rule(dy, w, [&](const at::Tensor& dyv, const at::Tensor& wv) {
      return backward_input_op(dyv, wv, input_size, stride, padding, dilation, groups);
    });
  };
  return call<BackwardInputBackward>(
      [&] { return backward_input_op(dy, w, input_size, stride, padding, dilation, groups); },
      [&](ConvNode& n) { n.save(dy, w, stride, padding, dilation, groups); }, tangent_of, dy, w);
}

//   dw = backward_weight(dy, x):  dw' = backward_weight(dy', x) + backward_weight(dy, x')
at::Tensor backward_weight_autograd(const at::Tensor& dy, const at::Tensor& x, c10::SymIntArrayRef weight_size,
                                    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                                    int64_t groups) {
  auto tangent_of = [&](const at::Tensor&) {
    return product_rule(dy, x, [&](const at::Tensor& dyv, const at::Tensor& xv) {
      return backward_weight_op(dyv, xv, weight_size, stride, padding, dilation, groups);
    });
  };
  return call<BackwardWeightBackward>(
      [&] { return backward_weight_op(dy, x, weight_size, stride, padding, dilation, groups); },
      [&](ConvNode& n) { n.save(dy, x, stride, padding, dilation, groups); }, tangent_of, dy, x);
}

//   db = backward_bias(dy):  db' = backward_bias(dy')
at::Tensor backward_bias_autograd(const at::Tensor& dy) {
  return call<BackwardBiasBackward>([&] { return backward_bias_op(dy); },
                                    [&](BackwardBiasBackward& n) { n.shape = dy.sym_sizes().vec(); },
                                    [&](const at::Tensor&) { return backward_bias_op(tangent(dy)); }, dy);
}

}  // namespace

TORCH_LIBRARY_IMPL(conv_ext, Autograd, m) {
  m.impl("conv2d_forward", &forward_autograd);
  m.impl("conv2d_backward_input", &backward_input_autograd);
  m.impl("conv2d_backward_weight", &backward_weight_autograd);
  m.impl("conv2d_backward_bias", &backward_bias_autograd);
}

}  // namespace conv_ext
