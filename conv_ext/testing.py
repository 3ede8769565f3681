"""Helpers for tests and benchmarks: run a pass with a chosen CPU algorithm."""
import contextlib

import torch

from . import _C

PASSES = ("forward", "backward_input", "backward_weight")


def cpu_algorithms(pass_name: str):
    """Names of the CPU algorithms of a pass, highest priority first ('reference' is last)."""
    return list(_C.cpu_algorithms(pass_name))


def last_cpu_algorithm(pass_name: str) -> str:
    """The CPU algorithm this thread ran last for the pass."""
    return _C.last_cpu_algorithm(pass_name)


@contextlib.contextmanager
def forcing(get_forced, set_forced, name, passes=PASSES):
    """Within the block, set_forced(pass, name) for each pass; the previous choices after it.
    ``name`` may be a dict {pass: name}. Shared by the CPU and CUDA switches."""
    names = name if isinstance(name, dict) else {p: name for p in passes}
    before = {p: get_forced(p) for p in names}
    try:
        for p, n in names.items():
            set_forced(p, n)
        yield
    finally:
        for p, n in before.items():
            set_forced(p, n)


def force_cpu_algorithm(name, passes=PASSES):
    """Within the block, every CPU call of ``passes`` runs algorithm ``name`` (an error if it
    does not support the problem). ``name`` may be a dict {pass: name}."""
    return forcing(_C.forced_cpu_algorithm, _C.force_cpu_algorithm, name, passes)


@contextlib.contextmanager
def complex_strategy(name):
    """Within the block, complex convolutions run as ``name``: 'pairs' (one real convolution of
    (re, im) pairs), 'gauss' (three real convolutions of planes) or 'auto' (chosen by the shape)."""
    before = _C.complex_strategy()
    _C.set_complex_strategy(name)
    try:
        yield
    finally:
        _C.set_complex_strategy(before)


def complex_form(input, weight, stride=1, groups=1, **ignored):
    """'gauss' or 'pairs': the form a complex convolution of these tensors runs in now."""
    from ._ops import memory_format

    stride = [stride, stride] if isinstance(stride, int) else list(stride)
    channels_last = memory_format(input, weight) == torch.channels_last
    plane = input.shape[-2] * input.shape[-1]
    cpu_complex64 = input.device.type == "cpu" and input.dtype == torch.complex64
    return "gauss" if _C.complex_uses_gauss(list(weight.shape), groups, stride, channels_last, plane, cpu_complex64) else "pairs"
