"""CUDA-specific tests: every fast kernel against the GPU reference and torch, gradients
CPU-vs-CUDA, determinism, CUDA graphs, torch.compile, streams, TF32.

Every test here needs a GPU and skips without one (tests/test_cuda_sources.py holds the checks
of the CUDA sources that run anywhere). The shared correctness suite
(parametrised over the ``device`` fixture) covers the public API on CUDA; these tests force each
CUDA algorithm in turn (conv_ext.cuda_testing.force_cuda_algorithm).
"""
import pathlib
import re
import zlib

import pytest
import torch
import torch.nn.functional as F

import conv_ext
from conv_ext import cuda_testing as ct

from conftest import HAS_CUDA, rel_error

ROOT = pathlib.Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")]
ops = torch.ops.conv_ext


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
TOL = {torch.float16: 5e-3, torch.bfloat16: 1e-2, torch.float32: 1e-5, torch.float64: 1e-12}
TF32_TOL = 5e-3


def tol(dtype, algo, tf32):
    if dtype == torch.float32 and algo == "igemm":
        return TF32_TOL if tf32 else 1e-4  # 3xTF32: float32 accuracy, a few ulps more than FFMA
    return TOL[dtype]


class tf32_conv:
    """Context manager: TF32 for convolutions on or off (what torch.backends.cudnn.allow_tf32 sets)."""

    def __init__(self, on):
        self.on = on

    def __enter__(self):
        self.before = torch.backends.cudnn.conv.fp32_precision
        torch.backends.cudnn.conv.fp32_precision = "tf32" if self.on else "ieee"

    def __exit__(self, *exc):
        torch.backends.cudnn.conv.fp32_precision = self.before


def poison_cache(shape, dtype):
    """Leave NaNs in the caching allocator's free blocks, so an output element a kernel forgets
    to write shows up as NaN instead of stale zeros."""
    t = torch.full(shape, float("nan"), dtype=dtype, device="cuda")
    del t


def rand(shape, dtype, device="cuda", channels_last=False):
    t = torch.randn(shape, dtype=torch.float64).to(dtype=dtype, device=device)
    return t.contiguous(memory_format=torch.channels_last) if channels_last else t


# (N, C, H, W, K, R, S, stride, padding, dilation, groups): edge cases for the tiled kernels
CASES = {
    "3x3": (2, 16, 9, 11, 24, 3, 3, 1, 1, 1, 1),
    "3x3_s2": (2, 32, 13, 10, 32, 3, 3, 2, 1, 1, 1),
    "1x1": (3, 40, 7, 5, 48, 1, 1, 1, 0, 1, 1),
    "1x1_s2": (2, 64, 9, 9, 16, 1, 1, 2, 0, 1, 1),
    "dilated": (1, 24, 12, 12, 16, 3, 3, 1, 2, 2, 1),
    "groups": (2, 32, 8, 8, 32, 3, 3, 1, 1, 1, 2),
    "many_k": (1, 8, 15, 17, 136, 3, 3, 1, 1, 1, 1),  # two N tiles, a partial one
    "many_c": (1, 72, 6, 6, 8, 3, 3, 1, 1, 1, 1),  # channel blocks 32 + 32 + 8
    "big_m": (4, 16, 23, 21, 32, 3, 3, 1, 1, 1, 1),  # M = 1932 pixels: 16 M tiles, a partial one
    "stem": (1, 8, 23, 23, 16, 7, 7, 2, 3, 1, 1),
    "stride3_k2": (1, 8, 10, 11, 8, 2, 2, 3, 0, 1, 1),  # dx phases with no tap: zeros
    "rect": (2, 16, 10, 7, 16, 3, 1, (2, 1), (1, 0), 1, 1),
    "odd_pad": (1, 16, 5, 5, 8, 5, 5, 1, (3, 0), (1, 1), 1),
    "stem_c3": (2, 3, 23, 23, 16, 7, 7, 2, 3, 1, 1),  # forward/backward-weight pad C 3 -> 8 (fp32: 4)
    "c5_pad": (1, 5, 9, 8, 8, 3, 3, 1, 1, 1, 1),
}


