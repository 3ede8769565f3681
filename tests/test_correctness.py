"""conv_ext.conv2d against torch.nn.functional.conv2d: output and all three gradients.

float64: relative error <= 1e-10. float32: within torch's own float32 error scale (both are
measured against a float64 result). float16/bfloat16: within the half types' error scale.
Random data (never zeros), over stride / padding / dilation / groups / bias / odd sizes /
layouts / contiguity / unbatched / batch 0.
"""
import pytest
import torch
import torch.nn.functional as F

import conv_ext
import conv_ext.testing
from conftest import rel_error

# (N, C, H, W, K, (R, S), stride, padding, dilation, groups, bias)
CASES = [
    (2, 3, 8, 8, 4, (3, 3), 1, 1, 1, 1, True),  # the textbook 3x3 "same"
    (1, 4, 7, 9, 6, (3, 3), 2, 0, 1, 1, False),  # stride 2, odd sizes
    (2, 6, 9, 7, 4, (3, 2), (2, 1), (1, 2), (2, 1), 2, True),  # everything per-axis, groups
    (2, 4, 6, 6, 4, (3, 3), 1, 1, 1, 4, True),  # depthwise
    (1, 3, 5, 5, 6, (3, 3), 1, 2, 2, 3, False),  # depthwise, channel multiplier 2, dilation 2
    (3, 5, 4, 4, 7, (1, 1), 1, 0, 1, 1, True),  # 1x1
    (1, 3, 11, 13, 5, (7, 7), 2, 3, 1, 1, True),  # stem-like 7x7 stride 2
    (2, 2, 1, 1, 3, (1, 1), 1, 0, 1, 1, True),  # 1x1 image
    (1, 2, 3, 4, 3, (3, 4), 1, 0, 1, 1, True),  # kernel == input: a 1x1 output
    (1, 2, 1, 1, 3, (3, 3), 1, 1, 1, 1, False),  # kernel == padded input
    (2, 3, 6, 5, 2, (2, 3), 3, (0, 1), 1, 1, True),  # stride larger than the kernel
    (1, 8, 5, 5, 8, (3, 3), 1, 1, 1, 2, True),  # grouped
]
IDS = [f"case{i}" for i in range(len(CASES))]


def make(case, dtype, device, layout="nchw", batch0=False):
    n, c, h, w, k, (r, s), stride, padding, dilation, groups, bias = case
    g = torch.Generator().manual_seed(1234)
    n = 0 if batch0 else n
    x = torch.randn(n, c, h, w, generator=g, dtype=torch.float64)
    wt = torch.randn(k, c // groups, r, s, generator=g, dtype=torch.float64)
    b = torch.randn(k, generator=g, dtype=torch.float64) if bias else None
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "noncontiguous":  # every other column of a wider tensor, and a permuted weight
        x = torch.randn(n, c, h, 2 * w, generator=g, dtype=torch.float64)[..., ::2]
        wt = wt.transpose(2, 3).contiguous().transpose(2, 3)
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    to = lambda t: None if t is None else t.to(device=device, dtype=dtype)
    return to(x), to(wt), to(b), kw


def forward_and_grads(fn, x, w, b, kw, grad_seed=99):
    leaves = [t.detach().requires_grad_() for t in (x, w) + ((b,) if b is not None else ())]
    y = fn(*leaves[:2], leaves[2] if b is not None else None, **kw)
    g = torch.Generator().manual_seed(grad_seed)
    go = torch.randn(y.shape, generator=g, dtype=torch.complex128 if y.is_complex() else torch.float64).to(y)
    grads = torch.autograd.grad(y, leaves, go)
    return [y.detach()] + [t for t in grads]


def make_complex(case, dtype, device, layout="nchw", batch0=False):
    """make()'s tensors for a complex dtype: random real and imaginary parts."""
    n, c, h, w, k, (r, s), stride, padding, dilation, groups, bias = case
    g = torch.Generator().manual_seed(4321)
    rand = lambda *size: torch.randn(*size, generator=g, dtype=torch.complex128)
    n = 0 if batch0 else n
    x = rand(n, c, h, 2 * w)[..., ::2] if layout == "noncontiguous" else rand(n, c, h, w)
    wt = rand(k, c // groups, r, s)
    b = rand(k) if bias else None
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "noncontiguous":
        wt = wt.transpose(2, 3).contiguous().transpose(2, 3)
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    to = lambda t: None if t is None else t.to(device=device, dtype=dtype)
    return to(x), to(wt), to(b), kw


def check(case, dtype, device, layout="nchw", batch0=False):
    x, w, b, kw = (make_complex if dtype.is_complex else make)(case, dtype, device, layout, batch0)
    ours = forward_and_grads(conv_ext.conv2d, x, w, b, kw)
    names = ["output", "grad_input", "grad_weight", "grad_bias"]
    if dtype in (torch.float64, torch.complex128):
        theirs = forward_and_grads(F.conv2d, x, w, b, kw)
        for name, a, e in zip(names, ours, theirs):
            assert a.shape == e.shape and a.dtype == e.dtype, name
            assert rel_error(a, e) <= 1e-10, f"{name}: relative error {rel_error(a, e):.3g}"
        return ours
    # lower precisions: both ours and torch's are compared with the float64 result
    wide = torch.complex128 if dtype.is_complex else torch.float64
    truth = forward_and_grads(F.conv2d, *(t.to(wide) if t is not None else None for t in (x, w, b)), kw)
    theirs = forward_and_grads(F.conv2d, x, w, b, kw) if device == "cpu" or dtype in (torch.float32, torch.complex64) else None
    floor = {torch.float32: 1e-6, torch.complex64: 1e-6, torch.float16: 4e-3, torch.bfloat16: 3e-2}[dtype]
    for i, (name, a, t) in enumerate(zip(names, ours, truth)):
        assert a.dtype == dtype and a.shape == t.shape, name
        torch_err = rel_error(theirs[i], t) if theirs is not None else 0.0
        err = rel_error(a, t)
        assert err <= max(4 * torch_err, floor), f"{name}: error {err:.3g}, torch's {torch_err:.3g}"
    return ours


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "noncontiguous"])
def test_float64(case, layout, device):
    check(case, torch.float64, device, layout)


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_float32(case, layout, device):
    check(case, torch.float32, device, layout)


