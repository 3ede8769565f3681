"""Build conv_ext's compiled kernels with torch.utils.cpp_extension.

CPU sources are always built. CUDA sources are built when torch has CUDA and nvcc is found,
or when FORCE_CUDA=1; CONV_EXT_CPU_ONLY=1 turns CUDA off. The CUDA architectures come from
TORCH_CUDA_ARCH_LIST (default "8.0;9.0": A100 and H100/H200).
"""
import glob
import os

from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))


def build_cuda() -> bool:
    if os.environ.get("CONV_EXT_CPU_ONLY", "0") == "1":
        return False
    if os.environ.get("FORCE_CUDA", "0") == "1":
        return True
    import torch

    return torch.version.cuda is not None and CUDA_HOME is not None


def sources(*patterns):
    found = []
    for pattern in patterns:
        found += sorted(glob.glob(os.path.join("csrc", pattern)))
    return found


def extension():
    with_cuda = build_cuda()
    cxx = ["-O3", "-fopenmp", "-Wall", "-Wextra", "-Wno-unused-parameter"]
    common = dict(
        name="conv_ext._C",
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_link_args=["-fopenmp"],
    )
    cpu_sources = sources("*.cpp", "cpu/*.cpp")
    if not with_cuda:
        return CppExtension(sources=cpu_sources, extra_compile_args={"cxx": cxx}, **common)
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    nvcc = ["-O3", "-lineinfo", "--expt-relaxed-constexpr", "-DCONV_EXT_WITH_CUDA"]
    return CUDAExtension(
        sources=cpu_sources + sources("cuda/*.cpp", "cuda/*.cu"),
        extra_compile_args={"cxx": cxx + ["-DCONV_EXT_WITH_CUDA"], "nvcc": nvcc},
        **common,
    )


setup(
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