def unpack(case):
    n, c, h, w, k, r, s, stride, padding, dilation, groups = case
    return (n, c, h, w), (k, c // groups, r, s), dict(stride=stride, padding=padding, dilation=dilation, groups=groups)


def pairs(geo):
    def two(v):
        return (v, v) if isinstance(v, int) else tuple(v)

    return two(geo["stride"]), two(geo["padding"]), two(geo["dilation"]), geo["groups"]


def run_pass(pass_name, x, w, dy, bias, geo):
    stride, padding, dilation, groups = pairs(geo)
    if pass_name == "forward":
        return ops.conv2d_forward(x, w, bias, stride, padding, dilation, groups)
    if pass_name == "backward_input":
        return ops.conv2d_backward_input(dy, w, list(x.shape), stride, padding, dilation, groups)
    return ops.conv2d_backward_weight(dy, x, list(w.shape), stride, padding, dilation, groups)


def torch_pass(pass_name, x, w, dy, bias, geo):
    """The same pass by torch on the CPU in float64 (the oracle of both CUDA kernels)."""
    x, w = x.detach().cpu().double().requires_grad_(), w.detach().cpu().double().requires_grad_()
    b = None if bias is None else bias.detach().cpu().double()
    y = F.conv2d(x, w, b, **geo)
    if pass_name == "forward":
        return y.detach()
    y.backward(dy.detach().cpu().double())
    return (x.grad if pass_name == "backward_input" else w.grad).detach()


# ---------------------------------------------------------------------------------------------
# each fast kernel vs the GPU reference vs torch (float64, CPU)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("pass_name", ct.PASSES)
@pytest.mark.parametrize("dtype,tf32", [(torch.float16, False), (torch.bfloat16, False),
                                        (torch.float32, True), (torch.float32, False)],
                         ids=["fp16", "bf16", "fp32-tf32", "fp32-3xtf32"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("algo", ["igemm"])
def test_fast_kernel_matches_reference(algo, channels_last, dtype, tf32, pass_name, case):
    torch.manual_seed(zlib.crc32(f"{case}/{pass_name}".encode()))
    xs, ws, geo = unpack(CASES[case])
    x, w = rand(xs, dtype, channels_last=channels_last), rand(ws, dtype)
    bias = rand((ws[0],), dtype)
    y_shape = F.conv2d(torch.empty(xs, device="meta"), torch.empty(ws, device="meta"), **geo).shape
    dy = rand(tuple(y_shape), dtype, channels_last=channels_last)
    out_shape = {"forward": y_shape, "backward_input": xs, "backward_weight": ws}[pass_name]
    with tf32_conv(tf32):
        poison_cache(out_shape, dtype)
        with ct.force_cuda_algorithm("reference", passes=[pass_name]):
            ref = run_pass(pass_name, x, w, dy, bias, geo)
        poison_cache(out_shape, dtype)
        with ct.force_cuda_algorithm(algo, passes=[pass_name]):
            got = run_pass(pass_name, x, w, dy, bias, geo)
            assert ct.last_cuda_algorithm(pass_name) == algo
    want = torch_pass(pass_name, x, w, dy, bias, geo)
    assert got.shape == want.shape and got.dtype == dtype
    assert not got.isnan().any(), "unwritten (poisoned) or NaN output elements"
    assert rel_error(ref, want) < TOL[dtype] * 4, "GPU reference disagrees with torch"
    assert rel_error(got, want) < tol(dtype, algo, tf32) * 4, f"{algo} disagrees with torch"
    # the layout rule of the CPU backend: channels_last in, channels_last out
    if pass_name != "backward_weight":
        assert got.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


DEPTHWISE = {
    "3x3": (2, 32, 14, 13, 32, 3, 3, 1, 1, 1, 32),
    "3x3_s2": (2, 24, 15, 15, 24, 3, 3, 2, 1, 1, 24),
    "5x5": (1, 16, 11, 9, 16, 5, 5, 1, 2, 1, 16),
    "7x7_dil": (1, 8, 20, 20, 8, 7, 7, 1, 6, 2, 8),
    "4x2_generic": (2, 8, 9, 9, 8, 4, 2, 1, (1, 0), 1, 8),
    "multiplier2": (1, 8, 9, 9, 16, 3, 3, 1, 1, 1, 8),
    "one_channel": (3, 1, 8, 8, 1, 3, 3, 1, 1, 1, 1),
}


@pytest.mark.parametrize("case", list(DEPTHWISE))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64],
                         ids=["fp16", "bf16", "fp32", "fp64"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_depthwise_matches_reference(channels_last, dtype, case):
    torch.manual_seed(0)
    xs, ws, geo = unpack(DEPTHWISE[case])
    x, w, bias = rand(xs, dtype, channels_last=channels_last), rand(ws, dtype), rand((ws[0],), dtype)
    with ct.force_cuda_algorithm("reference", passes=["forward"]):
        ref = run_pass("forward", x, w, None, bias, geo)
    with ct.force_cuda_algorithm("depthwise", passes=["forward"]):
        got = run_pass("forward", x, w, None, bias, geo)
    want = torch_pass("forward", x, w, None, bias, geo)
    assert rel_error(ref, want) < TOL[dtype] * 4
    assert rel_error(got, want) < TOL[dtype] * 4
    assert got.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    # backward-weight (3x3, 5x5, 7x7 only): deterministic, against the reference and torch
    if ws[2] == ws[3] and ws[2] in (3, 5, 7):
        dy = rand(tuple(want.shape), dtype, channels_last=channels_last)
        with ct.force_cuda_algorithm("reference", passes=["backward_weight"]):
            ref_dw = run_pass("backward_weight", x, w, dy, None, geo)
        with ct.force_cuda_algorithm("depthwise", passes=["backward_weight"]):
            got_dw = run_pass("backward_weight", x, w, dy, None, geo)
            assert torch.equal(got_dw, run_pass("backward_weight", x, w, dy, None, geo))
        want_dw = torch_pass("backward_weight", x, w, dy, None, geo)
        assert rel_error(ref_dw, want_dw) < TOL[dtype] * 4
        assert rel_error(got_dw, want_dw) < TOL[dtype] * 4


def test_auto_choice_and_forcing_errors():
    x, w = rand((1, 16, 8, 8), torch.float16), rand((16, 16, 3, 3), torch.float16)
    ops.conv2d_forward(x, w, None, [1, 1], [1, 1], [1, 1], 1)
    assert ct.last_cuda_algorithm("forward") == "igemm"
    xd, wd = rand((1, 16, 8, 8), torch.float16), rand((16, 1, 3, 3), torch.float16)
    ops.conv2d_forward(xd, wd, None, [1, 1], [1, 1], [1, 1], 16)
    assert ct.last_cuda_algorithm("forward") == "depthwise"
    ops.conv2d_forward(x.double(), w.double(), None, [1, 1], [1, 1], [1, 1], 1)
    assert ct.last_cuda_algorithm("forward") == "reference"  # no tensor-core kernel for float64
    x3, w3 = rand((1, 6, 8, 8), torch.float16), rand((8, 3, 3, 3), torch.float16)
    with ct.force_cuda_algorithm("igemm", passes=["forward"]):
        with pytest.raises(RuntimeError, match="does not support"):
            # Cg=3 in 2 groups: no 16-byte chunks, and channel padding is for one group only
            ops.conv2d_forward(x3, w3, None, [1, 1], [1, 1], [1, 1], 2)
    with pytest.raises(RuntimeError, match="unknown CUDA"):
        with ct.force_cuda_algorithm("nope"):
            pass


# ---------------------------------------------------------------------------------------------
# the public API on CUDA vs on the CPU: every dtype, layouts, odd cases, gradients
# ---------------------------------------------------------------------------------------------
API_CASES = [
    # (input shape, weight shape, kwargs)
    ((2, 8, 9, 9), (16, 8, 3, 3), dict(stride=1, padding=1)),
    ((2, 6, 10, 7), (4, 3, 3, 2), dict(stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2)),
    ((3, 8, 9, 9), (8, 1, 3, 3), dict(stride=2, padding=1, groups=8)),
    ((0, 8, 5, 5), (8, 8, 3, 3), dict(padding=1)),  # batch 0
    ((8, 5, 5), (4, 8, 3, 3), dict(padding="same")),  # unbatched
    ((1, 3, 17, 17), (16, 3, 7, 7), dict(stride=2, padding=3)),  # stem, C=3: padded channels
    ((2, 16, 6, 6), (32, 16, 1, 1), dict()),
]


@pytest.mark.parametrize("i", range(len(API_CASES)))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16],
                         ids=["fp64", "fp32", "fp16", "bf16"])
@pytest.mark.parametrize("layout", ["nchw", "nhwc", "noncontig"])
def test_gradients_agree_with_cpu(layout, dtype, i):
    xs, ws, kw = API_CASES[i]
    torch.manual_seed(i)
    x = torch.randn(xs, dtype=torch.float64)
    w = torch.randn(ws, dtype=torch.float64)
    b = torch.randn(ws[0], dtype=torch.float64)

    def prep(t, device):
        t = t.to(device=device, dtype=dtype)
        if t.dim() == 4 and layout == "nhwc":
            t = t.contiguous(memory_format=torch.channels_last)
        if t.dim() >= 3 and layout == "noncontig":  # a strided view: every other column of a wider tensor
            wide = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=dtype, device=device)
            wide[..., ::2] = t
            t = wide[..., ::2]
        return t.detach().requires_grad_()

    results = {}
    for device in ("cpu", "cuda"):
        xd, wd, bd = prep(x, device), prep(w, device), prep(b, device)
        y = conv_ext.conv2d(xd, wd, bd, **kw)
        g = torch.randn(y.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(7)).to(device, dtype)
        y.backward(g)
        results[device] = [t.detach().cpu() for t in (y, xd.grad, wd.grad, bd.grad)]
    tolerance = {torch.float64: 1e-10, torch.float32: 5e-3, torch.float16: 1e-2, torch.bfloat16: 5e-2}[dtype]
    for name, a, c in zip(("y", "dx", "dw", "db"), results["cuda"], results["cpu"]):
        assert a.shape == c.shape, name
        assert rel_error(a, c) < tolerance, f"{name}: CUDA vs CPU"


