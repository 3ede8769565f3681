"""The packed-filter cache (csrc/cpu/filter_cache.h): implicit_gemm, winograd and gemm_f64 keep
the packed form of a filter across calls while the filter is unchanged.

The oracle for every cached result is the same call on a fresh copy of the filter (a new
tensor: never cached), which must give the same bits; and torch, within float32 tolerance.
What must invalidate a packed filter: in-place changes (no_grad ops, optimizer steps,
load_state_dict), a new storage (``w.data = ...``, ``set_``), a new tensor at a freed
tensor's address, a different convolution reading the same filter, and writes the version
counter does not see (through ``w.data`` or NumPy: the fingerprint of the bytes). Caching starts at the
second call with the same filter version, so a training step keeps nothing.
"""
import os
import subprocess
import sys
import threading

import pytest
import torch
import torch.nn.functional as F

import conv_ext
from conv_ext import testing

ops = torch.ops.conv_ext

# name, (N, C, H, W), K, R, stride, padding, forward algorithm, backward-input algorithm, kept
# (winograd's U over 1 MiB is computed again on every call: reading it back cost more)
CASES = [
    ("implicit_gemm 3x3/2", (2, 20, 9, 11), 40, 3, 2, 1, "implicit_gemm", "implicit_gemm", True),
    ("implicit_gemm 1x1 @7", (2, 96, 7, 7), 80, 1, 1, 0, "implicit_gemm", "implicit_gemm", True),
    ("implicit_gemm 3x3 stride 1", (1, 24, 8, 9), 36, 3, 1, 1, "implicit_gemm", "implicit_gemm", True),
    ("winograd small U", (2, 64, 10, 10), 64, 3, 1, 1, "winograd", "winograd", True),
    ("winograd large U", (1, 160, 6, 6), 160, 3, 1, 1, "winograd", "winograd", False),
]


def make(shape, k, r, layout, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g)
    w = torch.randn(k, shape[1], r, r, generator=g) / (shape[1] * r * r) ** 0.5
    if layout == "nhwc":
        x = x.contiguous(memory_format=torch.channels_last)
    return x, w


def fresh(w):
    """A copy of w: a new tensor the cache has never seen."""
    return w.clone(memory_format=torch.preserve_format)


@pytest.fixture(autouse=True)
def empty():
    conv_ext.empty_cache()
    yield
    conv_ext.empty_cache()


