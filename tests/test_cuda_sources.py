"""Checks of the CUDA sources that run anywhere (no GPU needed): the .cu files must compile
with plain nvcc (CUDA and standard headers only, no torch), and the compute path must not call
a vendor or torch convolution/GEMM (DESIGN.md, rules of the house)."""
import os
import pathlib
import re
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

ALLOWED_SYSTEM = {
    "cuda_runtime.h", "cuda_fp16.h", "cuda_bf16.h", "cuda.h", "mma.h", "cuda_pipeline.h",
    "cstdint", "cstddef", "algorithm", "type_traits", "climits", "cfloat", "cmath", "utility",
}


def test_cu_files_include_only_allowed_headers():
    cuda_dir = ROOT / "csrc" / "cuda"
    files = sorted(cuda_dir.glob("*.cu")) + sorted(cuda_dir.glob("*.cuh"))
    assert files, "no CUDA sources"
    local = {p.name for p in cuda_dir.glob("*.cuh")} | {"../conv_params.h"}
    for f in files:
        for line in f.read_text().splitlines():
            m = re.match(r'\s*#\s*include\s*([<"])([^>"]+)[>"]', line)
            if not m:
                continue
            kind, name = m.groups()
            if kind == '"':
                assert name in local, f"{f.name} includes {name!r}: only our .cuh files and conv_params.h"
            else:
                assert name in ALLOWED_SYSTEM, f"{f.name} includes <{name}>: only CUDA and standard headers"


def test_cuda_code_calls_no_vendor_convolution():
    pattern = re.compile(
        r'#\s*include\s*[<"](cudnn|cublas)'          # vendor library headers
        r"|\b(cudnn|cublas|cublasLt)[A-Z]\w*\s*\("  # vendor library calls
        r"|\b(at|torch)::(conv\w*|convolution\w*|mm|matmul|bmm|addmm|linear)\s*\("  # torch's own
    )
    for f in sorted((ROOT / "csrc" / "cuda").glob("*")):
        code = "\n".join(l for l in f.read_text().splitlines() if not l.lstrip().startswith("//"))
        assert not pattern.search(code), f"{f.name} calls a vendor or torch convolution/GEMM"


@pytest.mark.slow
def test_host_emulation_of_the_kernels(tmp_path):
    """tests/cpp/igemm_emulate.cpp: the real kernels and launchers run on the host (see that file)
    on two small cases: stride phases without taps, and channel padding. `make cuda-emulate` runs
    every case."""
    cuda_home = pathlib.Path(os.environ.get("CUDA_HOME", "/usr/local/cuda"))
    if not (cuda_home / "include" / "cuda_runtime.h").exists() or shutil.which("g++") is None:
        pytest.skip("needs g++ and CUDA's headers")
    exe = tmp_path / "igemm_emulate"
    subprocess.run(
        ["g++", "-std=c++20", "-O1", "-pthread", "-DCONV_EXT_EMULATE", "-I", str(ROOT / "csrc"),
         "-I", str(cuda_home / "include"), str(ROOT / "tests" / "cpp" / "igemm_emulate.cpp"),
         f"-L{cuda_home / 'lib64'}", "-lcudart", f"-Wl,-rpath,{cuda_home / 'lib64'}", "-o", str(exe)],
        check=True)
    for case in ("stride3_k2", "c5_pad"):
        out = subprocess.run([str(exe), case], capture_output=True, text=True)
        assert out.returncode == 0 and "ALL OK" in out.stdout, out.stdout + out.stderr
