"""conv_ext: conv2d as hand-written CPU and CUDA kernels, bound into PyTorch autograd.

    conv_ext.conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1)
    conv_ext.Conv2d(...)          # an nn.Conv2d computed by conv_ext
    conv_ext.convert(model)       # swap every nn.Conv2d in a model
    conv_ext.revert(model)        # and back (for tools that look modules up by exact type)
    conv_ext.info()               # version, backends, SIMD level, threads
"""
import torch

from . import _ops  # noqa: F401  (loads the kernels, registers fake kernels and autograd)
from ._C import cpu_amx_bf16, cpu_amx_bf16_emulated, cpu_cached_bytes, cpu_capability, cpu_filter_cache_bytes, cuda_compiled
from ._C import empty_cache as _empty_cache
from .functional import conv2d
from .modules import Conv2d, convert, revert

__version__ = "0.1.0"
__all__ = ["conv2d", "Conv2d", "convert", "revert", "info", "empty_cache", "__version__"]


def info() -> dict:
    """What this build of conv_ext has and will use."""
    backends = ["cpu"] + (["cuda"] if cuda_compiled() else [])
    return {
        "version": __version__,
        "torch": torch.__version__,
        "backends": backends,
        "cuda_available": cuda_compiled() and torch.cuda.is_available(),
        "cpu_capability": cpu_capability(),
        "cpu_amx_bf16": cpu_amx_bf16(),  # bfloat16 on amx_bf16's tiles (else through float32)
        "cpu_amx_bf16_emulated": cpu_amx_bf16_emulated(),  # those tiles as AVX512-BF16 dot products
        "threads": torch.get_num_threads(),
        "cpu_cached_bytes": cpu_cached_bytes(),
        "cpu_filter_cache_bytes": cpu_filter_cache_bytes(),
    }


def empty_cache() -> None:
    """Drop the packed filters conv_ext keeps for filters that have not changed (at most
    CONV_EXT_CPU_FILTER_CACHE_MB MiB, default 512, 0 turns it off), and return
    the freed CPU outputs conv_ext keeps for reuse (outputs of 1 MiB or more; at most
    CONV_EXT_CPU_CACHE_MB MiB, default 1024, 0 turns the cache off) to the system."""
    _empty_cache()
