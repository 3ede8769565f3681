"""Loads the compiled kernels and teaches torch about the ops beyond their kernels.

Importing ``conv_ext._C`` runs the ``TORCH_LIBRARY`` registrations in ``csrc/``; after that the ops
live at ``torch.ops.conv_ext.*``. This file adds, for each op, a fake kernel (shapes, dtype and
layout only), so ``torch.compile`` and meta tensors can trace it. Autograd is registered in C++ (``csrc/autograd.cpp``): every gradient is another conv_ext op,
so backward is itself differentiable (double backward, ``gradgradcheck``).
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
    return grad_output.new_empty(weight_size).contiguous(memory_format=memory_format(grad_output, input))


@torch.library.register_fake("conv_ext::conv2d_backward_bias")
def _backward_bias_fake(grad_output):
    return grad_output.new_empty((grad_output.shape[1],))
