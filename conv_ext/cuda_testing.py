"""Helpers for tests and benchmarks: run a pass with a chosen CUDA algorithm.

The CUDA twin of ``conv_ext.testing``. The algorithms of each pass, in the order automatic
choice tries them (the reference supports every problem)::

    forward          igemm (tensor cores, NHWC), depthwise, reference
    backward_input   igemm (tensor cores, NHWC, stride phases), reference
    backward_weight  igemm (tensor cores, NHWC, deterministic split-K), depthwise, reference

Without CUDA compiled in, ``cuda_algorithms`` returns [] and forcing raises RuntimeError.
"""

from . import _C
from .testing import PASSES, forcing




def cuda_compiled() -> bool:
    return bool(_C.cuda_compiled())


def cuda_algorithms(pass_name: str):
    """Names of the CUDA algorithms of a pass, in the order automatic choice tries them."""
    return list(_C.cuda_algorithms(pass_name)) if cuda_compiled() else []


def last_cuda_algorithm(pass_name: str) -> str:
    """The CUDA algorithm this thread ran last for the pass ('' if none)."""
    return _C.last_cuda_algorithm(pass_name) if cuda_compiled() else ""


def force_cuda_algorithm(name, passes=PASSES):
    """Within the block, every CUDA call of ``passes`` runs algorithm ``name`` (an error if it
    does not support the problem). ``name`` may be a dict {pass: name}."""
    if not cuda_compiled():
        raise RuntimeError("conv_ext was built without CUDA")
    return forcing(_C.forced_cuda_algorithm, _C.force_cuda_algorithm, name, passes)
