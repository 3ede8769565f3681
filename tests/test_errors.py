"""Every bad input raises a RuntimeError or ValueError naming the argument and the values,
before any kernel runs (the C++ checks in csrc/checks.cpp, the forms in functional.py)."""
import warnings

import pytest
import torch

import conv_ext

ops = torch.ops.conv_ext


def x_(*shape, **kw):
    return torch.randn(*shape, **kw)


def c32_(*shape, device):
    with warnings.catch_warnings():  # "ComplexHalf support is experimental"
        warnings.simplefilter("ignore", UserWarning)
        return torch.randn(*shape, dtype=torch.complex64, device=device).to(torch.complex32)


CASES = {
    # name: (callable, expected exception, regex the message must match)
    "input 2-D": (lambda d: conv_ext.conv2d(x_(3, 8, device=d), x_(4, 3, 3, 3, device=d)), RuntimeError, r"input to be 3-D .* or 4-D .* got 2-D input of size \[3, 8\]"),
    "input 5-D": (lambda d: conv_ext.conv2d(x_(1, 1, 3, 8, 8, device=d), x_(4, 3, 3, 3, device=d)), RuntimeError, r"got 5-D input"),
    "weight 3-D": (lambda d: conv_ext.conv2d(x_(1, 3, 8, 8, device=d), x_(4, 3, 3, device=d)), RuntimeError, r"expected weight to be 4-D .* got 3-D weight of size \[4, 3, 3\]"),
    "channels": (lambda d: conv_ext.conv2d(x_(1, 12, 8, 8, device=d), x_(4, 8, 3, 3, device=d), groups=2), RuntimeError, r"expected input to have 16 channels \(groups=2 x weight.size\(1\)=8\), got 12"),
    "out_channels % groups": (lambda d: conv_ext.conv2d(x_(1, 6, 8, 8, device=d), x_(10, 2, 3, 3, device=d), groups=3), RuntimeError, r"out_channels \(weight.size\(0\)=10\) to be divisible by groups=3"),
    "stride 0": (lambda d: conv_ext.conv2d(x_(1, 3, 8, 8, device=d), x_(4, 3, 3, 3, device=d), stride=0), RuntimeError, r"stride to be positive, got stride=\[0, 0\]"),
    "stride negative": (lambda d: conv_ext.conv2d(x_(1, 3, 8, 8, device=d), x_(4, 3, 3, 3, device=d), stride=(1, -2)), RuntimeError, r"stride to be positive, got stride=\[1, -2\]"),
    "dilation 0": (lambda d: conv_ext.conv2d(x_(1, 3, 8, 8, device=d), x_(4, 3, 3, 3, device=d), dilation=(0, 1)), RuntimeError, r"dilation to be positive, got dilation=\[0, 1\]"),
    "groups 0": (lambda d: conv_ext.conv2d(x_(1, 3, 8, 8, device=d), x_(4, 3, 3, 3, device=d), groups=0), RuntimeError, r"groups to be positive, got groups=0"),
    "groups negative": (lambda d: conv_ext.conv2d(x_(1, 3, 8, 8, device=d), x_(4, 3, 3, 3, device=d), groups=-1), RuntimeError, r"groups to be positive, got groups=-1"),
    "padding negative": (lambda d: conv_ext.conv2d(x_(1, 3, 8, 8, device=d), x_(4, 3, 3, 3, device=d), padding=-1), RuntimeError, r"padding to be non-negative, got padding=\[-1, -1\]"),
    "kernel too large": (lambda d: conv_ext.conv2d(x_(1, 3, 4, 4, device=d), x_(4, 3, 5, 5, device=d)), RuntimeError, r"kernel size \(5, 5\) .* larger than the padded input size \(4, 4\)"),
    "dilated kernel too large": (lambda d: conv_ext.conv2d(x_(1, 3, 6, 6, device=d), x_(4, 3, 3, 3, device=d), dilation=3), RuntimeError, r"kernel size \(7, 7\) .* larger than the padded input size \(6, 6\)"),
    "same with stride": (lambda d: conv_ext.conv2d(x_(1, 3, 8, 8, device=d), x_(4, 3, 3, 3, device=d), stride=2, padding="same"), ValueError, r"padding='same' is not supported for strided convolutions, got stride=\(2, 2\)"),
    "unknown padding string": (lambda d: conv_ext.conv2d(x_(1, 3, 8, 8, device=d), x_(4, 3, 3, 3, device=d), padding="full"), ValueError, r"invalid padding string 'full', expected 'valid' or 'same'"),
    "stride of 3 values": (lambda d: conv_ext.conv2d(x_(1, 3, 8, 8, device=d), x_(4, 3, 3, 3, device=d), stride=(1, 2, 3)), ValueError, r"stride to be an int or a pair of ints, got \(1, 2, 3\)"),
    "float stride": (lambda d: conv_ext.conv2d(x_(1, 3, 8, 8, device=d), x_(4, 3, 3, 3, device=d), stride=1.5), ValueError, r"stride to be an int or a pair of ints, got 1.5"),
    "dtype mismatch": (lambda d: conv_ext.conv2d(x_(1, 3, 8, 8, device=d), x_(4, 3, 3, 3, device=d, dtype=torch.float64)), RuntimeError, r"input and weight to have the same dtype, got input Float and weight Double"),
    "bias dtype mismatch": (lambda d: conv_ext.conv2d(x_(1, 3, 8, 8, device=d), x_(4, 3, 3, 3, device=d), x_(4, device=d, dtype=torch.float64)), RuntimeError, r"input and bias to have the same dtype, got input Float and bias Double"),
    "bias wrong size": (lambda d: conv_ext.conv2d(x_(1, 3, 8, 8, device=d), x_(4, 3, 3, 3, device=d), x_(5, device=d)), RuntimeError, r"expected bias of size \[4\] \(weight.size\(0\)\), got \[5\]"),
    "bias 2-D": (lambda d: conv_ext.conv2d(x_(1, 3, 8, 8, device=d), x_(4, 3, 3, 3, device=d), x_(4, 1, device=d)), RuntimeError, r"expected bias of size \[4\] \(weight.size\(0\)\), got \[4, 1\]"),
    "bool dtype": (lambda d: conv_ext.conv2d(torch.ones(1, 3, 8, 8, dtype=torch.bool, device=d), torch.ones(4, 3, 3, 3, dtype=torch.bool, device=d)), RuntimeError, r"expected input to be float32, float64, float16, bfloat16, complex64, complex128 or an integer type \(uint8, int8, int16, int32, int64\), got Bool"),
    "uint16 dtype": (lambda d: conv_ext.conv2d(torch.ones(1, 3, 8, 8, dtype=torch.uint16), torch.ones(4, 3, 3, 3, dtype=torch.uint16)), RuntimeError, r"expected input to be float32, .* int32, int64\), got UInt16"),
    "complex32 dtype": (lambda d: conv_ext.conv2d(c32_(1, 3, 8, 8, device=d), c32_(4, 3, 3, 3, device=d)), RuntimeError, r"expected input to be float32, .* complex128 or an integer type .*, got ComplexHalf"),
    "integer and float": (lambda d: conv_ext.conv2d(torch.ones(1, 3, 8, 8, dtype=torch.int32, device="cpu"), x_(4, 3, 3, 3, device="cpu")), RuntimeError, r"input and weight to have the same dtype, got input Int and weight Float"),
    "complex input, real weight": (lambda d: conv_ext.conv2d(x_(1, 3, 8, 8, dtype=torch.complex64, device=d), x_(4, 3, 3, 3, device=d)), RuntimeError, r"input and weight to have the same dtype, got input ComplexFloat and weight Float"),
    "complex bias, real weight": (lambda d: conv_ext.conv2d(x_(1, 3, 8, 8, device=d), x_(4, 3, 3, 3, device=d), x_(4, dtype=torch.complex64, device=d)), RuntimeError, r"input and bias to have the same dtype, got input Float and bias ComplexFloat"),
    "complex channels": (lambda d: conv_ext.conv2d(x_(1, 6, 8, 8, dtype=torch.complex128, device=d), x_(4, 4, 3, 3, dtype=torch.complex128, device=d)), RuntimeError, r"expected input to have 4 channels \(groups=1 x weight.size\(1\)=4\), got 6"),
    "empty kernel": (lambda d: conv_ext.conv2d(x_(1, 3, 8, 8, device=d), x_(4, 3, 0, 3, device=d)), RuntimeError, r"expected a positive kernel size, got weight of kernel size \(0, 3\)"),
    "input not a tensor": (lambda d: conv_ext.conv2d([[1.0]], x_(4, 3, 3, 3, device=d)), ValueError, r"expected input to be a Tensor, got list"),
    "input None": (lambda d: conv_ext.conv2d(None, x_(4, 3, 3, 3, device=d)), ValueError, r"expected input to be a Tensor, got NoneType"),
    "weight None": (lambda d: conv_ext.conv2d(x_(1, 3, 8, 8, device=d), None), ValueError, r"expected weight to be a Tensor, got NoneType"),
    "bias not a tensor": (lambda d: conv_ext.conv2d(x_(1, 3, 8, 8, device=d), x_(4, 3, 3, 3, device=d), [0.0] * 4), ValueError, r"expected bias to be a Tensor or None, got list"),
    "backward_input size": (lambda d: ops.conv2d_backward_input(x_(1, 4, 6, 6, device=d), x_(4, 3, 3, 3, device=d), [1, 3, 9, 9], [1, 1], [0, 0], [1, 1], 1), RuntimeError, r"expected grad_output of size \[1, 4, 7, 7\], got \[1, 4, 6, 6\]"),
    "backward_weight size": (lambda d: ops.conv2d_backward_weight(x_(1, 4, 6, 6, device=d), x_(1, 3, 8, 8, device=d), [4, 2, 3, 3], [1, 1], [0, 0], [1, 1], 1), RuntimeError, r"expected input to have 2 channels \(groups=1 x weight.size\(1\)=2\), got 3"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, device):
    fn, exc, pattern = CASES[name]
    with pytest.raises(exc, match=pattern):
        fn(device)


def test_device_mismatch():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    with pytest.raises(RuntimeError, match=r"input and weight to be on the same device, got input on cpu and weight on cuda"):
        conv_ext.conv2d(x_(1, 3, 8, 8), x_(4, 3, 3, 3, device="cuda"))


def test_integer_on_cuda():
    """Integer tensors run on the CPU only, as torch's own convolution (tests/test_integer.py)."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    with pytest.raises(RuntimeError, match=r"integer tensors run on the CPU only .* got input of dtype Long on cuda"):
        conv_ext.conv2d(torch.ones(1, 3, 8, 8, dtype=torch.int64, device="cuda"), torch.ones(4, 3, 3, 3, dtype=torch.int64, device="cuda"))


def test_module_rejects_like_nn():
    """The module's constructor is nn.Conv2d's: its own argument errors are nn.Conv2d's."""
    with pytest.raises(ValueError, match="groups must be a positive integer"):
        conv_ext.Conv2d(4, 4, 3, groups=0)
    with pytest.raises(ValueError, match="padding_mode"):
        conv_ext.Conv2d(4, 4, 3, padding_mode="mirror")