def cached_bytes():
    return conv_ext.info()["cpu_filter_cache_bytes"]


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_forward_reuses_packed_filter(case, layout):
    _, shape, k, r, stride, padding, algo, _, kept = case
    x, w = make(shape, k, r, layout)
    with testing.force_cpu_algorithm({"forward": algo}):
        first = conv_ext.conv2d(x, w, None, stride, padding)
        assert cached_bytes() == 0  # one call packs into scratch
        second = conv_ext.conv2d(x, w, None, stride, padding)
        assert (cached_bytes() > 0) == kept  # the second keeps it
        third = conv_ext.conv2d(x, w, None, stride, padding)  # read from the cache
        assert testing.last_cpu_algorithm("forward") == algo
        assert torch.equal(first, second) and torch.equal(first, third)
        assert torch.equal(third, conv_ext.conv2d(x, fresh(w), None, stride, padding))
    torch.testing.assert_close(third, F.conv2d(x, w, None, stride, padding), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_backward_input_reuses_packed_filter(case, layout):
    """A frozen layer in fine-tuning: backward-input with the same filter every step."""
    _, shape, k, r, stride, padding, _, algo, kept = case
    x, w = make(shape, k, r, layout)
    dy = torch.randn_like(F.conv2d(x, w, None, stride, padding))
    geo = ([stride] * 2, [padding] * 2, [1, 1], 1)
    with testing.force_cpu_algorithm({"backward_input": algo}):
        outs = [ops.conv2d_backward_input(dy, w, list(x.shape), *geo) for _ in range(3)]
        assert testing.last_cpu_algorithm("backward_input") == algo
        assert (cached_bytes() > 0) == kept
        expected = ops.conv2d_backward_input(dy, fresh(w), list(x.shape), *geo)
    for out in outs:
        assert torch.equal(out, expected)
    ref = torch.ops.aten.convolution_backward(dy, x, w, None, *geo[:3], False, [0, 0], 1, [True, False, False])[0]
    torch.testing.assert_close(outs[-1], ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("filter_layout", ["kcrs", "krsc"])
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("shape,k,r,stride,padding", [
    # more than 64 output channels a group (backward-input's: x's channels), so that NCHW runs the
    # GEMM too (row_conv, for fewer, packs its small filter on every call)
    ((2, 72, 9, 11), 80, 3, 2, 1),   # backward-input in 4 stride phases, each its own packed taps
    ((1, 96, 5, 5), 160, 3, 1, 1),   # few rows: tasks over blocks of filter panels too
], ids=["3x3/2", "3x3 @5"])
def test_float64_reuses_packed_filter(shape, k, r, stride, padding, layout, filter_layout):
    """gemm_f64 keeps its packed filters (forward; backward-input's, per stride phase) while the
    filter is unchanged: the same bits on every call and for a fresh copy, and torch's float64 result."""
    x, w = (t.double() for t in make(shape, k, r, layout))
    if filter_layout == "krsc":
        w = w.contiguous(memory_format=torch.channels_last)
    dy = torch.randn_like(F.conv2d(x, w, None, stride, padding))
    geo = ([stride] * 2, [padding] * 2, [1, 1], 1)
    with testing.force_cpu_algorithm({"forward": "gemm_f64", "backward_input": "gemm_f64"}):
        ys = [conv_ext.conv2d(x, w, None, stride, padding) for _ in range(3)]
        assert testing.last_cpu_algorithm("forward") == "gemm_f64"
        kept = cached_bytes()
        assert kept > 0
        dxs = [ops.conv2d_backward_input(dy, w, list(x.shape), *geo) for _ in range(3)]
        assert cached_bytes() > kept
        ys.append(conv_ext.conv2d(x, fresh(w), None, stride, padding))
        dxs.append(ops.conv2d_backward_input(dy, fresh(w), list(x.shape), *geo))
    for y in ys[1:]:
        assert torch.equal(y, ys[0])
    for dx in dxs[1:]:
        assert torch.equal(dx, dxs[0])
    ref = torch.ops.aten.convolution_backward(dy, x, w, None, *geo[:3], False, [0, 0], 1, [True, False, False])[0]
    torch.testing.assert_close(ys[0], F.conv2d(x, w, None, stride, padding), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(dxs[0], ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize(
    "shape,k,r,stride", [((1, 256, 4, 4), 256, 3, 1), ((2, 32, 9, 11), 48, 5, 2), ((1, 48, 6, 6), 32, 1, 1)],
    ids=["3x3 @4", "5x5/2", "1x1"])
def test_bfloat16_pairs_packed_as_read_or_cached(shape, k, r, stride, layout):
    """bf16_pairs' KCRS filters: their words are made as the engine packs its panels -- by the
    task that reads a block (the first call: one task per block at 3x3 @4) or all at once into the
    cache (later calls): the same bits either way and for a fresh copy, forward and backward-input."""
    x, w = make(shape, k, r, layout)
    x, w = x.bfloat16(), w.bfloat16()
    pad = r // 2
    dy = torch.randn_like(F.conv2d(x.float(), w.float(), None, stride, pad)).bfloat16()
    geo = ([stride] * 2, [pad] * 2, [1, 1], 1)
    try:
        with testing.force_cpu_algorithm({"forward": "bf16_pairs", "backward_input": "bf16_pairs"}):
            ys = [conv_ext.conv2d(x, w, None, stride, pad) for _ in range(3)]
            ys.append(conv_ext.conv2d(x, fresh(w), None, stride, pad))
            dxs = [ops.conv2d_backward_input(dy, w, list(x.shape), *geo) for _ in range(3)]
            dxs.append(ops.conv2d_backward_input(dy, fresh(w), list(x.shape), *geo))
    except RuntimeError as e:
        if "does not support" in str(e):
            pytest.skip("bf16_pairs does not run on this CPU")
        raise
    for y in ys[1:]:
        assert torch.equal(y, ys[0])
    for dx in dxs[1:]:
        assert torch.equal(dx, dxs[0])
    torch.testing.assert_close(ys[0].float(), F.conv2d(x.float(), w.float(), None, stride, pad), rtol=2e-2, atol=2e-2)
    ref = torch.ops.aten.convolution_backward(dy.float(), x.float(), w.float(), None, *geo[:3], False, [0, 0], 1,
                                              [True, False, False])[0]
    torch.testing.assert_close(dxs[0].float(), ref, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_channels_last_filter(case):
    _, shape, k, r, stride, padding, algo, _, kept = case
    x, w = make(shape, k, r, "nhwc")
    w = w.contiguous(memory_format=torch.channels_last)
    with testing.force_cpu_algorithm({"forward": algo}):
        outs = [conv_ext.conv2d(x, w, None, stride, padding) for _ in range(3)]
        assert (cached_bytes() > 0) == kept
        assert all(torch.equal(o, conv_ext.conv2d(x, fresh(w), None, stride, padding)) for o in outs)


def in_place_changes():
    def no_grad_mul(w):
        with torch.no_grad():
            w.mul_(-1.5)

    def no_grad_copy(w):
        with torch.no_grad():
            w.copy_(torch.randn_like(w))

    def one_element(w):
        with torch.no_grad():
            w[0, 0, 0, 0] += 1.0

    def through_view(w):
        with torch.no_grad():
            w[-1].zero_()

    def set_data(w):
        w.data = torch.randn_like(w)  # a new storage, version counter untouched

    def set_storage(w):
        with torch.no_grad():
            w.set_(torch.randn_like(w))

    def inference_mode(w):
        with torch.inference_mode():
            w.add_(1.0)

    # writes the version counter does not see: caught by the fingerprint of the filter's bytes
    def unseen(write):
        def change(w):
            version = w._version
            write(w)
            assert w._version == version
        change.__name__ = write.__name__
        return change

    def through_data(w):
        w.data.mul_(2.0)  # w.data shares w's storage, not its version counter

    def one_through_data(w):
        w.data.view(-1)[w.numel() // 2 + 1] = 7.0

    def through_numpy(w):
        w.detach().numpy().reshape(-1)[-1] += 1.0

    return [no_grad_mul, no_grad_copy, one_element, through_view, set_data, set_storage, inference_mode,
            unseen(through_data), unseen(one_through_data), unseen(through_numpy)]


@pytest.mark.parametrize("change", in_place_changes(), ids=lambda f: f.__name__)
@pytest.mark.parametrize("case", [CASES[0], CASES[1], CASES[3]], ids=[CASES[0][0], CASES[1][0], CASES[3][0]])
def test_changed_filter_is_repacked(case, change):
    _, shape, k, r, stride, padding, algo, _, _ = case
    x, w = make(shape, k, r, "nchw")
    with testing.force_cpu_algorithm({"forward": algo}):
        for _ in range(3):
            conv_ext.conv2d(x, w, None, stride, padding)
        assert cached_bytes() > 0
        change(w)
        for _ in range(3):  # first, second (caches again) and third call after the change
            out = conv_ext.conv2d(x, w, None, stride, padding)
            assert torch.equal(out, conv_ext.conv2d(x, fresh(w), None, stride, padding))
    torch.testing.assert_close(out, F.conv2d(x, w, None, stride, padding), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("strategy", ["pairs", "gauss"])
@pytest.mark.parametrize("change", ["none", "no_grad", "data", "numpy"])
def test_complex_filter_forms(strategy, change):
    """A complex filter's real forms (the block filter; Gauss's planes, one set for the forward and
    one, conjugated, for backward-input) are kept like packed filters: the cached results equal a
    fresh copy's, bit for bit, after in-place changes and writes the version counter misses."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 24, 9, 9, dtype=torch.complex64, generator=g)
    w = torch.randn(32, 24, 3, 3, dtype=torch.complex64, generator=g)
    dy = torch.randn(2, 32, 9, 9, dtype=torch.complex64, generator=g)
    geo = ([1, 1], [1, 1], [1, 1], 1)
    run = lambda wt: (ops.conv2d_forward(x, wt, None, *geo), ops.conv2d_backward_input(dy, wt, list(x.shape), *geo))  # noqa: E731
    with testing.complex_strategy(strategy):
        for _ in range(3):  # cached from the second call
            run(w)
        assert cached_bytes() > 0
        if change == "no_grad":
            with torch.no_grad():
                w.mul_(-0.5)
        elif change == "data":
            w.data[0, 0, 0, 0] += 1
        elif change == "numpy":
            w.numpy()[1, 2, 0, 1] += 1j
        for _ in range(2):
            got = run(w)
            for a, b in zip(got, run(fresh(w))):
                assert torch.equal(a, b)
        torch.testing.assert_close(got[0], F.conv2d(x, w, padding=1), rtol=1e-4, atol=1e-4)
    conv_ext.empty_cache()
    assert cached_bytes() == 0


def test_optimizer_steps_and_load_state_dict():
    torch.manual_seed(0)
    conv = conv_ext.Conv2d(32, 48, 3, padding=1)
    opt = torch.optim.SGD(conv.parameters(), lr=0.5)
    x = torch.randn(2, 32, 9, 9)
    with testing.force_cpu_algorithm({"forward": "implicit_gemm", "backward_input": "implicit_gemm"}):
        for _ in range(3):
            for _ in range(3):  # several forwards per step (evaluation, gradient accumulation)
                y = conv(x)
                torch.testing.assert_close(y, F.conv2d(x, conv.weight, conv.bias, padding=1), rtol=1e-4, atol=1e-4)
            opt.zero_grad()
            y.square().mean().backward()
            opt.step()
        other = torch.nn.Conv2d(32, 48, 3, padding=1)
        conv.load_state_dict(other.state_dict())
        torch.testing.assert_close(conv(x), other(x), rtol=1e-4, atol=1e-4)


def test_new_filter_at_a_freed_address():
    x, w = make((2, 20, 9, 11), 40, 3, "nchw")
    with testing.force_cpu_algorithm({"forward": "implicit_gemm"}):
        for seed in range(6):  # each filter freed before the next is made (often at the same address)
            w = torch.randn(40, 20, 3, 3, generator=torch.Generator().manual_seed(seed))
            for _ in range(3):
                out = conv_ext.conv2d(x, w, None, 2, 1)
            assert torch.equal(out, conv_ext.conv2d(x, fresh(w), None, 2, 1))
            del w, out


def test_one_filter_in_two_convolutions():
    x, w = make((2, 24, 10, 10), 36, 3, "nchw")
    with testing.force_cpu_algorithm({"forward": "implicit_gemm"}):
        for _ in range(3):
            for stride, padding in ((1, 1), (2, 0), (1, 2)):
                out = conv_ext.conv2d(x, w, None, stride, padding)
                assert torch.equal(out, conv_ext.conv2d(x, fresh(w), None, stride, padding))
        x2 = torch.randn(1, 48, 10, 10)  # the same filter as 2 groups of 24 channels
        for _ in range(3):
            out = conv_ext.conv2d(x2, w, None, 1, 1, 1, 2)
            assert torch.equal(out, conv_ext.conv2d(x2, fresh(w), None, 1, 1, 1, 2))


def test_a_training_step_keeps_nothing():
    """Each version of a filter is packed once per layout in a training step: nothing cached."""
    torch.manual_seed(0)
    conv = conv_ext.Conv2d(64, 64, 3, padding=1)
    opt = torch.optim.SGD(conv.parameters(), lr=0.01)
    x = torch.randn(2, 64, 10, 10, requires_grad=True)
    for _ in range(3):
        opt.zero_grad()
        conv(x).square().mean().backward()
        opt.step()
    assert cached_bytes() == 0


def test_inference_tensors_are_not_cached():
    x, _ = make((2, 20, 9, 11), 40, 3, "nchw")
    with torch.inference_mode():
        w = torch.randn(40, 20, 3, 3)
        outs = [conv_ext.conv2d(x, w, None, 2, 1) for _ in range(3)]
    assert cached_bytes() == 0
    torch.testing.assert_close(outs[-1], F.conv2d(x, w, None, 2, 1), rtol=1e-4, atol=1e-4)


def test_concurrent_calls():
    x, w = make((2, 20, 9, 11), 40, 3, "nhwc")
    expected = conv_ext.conv2d(x, fresh(w), None, 2, 1)
    bad = []

    def run():
        for _ in range(50):
            if not torch.equal(conv_ext.conv2d(x, w, None, 2, 1), expected):
                bad.append(1)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not bad


def held_under_limits(code):
    """{limit in MiB: the last number `code` prints} for CONV_EXT_CPU_FILTER_CACHE_MB = 0, 1, 512."""
    held = {}
    for mb in ("0", "1", "512"):
        env = dict(os.environ, CONV_EXT_CPU_FILTER_CACHE_MB=mb)
        out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True)
        held[mb] = int(out.stdout.split()[-1])
    return held


def test_cache_limit_and_off_switch():
    code = (
        "import torch, conv_ext\n"
        "x = torch.randn(1, 256, 7, 7)\n"
        "ws = [torch.randn(256, 256, 1, 1) for _ in range(4)]\n"  # 256 KiB packed each
        "for w in ws:\n"
        "    for _ in range(3): conv_ext.conv2d(x, w)\n"
        "print(conv_ext.info()['cpu_filter_cache_bytes'])\n"
    )
    code = code.replace("\nx =", "\nconv_ext._C.force_cpu_algorithm('forward', 'implicit_gemm')\nx =")
    held = held_under_limits(code)
    assert held["0"] == 0
    assert 0 < held["1"] <= 1 << 20
    assert held["512"] == 4 * 256 * 256 * 4


def test_complex_forms_limit_and_off_switch():
    # complex filters' forms are held in the same cache, under the same limit: none with 0
    code = (
        "import torch, conv_ext\n"
        "x = torch.randn(1, 128, 7, 7, dtype=torch.complex64)\n"
        "ws = [torch.randn(128, 128, 1, 1, dtype=torch.complex64) for _ in range(4)]\n"  # 256 KiB block filters
        "for w in ws:\n"
        "    for _ in range(3): conv_ext.conv2d(x, w)\n"
        "print(conv_ext.info()['cpu_filter_cache_bytes'])\n"
    )
    held = held_under_limits(code)
    assert held["0"] == 0
    assert 0 < held["1"] <= 2 << 20
    assert held["512"] >= 4 * 256 * 256 * 4  # the four block filters at least
