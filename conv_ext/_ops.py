"""Loads the compiled kernels and teaches torch about the ops beyond their kernels.

Importing ``conv_ext._C`` runs the ``TORCH_LIBRARY`` registrations in ``csrc/``; after that the ops
live at ``torch.ops.conv_ext.*``. This file adds, for each op:

* a fake kernel (shapes, dtype and layout only), so ``torch.compile`` and meta tensors can trace it;
* its autograd formula, written with the other ops, so every gradient is our own kernel and
  backward itself is differentiable (double backward, ``gradgradcheck``).
"""
import torch
from torch._prims_common import suggest_memory_format

from . import _C  # noqa: F401  (registers torch.ops.conv_ext.*)

ops = torch.ops.conv_ext


def out_size(size, kernel, stride, padding, dilation):
    """Output length along one axis: (size + 2*padding - dilation*(kernel-1) - 1) // stride + 1."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def memory_format(a, b):
    """channels_last when either operand suggests it -- the rule csrc/checks.cpp applies."""
    cl = torch.channels_last
    if suggest_memory_format(a) == cl or suggest_memory_format(b) == cl:
        return cl
    return torch.contiguous_format


# ---------------------------------------------------------------------------------------------
# fake kernels: the result's shape, dtype, device and layout, as the real kernels return them
# ---------------------------------------------------------------------------------------------
@torch.library.register_fake("conv_ext::conv2d_forward")
def _forward_fake(input, weight, bias, stride, padding, dilation, groups):
    n, _, h, w = input.shape
    k, _, r, s = weight.shape
    size = (n, k, out_size(h, r, stride[0], padding[0], dilation[0]), out_size(w, s, stride[1], padding[1], dilation[1]))
    return input.new_empty(size).contiguous(memory_format=memory_format(input, weight))


@torch.library.register_fake("conv_ext::conv2d_backward_input")
def _backward_input_fake(grad_output, weight, input_size, stride, padding, dilation, groups):
    return grad_output.new_empty(input_size).contiguous(memory_format=memory_format(grad_output, weight))


@torch.library.register_fake("conv_ext::conv2d_backward_weight")
def _backward_weight_fake(grad_output, input, weight_size, stride, padding, dilation, groups):
    return grad_output.new_empty(weight_size)


@torch.library.register_fake("conv_ext::conv2d_backward_bias")
def _backward_bias_fake(grad_output):
    return grad_output.new_empty((grad_output.shape[1],))


# ---------------------------------------------------------------------------------------------
# autograd. Each op is linear in each tensor argument, so each gradient is another of the ops:
#   y  = forward(x, w) + b   ->  dx = backward_input(dy, w),  dw = backward_weight(dy, x),
#                                db = backward_bias(dy)
#   dx = backward_input(dy, w)   ->  d(dy) = forward(g, w),    dw = backward_weight(dy, g)
#   dw = backward_weight(dy, x)  ->  d(dy) = forward(x, g),    dx = backward_input(dy, g)
#   db = backward_bias(dy)       ->  d(dy) = g broadcast over (N, P, Q)
# (g is the incoming gradient). Only the gradients autograd asks for are computed.
# ---------------------------------------------------------------------------------------------
def _save_geometry(ctx, inputs, first, second):
    ctx.save_for_backward(first, second)
    ctx.geometry = tuple(inputs[3:7])  # stride, padding, dilation, groups


def _forward_setup(ctx, inputs, output):
    input, weight, bias = inputs[:3]
    _save_geometry(ctx, inputs, input, weight)
    ctx.has_bias = bias is not None


def _forward_backward(ctx, grad):
    input, weight = ctx.saved_tensors
    need = ctx.needs_input_grad
    dx = ops.conv2d_backward_input(grad, weight, input.shape, *ctx.geometry) if need[0] else None
    dw = ops.conv2d_backward_weight(grad, input, weight.shape, *ctx.geometry) if need[1] else None
    db = ops.conv2d_backward_bias(grad) if ctx.has_bias and need[2] else None
    return dx, dw, db, None, None, None, None


def _backward_input_setup(ctx, inputs, output):
    grad_output, weight = inputs[:2]
    _save_geometry(ctx, inputs, grad_output, weight)


def _backward_input_backward(ctx, grad):
    grad_output, weight = ctx.saved_tensors
    need = ctx.needs_input_grad
    d_dy = ops.conv2d_forward(grad, weight, None, *ctx.geometry) if need[0] else None
    d_w = ops.conv2d_backward_weight(grad_output, grad, weight.shape, *ctx.geometry) if need[1] else None
    return d_dy, d_w, None, None, None, None, None


def _backward_weight_setup(ctx, inputs, output):
    grad_output, input = inputs[:2]
    _save_geometry(ctx, inputs, grad_output, input)


def _backward_weight_backward(ctx, grad):
    grad_output, input = ctx.saved_tensors
    need = ctx.needs_input_grad
    d_dy = ops.conv2d_forward(input, grad, None, *ctx.geometry) if need[0] else None
    d_x = ops.conv2d_backward_input(grad_output, grad, input.shape, *ctx.geometry) if need[1] else None
    return d_dy, d_x, None, None, None, None, None


def _backward_bias_setup(ctx, inputs, output):
    ctx.grad_output_shape = inputs[0].shape


def _backward_bias_backward(ctx, grad):
    return grad.view(1, -1, 1, 1).expand(ctx.grad_output_shape)


torch.library.register_autograd("conv_ext::conv2d_forward", _forward_backward, setup_context=_forward_setup)
torch.library.register_autograd(
    "conv_ext::conv2d_backward_input", _backward_input_backward, setup_context=_backward_input_setup
)
torch.library.register_autograd(
    "conv_ext::conv2d_backward_weight", _backward_weight_backward, setup_context=_backward_weight_setup
)
torch.library.register_autograd(
    "conv_ext::conv2d_backward_bias", _backward_bias_backward, setup_context=_backward_bias_setup
)