@pytest.mark.parametrize("case", CASES[:7], ids=IDS[:7])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "noncontiguous"])
def test_half_types(case, dtype, layout, device):
    check(case, dtype, device, layout)


# complex64 / complex128: a real convolution of (re, im) pairs, or Gauss's three real convolutions
# of planes (csrc/complex_conv.h), every pass
@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.complex128, torch.complex64])
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "noncontiguous"])
@pytest.mark.parametrize("strategy", ["pairs", "gauss"])
def test_complex(case, dtype, layout, strategy, device):
    with conv_ext.testing.complex_strategy(strategy):
        check(case, dtype, device, layout)


@pytest.mark.parametrize("view", ["conj", "channels_last_filter", "channel_slice"])
@pytest.mark.parametrize("strategy", ["pairs", "gauss"])
def test_complex_views(view, strategy, device):
    # conjugate views (a lazy conj bit), a channels_last filter with an NCHW input, and a channel
    # slice of a wider channels_last tensor (its pairs are read in place with non-canonical strides)
    x, w, b, kw = make_complex(CASES[2], torch.complex128, device)
    if view == "conj":
        x, w, b = x.conj(), w.conj(), b.conj()
        assert x.is_conj()
    elif view == "channels_last_filter":
        w = w.contiguous(memory_format=torch.channels_last)
    else:
        x = torch.cat([x, x.flip(1)], 1).contiguous(memory_format=torch.channels_last)[:, 1 : 1 + x.shape[1]]
    with conv_ext.testing.complex_strategy(strategy):
        ours = forward_and_grads(conv_ext.conv2d, x, w, b, kw)
    theirs = forward_and_grads(F.conv2d, x, w, b, kw)
    for name, a, e in zip(["output", "grad_input", "grad_weight", "grad_bias"], ours, theirs):
        assert rel_error(a, e) <= 1e-10, f"{name}: relative error {rel_error(a, e):.3g}"
    # the output's layout is torch's; the gradients' follow the convolution's, as for real dtypes
    assert ours[0].stride() == theirs[0].stride()