# ---------------------------------------------------------------------------------------------
# determinism, graphs, compile, streams, TF32, devices, 64-bit indexing
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
def test_depthwise_backward_weight_is_deterministic(dtype):
    x = rand((32, 64, 28, 28), dtype, channels_last=True)  # 25k pixels: 13 slices
    dy = rand((32, 64, 28, 28), dtype, channels_last=True)
    with ct.force_cuda_algorithm("depthwise", passes=["backward_weight"]):
        first = ops.conv2d_backward_weight(dy, x, [64, 1, 3, 3], [1, 1], [1, 1], [1, 1], 64)
        for _ in range(3):
            assert torch.equal(first, ops.conv2d_backward_weight(dy, x, [64, 1, 3, 3], [1, 1], [1, 1], [1, 1], 64))


@pytest.mark.parametrize("algo", ["igemm", "reference"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
def test_backward_weight_is_deterministic(dtype, algo):
    # small K and C, long reduction: the split-K path with many splits
    x = rand((16, 32, 28, 28), dtype, channels_last=True)
    dy = rand((16, 32, 28, 28), dtype, channels_last=True)
    with ct.force_cuda_algorithm(algo, passes=["backward_weight"]):
        first = ops.conv2d_backward_weight(dy, x, [32, 32, 3, 3], [1, 1], [1, 1], [1, 1], 1)
        for _ in range(3):
            again = ops.conv2d_backward_weight(dy, x, [32, 32, 3, 3], [1, 1], [1, 1], [1, 1], 1)
            assert torch.equal(first, again), "backward-weight changed between runs"
        db1, db2 = ops.conv2d_backward_bias(dy), ops.conv2d_backward_bias(dy)
        assert torch.equal(db1, db2)


def _model(dtype):
    torch.manual_seed(0)
    return torch.nn.Sequential(
        conv_ext.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(),
        conv_ext.Conv2d(32, 32, 3, stride=2, padding=1, groups=32), torch.nn.ReLU(),
        conv_ext.Conv2d(32, 16, 1),
    ).to("cuda", dtype).to(memory_format=torch.channels_last)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
def test_cuda_graph_capture_and_replay(dtype):
    model = _model(dtype)
    static_x = rand((4, 16, 16, 16), dtype, channels_last=True).requires_grad_()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up outside the capture (workspace allocations, attributes)
        for _ in range(2):
            model(static_x).float().square().mean().backward()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    model.zero_grad(set_to_none=True)
    static_x.grad = None
    with torch.cuda.graph(graph):
        static_y = model(static_x)
        static_y.float().square().mean().backward()
    for _ in range(2):
        new_x = rand((4, 16, 16, 16), dtype, channels_last=True)
        static_x.data.copy_(new_x)
        graph.replay()
        torch.cuda.synchronize()
        eager_x = new_x.clone().requires_grad_()
        eager_y = model(eager_x)
        assert rel_error(static_y, eager_y) < 1e-6
        eager_y.float().square().mean().backward()
        assert rel_error(static_x.grad, eager_x.grad) < 1e-6


def test_torch_compile_reduce_overhead():
    model = _model(torch.float16)
    compiled = torch.compile(model, mode="reduce-overhead", fullgraph=True)
    for _ in range(3):  # the first calls record, later ones replay the CUDA graph
        x = rand((2, 16, 12, 12), torch.float16, channels_last=True)
        assert rel_error(compiled(x), model(x)) < 1e-6


def test_non_default_stream():
    x, w = rand((8, 32, 20, 20), torch.float16, channels_last=True), rand((64, 32, 3, 3), torch.float16)
    want = ops.conv2d_forward(x, w, None, [1, 1], [1, 1], [1, 1], 1)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        torch.cuda._sleep(1_000_000)  # keep the stream busy: a launch on the wrong stream would race
        got = ops.conv2d_forward(x, w, None, [1, 1], [1, 1], [1, 1], 1)
    torch.cuda.current_stream().wait_stream(s)
    assert torch.equal(got, want)


@pytest.mark.parametrize("tf32", [True, False])
def test_tf32_switch(tf32):
    torch.manual_seed(0)
    x, w = rand((4, 64, 14, 14), torch.float32, channels_last=True), rand((64, 64, 3, 3), torch.float32)
    want = F.conv2d(x.cpu().double(), w.cpu().double(), padding=1)
    with tf32_conv(tf32):
        got = ops.conv2d_forward(x, w, None, [1, 1], [1, 1], [1, 1], 1)
    err = rel_error(got, want)
    if tf32:
        assert err < 5e-3
    else:
        assert err < 1e-5, f"TF32 disallowed, yet error {err:.2e} is not float32-level"


@pytest.mark.skipif(not HAS_CUDA or torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_second_device():
    x, w = rand((2, 16, 8, 8), torch.float16, device="cuda:1"), rand((16, 16, 3, 3), torch.float16, device="cuda:1")
    with torch.cuda.device(0):
        y = ops.conv2d_forward(x, w, None, [1, 1], [1, 1], [1, 1], 1)
    assert y.device == torch.device("cuda:1")
    assert rel_error(y, F.conv2d(x.cpu().double(), w.cpu().double(), padding=1)) < 2e-2


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["depthwise", "reference"])
def test_64bit_indexing(algo):
    # y has 2^31 + a few elements: linear indices past int32 (1x1, one channel: depthwise applies)
    free, _ = torch.cuda.mem_get_info()
    if free < 20 * 2**30:
        pytest.skip("needs 20 GiB of free GPU memory")
    n = 46341  # 46341^2 > 2^31
    x = torch.randn(1, 1, n, n, device="cuda", dtype=torch.float16)
    w = torch.full((1, 1, 1, 1), 0.5, device="cuda", dtype=torch.float16)
    with ct.force_cuda_algorithm(algo, passes=["forward"]):
        y = ops.conv2d_forward(x, w, None, [1, 1], [0, 0], [1, 1], 1)
    assert torch.equal(y, x * 0.5)
