"""Loads the compiled kernels and teaches torch about the ops beyond their kernels.

Importing ``conv_ext._C`` runs the ``TORCH_LIBRARY`` registrations in ``csrc/``; after that the ops
live at ``torch.ops.conv_ext.*``. This file adds, for each op, a fake kernel (shapes, dtype and
layout only), so ``torch.compile`` and meta tensors can trace it. Autograd is registered in C++ (``csrc/autograd.cpp``): every gradient is another conv_ext op,
so backward is itself differentiable (double backward, ``gradgradcheck``).
"""
import torch
import torch._decomp
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


# ---------------------------------------------------------------------------------------------
# vmap rules: torch.vmap (per-sample gradients: vmap(grad(...)), jacrev, jacfwd, batched
# gradients) runs one call of an op for the whole batch of the transform, not one per element (what
# functorch's fallback does without a rule). The transform's batch B joins the images' batch N
# when there is one filter; when the filters differ (B filters, or a gradient for each of B
# inputs), it joins the channels as B times as many groups: group b*groups + g is group g of
# element b, the same block structure torch's own convolution batching rule uses.
# ---------------------------------------------------------------------------------------------
def _batch_into_images(t, bdim):
    """(.., B at bdim, ..) (N, C, H, W) -> (B*N, C, H, W)."""
    t = t.movedim(bdim, 0)
    return t.reshape(t.shape[0] * t.shape[1], *t.shape[2:])


def _batch_into_channels(t, bdim, size):
    """(N, C, H, W), B of them at bdim -> (N, B*C, H, W); an unbatched t is repeated B times."""
    if bdim is None:
        return t.repeat(1, size, 1, 1)
    t = t.movedim(bdim, 1)
    return t.reshape(t.shape[0], t.shape[1] * t.shape[2], *t.shape[3:])


def _batch_into_filters(t, bdim, size):
    """(K, ...), B of them at bdim -> (B*K, ...); an unbatched t is repeated B times."""
    if bdim is None:
        return t.repeat(size, *([1] * (t.dim() - 1)))
    t = t.movedim(bdim, 0)
    return t.reshape(t.shape[0] * t.shape[1], *t.shape[2:])


@torch.library.register_vmap("conv_ext::conv2d_forward")
def _forward_vmap(info, in_dims, input, weight, bias, stride, padding, dilation, groups):
    x_dim, w_dim, b_dim = in_dims[:3]
    size = info.batch_size
    if w_dim is None:  # one filter
        if x_dim is None:  # only the bias differs
            y = ops.conv2d_forward(input, weight, None, stride, padding, dilation, groups).unsqueeze(0)
        else:
            y = ops.conv2d_forward(_batch_into_images(input, x_dim), weight, bias if b_dim is None else None,
                                   stride, padding, dilation, groups)
            y = y.view(size, -1, *y.shape[1:])
        if b_dim is not None:
            y = y + bias.movedim(b_dim, 0).view(size, 1, -1, 1, 1)
        return y, 0
    b = None if bias is None else _batch_into_filters(bias, b_dim, size)
    y = ops.conv2d_forward(_batch_into_channels(input, x_dim, size), _batch_into_filters(weight, w_dim, size), b,
                           stride, padding, dilation, groups * size)
    return y.view(y.shape[0], size, -1, *y.shape[2:]), 1


@torch.library.register_vmap("conv_ext::conv2d_backward_input")
def _backward_input_vmap(info, in_dims, grad_output, weight, input_size, stride, padding, dilation, groups):
    dy_dim, w_dim = in_dims[:2]
    size = info.batch_size
    n, c, h, w = input_size
    if w_dim is None:  # one filter: the transform's batch joins the images'
        dx = ops.conv2d_backward_input(_batch_into_images(grad_output, dy_dim), weight, [size * n, c, h, w],
                                       stride, padding, dilation, groups)
        return dx.view(size, n, *dx.shape[1:]), 0
    dx = ops.conv2d_backward_input(_batch_into_channels(grad_output, dy_dim, size),
                                   _batch_into_filters(weight, w_dim, size), [n, size * c, h, w],
                                   stride, padding, dilation, groups * size)
    return dx.view(n, size, c, h, w), 1


@torch.library.register_vmap("conv_ext::conv2d_backward_weight")
def _backward_weight_vmap(info, in_dims, grad_output, input, weight_size, stride, padding, dilation, groups):
    dy_dim, x_dim = in_dims[:2]
    size = info.batch_size
    k, cg, r, s = weight_size
    dw = ops.conv2d_backward_weight(_batch_into_channels(grad_output, dy_dim, size),
                                    _batch_into_channels(input, x_dim, size), [size * k, cg, r, s],
                                    stride, padding, dilation, groups * size)
    return dw.view(size, k, cg, r, s), 0


@torch.library.register_vmap("conv_ext::conv2d_backward_bias")
def _backward_bias_vmap(info, in_dims, grad_output):
    size = info.batch_size
    db = ops.conv2d_backward_bias(_batch_into_channels(grad_output, in_dims[0], size))
    return db.view(size, -1), 0


# ---------------------------------------------------------------------------------------------
# ONNX: torch.onnx.export writes conv_ext's forward as ONNX's Conv. The exporter (dynamo=True, the
# default) decomposes every op it has no translation for through torch._decomp's table, where this
# puts the forward as aten.convolution; torch.compile and torch.export keep our op (their tables
# are lists of ops; tests/test_ecosystem.py checks both). The TorchScript-based exporter
# (dynamo=False) takes a symbolic function instead.
# ---------------------------------------------------------------------------------------------
@torch._decomp.register_decomposition(ops.conv2d_forward.default)
def _forward_as_aten(input, weight, bias, stride, padding, dilation, groups):
    return torch.ops.aten.convolution.default(input, weight, bias, stride, padding, dilation, False, [0, 0], groups)


def _register_onnx_symbolic():
    from torch.onnx import register_custom_op_symbolic, symbolic_helper as sh

    @sh.parse_args("v", "v", "v", "is", "is", "is", "i")
    def forward_symbolic(g, input, weight, bias, stride, padding, dilation, groups):
        kernel = sh._get_tensor_sizes(weight)[2:]
        inputs = [input, weight] + ([] if sh._is_none(bias) else [bias])
        return g.op("Conv", *inputs, kernel_shape_i=kernel, strides_i=stride, pads_i=padding + padding,
                    dilations_i=dilation, group_i=groups)

    register_custom_op_symbolic("conv_ext::conv2d_forward", forward_symbolic, 9)


_register_onnx_symbolic()