def test_complex_form_follows_the_work_per_value(device):
    # Gauss's three convolutions where each activation value meets many multiply-adds (NCHW:
    # min(Cg*R*S, Kg*R*S/stride^2) >= 256, channels_last >= 512), the pairs elsewhere; and the
    # automatic choice gives torch's values
    form = lambda xs, ws, fmt=torch.contiguous_format, dtype=torch.complex128, **kw: conv_ext.testing.complex_form(
        torch.empty(xs, dtype=dtype).contiguous(memory_format=fmt), torch.empty(ws, dtype=dtype), **kw)
    assert form((4, 256, 14, 14), (256, 256, 3, 3)) == "gauss"
    assert form((4, 256, 14, 14), (256, 256, 3, 3), torch.channels_last) == "gauss"
    assert form((4, 128, 28, 28), (256, 128, 1, 1), torch.channels_last) == "pairs"
    assert form((4, 2048, 7, 7), (512, 2048, 1, 1), torch.channels_last) == "gauss"
    assert form((4, 128, 28, 28), (512, 128, 1, 1)) == "pairs"
    assert form((4, 96, 16, 16), (96, 1, 3, 3), groups=96) == "pairs"
    assert form((4, 32, 16, 16), (64, 32, 3, 3), stride=2) == "pairs"  # 64*9/4 = 144 per input value
    # complex64 depthwise layers on the CPU (form's tensors): Gauss's on small planes (float32's
    # depthwise kernels)
    c64 = dict(dtype=torch.complex64, groups=96)
    assert form((4, 96, 16, 16), (96, 1, 3, 3), **c64) == "gauss"
    assert form((4, 96, 16, 16), (96, 1, 3, 3), torch.channels_last, **c64) == "pairs"
    assert form((4, 96, 14, 14), (96, 1, 3, 3), torch.channels_last, **c64) == "gauss"
    assert form((4, 96, 112, 112), (96, 1, 3, 3), stride=2, **c64) == "pairs"
    assert form((4, 96, 16, 16), (192, 1, 3, 3), **c64) == "pairs"  # a channel multiplier: not depthwise
    x, w, b, kw = make_complex((2, 32, 6, 5, 32, (3, 3), 1, 1, 1, 1, True), torch.complex128, device)
    assert conv_ext.testing.complex_form(x, w, **kw) == "gauss"
    for a, e in zip(forward_and_grads(conv_ext.conv2d, x, w, b, kw), forward_and_grads(F.conv2d, x, w, b, kw)):
        assert rel_error(a, e) <= 1e-10


