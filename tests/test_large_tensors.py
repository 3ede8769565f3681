"""Tensors of more than 2^31 elements on the CPU: every offset a kernel computes must be 64-bit.

Opt-in (each case holds ~17 GB and takes ~0.5-1.5 min on 2 cores):

    CONV_EXT_LARGE_TESTS=1 PYTHONPATH=. python -m pytest -q tests/test_large_tensors.py

Two kinds of size: many images of a modest plane (offsets past 2^31 come from the image index)
and one image whose planes hold 2^31 elements (from the row index). A wrong offset would read or
write the wrong place, or outside the tensor; each pass is checked against torch on the first
and last image (or the top-left and bottom-right corners of the plane), and backward-weight,
which sums over everything, against a float64 sum of torch's results over slices.
"""
import os
from contextlib import nullcontext

import pytest
import torch
import torch.nn.functional as F

import conv_ext.testing as T

pytestmark = pytest.mark.skipif(os.environ.get("CONV_EXT_LARGE_TESTS") != "1",
                                reason="needs ~17 GB and minutes a case: set CONV_EXT_LARGE_TESTS=1")

#         input shape              weight shape    padding groups
CASES = {
    "images.3x3": ((8193, 16, 128, 128), (16, 16, 3, 3), 1, 1),  # 2^31 + 2^18 elements
    "images.1x1": ((8193, 16, 128, 128), (16, 16, 1, 1), 0, 1),
    "images.depthwise": ((8193, 16, 128, 128), (16, 1, 3, 3), 1, 16),
    "images.winograd": ((8193, 64, 64, 64), (64, 64, 3, 3), 1, 1),  # forced: winograd's tiles
    "plane.3x3": ((1, 2, 32769, 32769), (2, 2, 3, 3), 1, 1),  # 2 x 32769^2 > 2^31
    "plane.1x1": ((1, 2, 32769, 32769), (2, 2, 1, 1), 0, 1),
    "plane.depthwise": ((1, 2, 32769, 32769), (2, 1, 3, 3), 1, 2),
}
ONE = [1, 1]


def windows(shape):
    """Index tuples of the regions checked: whole first and last images, or two 41x41 corners."""
    n, _, h, w = shape
    if n > 1:
        return [(slice(0, 1), slice(None), slice(None), slice(None)), (slice(n - 1, n), slice(None), slice(None), slice(None))]
    return [(slice(None), slice(None), slice(0, 41), slice(0, 41)), (slice(None), slice(None), slice(h - 41, h), slice(w - 41, w))]


def inner(t, plane, pad):
    """The part of a window's result that does not depend on what lies outside the window."""
    return t[..., pad:t.shape[-2] - pad, pad:t.shape[-1] - pad] if plane and pad else t


def rel(got, want):
    return ((got.double() - want.double()).abs().max() / want.double().abs().max()).item()


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("pass_name", ["forward", "backward_input", "backward_weight"])
@pytest.mark.parametrize("case", list(CASES))
def test_more_than_2_31_elements(case, pass_name, layout):
    xs, ws, pad, groups = CASES[case]
    if layout == "channels_last" and case.startswith("plane") and case != "plane.3x3":
        pytest.skip("two channels: channels_last adds little to plane.3x3's")
    if case == "images.winograd" and pass_name == "backward_weight" and layout == "nchw":
        pytest.skip("winograd's backward-weight is channels_last only")
    forced = T.force_cpu_algorithm("winograd", passes=[pass_name]) if case == "images.winograd" else nullcontext()
    with forced:
        check(case, pass_name, layout)


def check(case, pass_name, layout):
    xs, ws, pad, groups = CASES[case]
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    torch.manual_seed(0)
    a = torch.empty(xs, memory_format=fmt).uniform_(-1, 1)  # x, or dy (same shape: stride 1, same padding)
    assert a.numel() > 2**31
    w = torch.randn(ws).contiguous(memory_format=fmt)
    geometry = (ONE, [pad, pad], ONE, groups)
    plane = xs[0] == 1
    if pass_name == "forward":
        out = torch.ops.conv_ext.conv2d_forward(a, w, None, *geometry)
        ref = lambda part: F.conv2d(part, w, padding=pad, groups=groups)  # noqa: E731
    elif pass_name == "backward_input":
        out = torch.ops.conv_ext.conv2d_backward_input(a, w, list(xs), *geometry)
        ref = lambda part: torch.nn.grad.conv2d_input(part.shape, w, part, padding=pad, groups=groups)  # noqa: E731
    if pass_name != "backward_weight":
        for idx in windows(xs):
            want = inner(ref(a[idx]), plane, pad)
            assert rel(inner(out[idx], plane, pad), want) < 1e-5, (T.last_cpu_algorithm(pass_name), idx)
        return
    dy = torch.empty(xs, memory_format=fmt).uniform_(-1, 1)
    dw = torch.ops.conv_ext.conv2d_backward_weight(dy, a, list(ws), *geometry)
    want = torch.zeros(ws, dtype=torch.float64)
    n, _, h, _ = xs
    if not plane:
        for i in range(0, n, 32):
            want += torch.nn.grad.conv2d_weight(a[i:i + 32].double(), ws, dy[i:i + 32].double(), padding=pad, groups=groups)
    else:  # bands of 256 rows of dy with the input rows they see (zero rows past the edges)
        for i in range(0, h, 256):
            lo, hi = i - pad, min(i + 256, h) + pad
            band = F.pad(a[:, :, max(lo, 0):min(hi, h)].double(), (0, 0, max(0, -lo), max(0, hi - h)))
            want += torch.nn.grad.conv2d_weight(band, ws, dy[:, :, i:i + 256].double(), padding=(0, pad), groups=groups)
    # a sum of 2^27-2^31 float32 products: our chunked partial sums stay within ~1e-4
    assert rel(dw, want) < 2e-4, T.last_cpu_algorithm(pass_name)
