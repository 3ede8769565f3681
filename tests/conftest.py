"""Shared test helpers: devices, dtypes and tolerances."""
import pytest
import torch

import conv_ext  # noqa: F401

HAS_CUDA = torch.cuda.is_available() and conv_ext.info()["cuda_available"]

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")]),
]


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


def rel_error(actual, expected):
    """max |actual - expected| / max |expected|, in float64 (complex128 for complex tensors)."""
    wide = torch.complex128 if actual.is_complex() or expected.is_complex() else torch.float64
    actual, expected = actual.to(wide), expected.to(wide)
    scale = expected.abs().max().item() if expected.numel() else 1.0
    return ((actual - expected).abs().max().item() / max(scale, 1e-300)) if expected.numel() else 0.0