@pytest.mark.parametrize("case", [CASES[0], CASES[2], CASES[4]], ids=["case0", "case2", "case4"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.complex128])
def test_batch0(case, dtype, device):
    y, dx, dw, *db = check(case, dtype, device, batch0=True)
    assert y.shape[0] == 0 and dx.shape[0] == 0
    assert torch.count_nonzero(dw) == 0  # an empty batch contributes no gradient


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.complex128])
def test_unbatched(dtype, device):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 7, 6, generator=g, dtype=dtype).to(device)
    w = torch.randn(6, 2, 3, 3, generator=g, dtype=dtype).to(device)
    b = torch.randn(6, generator=g, dtype=dtype).to(device)
    ours = forward_and_grads(conv_ext.conv2d, x, w, b, dict(padding=1, groups=2))
    theirs = forward_and_grads(F.conv2d, x, w, b, dict(padding=1, groups=2))
    assert ours[0].shape == (6, 7, 6)
    for a, e in zip(ours, theirs):
        assert a.shape == e.shape and rel_error(a, e) <= (1e-5 if dtype == torch.float32 else 1e-10)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_unbatched_channels_innermost_with_channels_last_filter(dtype, device):
    """An unbatched input whose channels are innermost (a channels_last batch's image) with a
    channels_last filter. Torch 2.13's float64 weight gradient is wrong here on the CPU (off by
    about its own size: benchmarks/accuracy_search.py found it), so the reference is torch's on
    contiguous copies of the same values."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 8, 12, 10, generator=g, dtype=dtype).contiguous(memory_format=torch.channels_last)[0].to(device)
    w = torch.randn(32, 4, 3, 3, generator=g, dtype=dtype).contiguous(memory_format=torch.channels_last).to(device)
    b = torch.randn(32, generator=g, dtype=dtype).to(device)
    ours = forward_and_grads(conv_ext.conv2d, x, w, b, dict(padding=1, groups=2))
    theirs = forward_and_grads(F.conv2d, x.contiguous(), w.contiguous(), b, dict(padding=1, groups=2))
    for a, e in zip(ours, theirs):
        assert a.shape == e.shape and rel_error(a, e) <= (1e-5 if dtype == torch.float32 else 1e-10)


@pytest.mark.parametrize("kernel,dilation", [((3, 3), 1), ((4, 2), 1), ((2, 5), (1, 2)), ((4, 4), (2, 3))])
@pytest.mark.parametrize("padding", ["same", "valid"])
def test_padding_strings(kernel, dilation, padding, device):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 9, 10, generator=g, dtype=torch.float64).to(device)
    w = torch.randn(4, 3, *kernel, generator=g, dtype=torch.float64).to(device)
    b = torch.randn(4, generator=g, dtype=torch.float64).to(device)
    kw = dict(padding=padding, dilation=dilation)
    ours = forward_and_grads(conv_ext.conv2d, x, w, b, kw)
    theirs = forward_and_grads(F.conv2d, x, w, b, kw)
    if padding == "same":
        assert ours[0].shape[2:] == x.shape[2:]
    for a, e in zip(ours, theirs):
        assert a.shape == e.shape and rel_error(a, e) <= 1e-10


@pytest.mark.parametrize("arg", [dict(stride=[2]), dict(padding=(1,)), dict(dilation=[1, 2]), dict(stride=(1, 2))])
def test_argument_forms(arg, device):
    """ints, 1-element and 2-element sequences, as F.conv2d accepts them."""
    x = torch.randn(1, 2, 8, 9, dtype=torch.float64, device=device)
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64, device=device)
    assert rel_error(conv_ext.conv2d(x, w, **arg), F.conv2d(x, w, **arg)) <= 1e-10


def test_layout_follows_torch(device):
    x = torch.randn(2, 3, 8, 8, device=device).contiguous(memory_format=torch.channels_last)
    w = torch.randn(4, 3, 3, 3, device=device)
    y = conv_ext.conv2d(x, w, padding=1)
    assert y.is_contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    w.requires_grad_()
    conv_ext.conv2d(x, w, padding=1).sum().backward()
    assert x.grad.is_contiguous(memory_format=torch.channels_last)
    y = conv_ext.conv2d(torch.randn(2, 3, 8, 8, device=device), torch.randn(4, 3, 3, 3, device=device))
    assert y.is_contiguous()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_nan_inf_propagate(dtype, device):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 2, 6, 6, generator=g, dtype=dtype)
    x[0, 0, 2, 3] = float("nan")
    x[0, 1, 4, 1] = float("inf")
    x[0, 1, 0, 5] = float("-inf")
    x = x.to(device)
    w = torch.rand(3, 2, 3, 3, generator=g, dtype=dtype).add_(0.1).to(device)  # positive: no inf - inf
    ours, theirs = conv_ext.conv2d(x, w, padding=1), F.conv2d(x, w, padding=1)
    assert torch.equal(torch.isnan(ours), torch.isnan(theirs))
    assert torch.equal(torch.isinf(ours), torch.isinf(theirs))
    assert torch.equal(torch.sign(ours[torch.isinf(ours)]), torch.sign(theirs[torch.isinf(theirs)]))
    finite = torch.isfinite(theirs)
    assert rel_error(ours[finite], theirs[finite]) <= 1e-5


def test_deterministic(device):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 8, 12, 12, generator=g).to(device).requires_grad_()
    w = torch.randn(16, 8, 3, 3, generator=g).to(device).requires_grad_()
    runs = []
    for _ in range(2):
        y = conv_ext.conv2d(x, w, padding=1)
        runs.append([y] + list(torch.autograd.grad(y, [x, w], torch.ones_like(y))))
    for a, b in zip(*runs):
        assert torch.equal(a, b)


# Strided 1x1 layers run as the stride-1 convolution of every stride-th pixel; the gradient of the
# input is that result scattered back with zeros in between (odd sizes: the last row / column
# kept or skipped). Channels_last takes that route from 2^24 multiply-adds on (the large case).
# NCHW on the CPU copies the pixels (and scatters the gradient) plane by plane, at a width stride
# of 2 a pixel and its neighbour as one integer of twice the element's size, an odd width's last
# pixel alone: even and odd widths, other strides, 2-, 4- and 8-byte elements.
@pytest.mark.parametrize("case", [
    (2, 5, 7, 9, 6, (1, 1), 2, 0, 1, 1, True),
    (1, 4, 8, 7, 3, (1, 1), (3, 2), 0, 1, 1, False),
    (2, 128, 33, 31, 256, (1, 1), 2, 0, 1, 1, True),
    (1, 6, 10, 8, 5, (1, 1), 2, 0, 1, 1, True),
    (2, 3, 9, 11, 4, (1, 1), (2, 3), 0, 1, 1, False),
], ids=["small", "strides3x2", "large", "even", "strides2x3"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
def test_strided_1x1(case, layout, dtype, device):
    check(case, dtype, device, layout)
