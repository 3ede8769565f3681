"""conv_ext.conv2d: the signature and semantics of torch.nn.functional.conv2d.

This layer only normalises the *form* of the arguments (ints or pairs, 'same'/'valid', unbatched
input); the values are checked once, in C++ (csrc/checks.cpp), before any kernel runs.
"""
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from . import _C
from ._ops import ops

# tensors the direct binding takes; subclasses (FakeTensor, ...) go through torch.ops
_PLAIN = (torch.Tensor, torch.nn.Parameter)

IntOrPair = Union[int, Sequence[int]]


def _pair(name: str, value: IntOrPair) -> Tuple[int, int]:
    if type(value) is int:  # the common cases first (bool is not int here): an int, or the
        return (value, value)  # tuple of two ints nn.Conv2d passes (a list from F.conv2d callers)
    if type(value) in (tuple, list) and len(value) == 2 and type(value[0]) is int and type(value[1]) is int:
        return (value[0], value[1])
    if isinstance(value, bool):
        raise ValueError(f"conv_ext.conv2d: expected {name} to be an int or a pair of ints, got {value!r}")
    if isinstance(value, int) or (isinstance(value, torch.SymInt)):
        return (value, value)
    try:
        values = tuple(value)
    except TypeError:
        raise ValueError(f"conv_ext.conv2d: expected {name} to be an int or a pair of ints, got {value!r}") from None
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or not all(isinstance(v, (int, torch.SymInt)) and not isinstance(v, bool) for v in values):
        raise ValueError(f"conv_ext.conv2d: expected {name} to be an int or a pair of ints, got {value!r}")
    return values


def _autocast(t, dtype, device_type):
    """What autocast does to a tensor argument: floating tensors on the autocast device are cast,
    float64 excepted."""
    if t is not None and t.is_floating_point() and t.dtype != torch.float64 and t.device.type == device_type:
        return t.to(dtype)
    return t


def _same_padding(input, weight, stride, dilation):
    """'same' as torch does it: total padding dilation*(k-1) per axis; when that is odd, the
    extra row/column goes at the bottom/right (by padding the input) and the rest is symmetric."""
    if any(s != 1 for s in stride):
        raise ValueError(f"conv_ext.conv2d: padding='same' is not supported for strided convolutions, got stride={stride}")
    if weight.dim() != 4:
        return input, (0, 0)  # the weight's shape is wrong: let the C++ checks say so
    total = [d * (k - 1) for d, k in zip(dilation, weight.shape[2:])]
    left = tuple(t // 2 for t in total)
    extra = [t - 2 * lo for t, lo in zip(total, left)]  # 0 or 1 per axis
    if any(extra):
        input = F.pad(input, (0, extra[1], 0, extra[0]))  # (left, right, top, bottom)
    return input, left


def conv2d(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    stride: IntOrPair = 1,
    padding: Union[IntOrPair, str] = 0,
    dilation: IntOrPair = 1,
    groups: int = 1,
) -> torch.Tensor:
    """2-D convolution of ``input`` (N, C, H, W) or (C, H, W) with ``weight`` (K, C/groups, R, S).

    Same arguments and results as :func:`torch.nn.functional.conv2d`; the output is (N, K, P, Q)
    with P = (H + 2*padding - dilation*(R-1) - 1) // stride + 1 (Q likewise), and is
    channels_last when the input (or weight) is. Computed by conv_ext's own kernels.
    """
    if not torch.compiler.is_compiling():  # the common call, all in C++ (None: not one)
        out = _C.conv2d_eager(input, weight, bias, stride, padding, dilation, groups)
        if out is not None:
            return out
    if torch.overrides.has_torch_function_variadic(input, weight, bias):
        # as torch.nn.functional.conv2d: an argument with __torch_function__ (torch.fx's Proxy in
        # symbolic_trace, a tensor subclass) or an active torch-function mode sees conv_ext.conv2d
        # itself, so torch.fx records it as one call_function node
        return torch.overrides.handle_torch_function(
            conv2d, (input, weight, bias), input, weight, bias=bias, stride=stride, padding=padding,
            dilation=dilation, groups=groups)
    for name, t in (("input", input), ("weight", weight), ("bias", bias)):
        if not isinstance(t, torch.Tensor) and not (name == "bias" and t is None):
            raise ValueError(f"conv_ext.conv2d: expected {name} to be a Tensor{' or None' if name == 'bias' else ''}, "
                             f"got {type(t).__name__}")
    stride = _pair("stride", stride)
    dilation = _pair("dilation", dilation)
    if not isinstance(groups, (int, torch.SymInt)) or isinstance(groups, bool):
        raise ValueError(f"conv_ext.conv2d: expected groups to be an int, got {groups!r}")

    # under autocast, run in the autocast dtype as torch's conv2d does
    device_type = input.device.type if torch._C._is_any_autocast_enabled() else None
    if device_type in ("cpu", "cuda") and torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        input, weight, bias = (_autocast(t, dtype, device_type) for t in (input, weight, bias))

    unbatched = input.dim() == 3
    if unbatched:
        input = input.unsqueeze(0)

    if isinstance(padding, str):
        if padding == "valid":
            pad = (0, 0)
        elif padding == "same":
            input, pad = _same_padding(input, weight, stride, dilation)
        else:
            raise ValueError(f"conv_ext.conv2d: invalid padding string {padding!r}, expected 'valid' or 'same'")
    else:
        pad = _pair("padding", padding)

    if (
        type(input) in _PLAIN
        and type(weight) in _PLAIN
        and (bias is None or type(bias) in _PLAIN)
        and not torch.compiler.is_compiling()
        and not torch._C._is_torch_function_mode_enabled()
    ):
        # eager, plain tensors: the same op through the dispatcher, called from C++ (about 1 us
        # less per call than torch.ops, which torch.compile and tensor subclasses need)
        out = _C.conv2d_forward(input, weight, bias, stride, pad, dilation, groups)
    else:
        out = ops.conv2d_forward(input, weight, bias, stride, pad, dilation, groups)
    return out.squeeze(0) if unbatched else out
