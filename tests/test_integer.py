"""Integer tensors (uint8, int8, int16, int32, int64), which torch.nn.functional.conv2d takes on the
CPU: every product and sum wraps modulo 2^bits of the dtype, so results are exact and compared for
equality. The oracle is torch's own integer convolution where it runs (not dilated, but for int64)
and always torch's int64 convolution of the values, narrowed to the dtype (the same low bits).
Both the integer kernel (the automatic choice) and the reference kernel (forced) are checked."""
import random
import zlib

import pytest
import torch
import torch.nn.functional as F

import conv_ext

DTYPES = [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64]
# integer_pairs (8- and 16-bit types on AVX512-VNNI) is the automatic choice where it runs;
# integer (any integer type) forced as well
ALGORITHMS = ["auto", "integer", "reference"]


def values(dtype, shape, full_range=True):
    """Random values of dtype over its whole range (products and sums wrap), or small ones."""
    info = torch.iinfo(dtype)
    if full_range and dtype == torch.int64:  # (randint's range must fit in int64)
        return torch.randint(-2**62, 2**62, shape, dtype=torch.int64) * 2 + torch.randint(0, 2, shape)
    lo, hi = (info.min, info.max + 1) if full_range else (max(info.min, -9), 10)
    return torch.randint(lo, hi, shape, dtype=torch.int64).to(dtype)


def expected(x, w, b, stride, padding, dilation, groups):
    """torch's int64 convolution narrowed to x's dtype; checked against torch's own where it runs."""
    wide = F.conv2d(x.long(), w.long(), None if b is None else b.long(), stride, padding, dilation, groups).to(x.dtype)
    try:
        own = F.conv2d(x, w, b, stride, padding, dilation, groups)
    except NotImplementedError:  # torch 2.13 has no dilated convolution of 8-32 bit integers
        return wide
    assert torch.equal(own, wide)
    return own


@pytest.fixture(params=ALGORITHMS)
def algorithm(request):
    conv_ext._C.force_cpu_algorithm("forward", request.param)
    yield request.param
    conv_ext._C.force_cpu_algorithm("forward", "auto")


# (N, C, H, W, K, R, S, stride, padding, dilation, groups)
CASES = [
    (2, 3, 9, 11, 5, 3, 3, 1, 1, 1, 1),
    (1, 4, 12, 10, 8, 3, 3, 2, 1, 1, 1),
    (3, 6, 13, 17, 9, 3, 2, (2, 3), (2, 0), 1, 3),
    (1, 2, 15, 14, 3, 3, 3, 1, 2, 2, 1),
    (2, 8, 7, 7, 16, 1, 1, 1, 0, 1, 1),
    (1, 16, 20, 9, 24, 1, 1, 2, 0, 1, 2),
    (2, 3, 30, 45, 17, 7, 7, 2, 3, 1, 1),
    (1, 5, 6, 70, 4, 2, 5, (1, 3), (0, 2), (2, 1), 1),
    (1, 4, 9, 9, 4, 3, 3, 1, 1, 1, 4),
    (1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "strided"])
@pytest.mark.parametrize("bias", [False, True])
def test_integer_exact(dtype, case, layout, bias, algorithm):
    n, c, h, w, k, r, s, stride, padding, dilation, groups = case
    torch.manual_seed(zlib.crc32(repr((dtype, case, layout, bias)).encode()))
    x = values(dtype, (n, c, h, 2 * w if layout == "strided" else w))
    if layout == "strided":
        x = x[..., ::2]
    weight = values(dtype, (k, c // groups, r, s))
    if layout == "channels_last":
        x, weight = x.contiguous(memory_format=torch.channels_last), weight.contiguous(memory_format=torch.channels_last)
    b = values(dtype, (k,)) if bias else None
    y = conv_ext.conv2d(x, weight, b, stride, padding, dilation, groups)
    ran = conv_ext._C.last_cpu_algorithm("forward")
    if conv_ext._C.cpu_capability() == "portable":  # a CPU without AVX2 runs the reference kernel
        assert ran == "reference"
    elif algorithm == "auto":
        assert ran in (("integer", "integer_pairs") if dtype.itemsize <= 2 else ("integer",))
    else:
        assert ran == algorithm
    want = expected(x, weight, b, stride, padding, dilation, groups)
    assert y.dtype == dtype and y.shape == want.shape
    assert y.is_contiguous(memory_format=torch.channels_last) == want.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(y, want)


def test_integer_wraps_like_torch():
    """Nine taps of 100 x 1 in int8: 900 wraps to -124, as torch computes it; int64 products past
    2^63 wrap too."""
    x = torch.full((1, 1, 3, 3), 100, dtype=torch.int8)
    assert conv_ext.conv2d(x, torch.ones(1, 1, 3, 3, dtype=torch.int8)).item() == -124
    x = torch.full((1, 1, 1, 1), 2**40, dtype=torch.int64)
    w = torch.full((1, 1, 1, 1), 2**30 + 3, dtype=torch.int64)
    assert torch.equal(conv_ext.conv2d(x, w), F.conv2d(x, w))
    u = torch.full((1, 2, 2, 2), 200, dtype=torch.uint8)
    y = conv_ext.conv2d(u, torch.full((3, 2, 1, 1), 2, dtype=torch.uint8), torch.full((3,), 7, dtype=torch.uint8))
    assert torch.equal(y, torch.full((1, 3, 2, 2), (800 + 7) % 256, dtype=torch.uint8))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_integer_shapes_and_forms(dtype):
    """Batch 0, unbatched input, 'same' padding, no input channels (the bias alone), and a random
    sweep of geometries on small values, against the oracle."""
    w = values(dtype, (4, 3, 3, 3))
    assert conv_ext.conv2d(values(dtype, (0, 3, 8, 8)), w).shape == (0, 4, 6, 6)
    x = values(dtype, (3, 8, 8))
    assert torch.equal(conv_ext.conv2d(x, w, padding="same"), expected(x[None], w, None, 1, 1, 1, 1)[0])
    b = values(dtype, (4,))
    y = conv_ext.conv2d(values(dtype, (2, 0, 5, 5)), values(dtype, (4, 0, 3, 3)), b)
    assert torch.equal(y, b.view(1, 4, 1, 1).expand(2, 4, 3, 3))
    rng = random.Random(str(dtype))
    for _ in range(25):
        groups = rng.choice([1, 1, 2, 3])
        cg, kg, r, s = rng.randint(1, 4), rng.randint(1, 10), rng.randint(1, 4), rng.randint(1, 4)
        stride, dilation = (rng.randint(1, 3), rng.randint(1, 3)), (rng.randint(1, 2), rng.randint(1, 2))
        padding = (rng.randint(0, 2), rng.randint(0, 2))
        h, wd = rng.randint((r - 1) * dilation[0] + 1, 24), rng.randint((s - 1) * dilation[1] + 1, 80)
        x = values(dtype, (rng.randint(1, 3), groups * cg, h, wd), full_range=False)
        wt = values(dtype, (groups * kg, cg, r, s), full_range=False)
        assert torch.equal(conv_ext.conv2d(x, wt, None, stride, padding, dilation, groups),
                           expected(x, wt, None, stride, padding, dilation, groups))


def test_integer_only_where_torch_takes_it():
    """The forward op takes integer tensors on the CPU; the backward ops (never asked for by
    autograd: an integer tensor cannot require a gradient) refuse them by name, and so do the other
    CPU algorithms when forced."""
    x, w = values(torch.int32, (1, 4, 8, 8)), values(torch.int32, (4, 4, 3, 3))
    with pytest.raises(RuntimeError, match=r"expected grad_output to be float32, .* or complex128, got Int"):
        torch.ops.conv_ext.conv2d_backward_input(x[:, :, :6, :6], w, [1, 4, 8, 8], [1, 1], [0, 0], [1, 1], 1)
    with pytest.raises(RuntimeError, match=r"expected grad_output to be float32, .* or complex128, got Int"):
        torch.ops.conv_ext.conv2d_backward_weight(x[:, :, :6, :6], x, [4, 4, 3, 3], [1, 1], [0, 0], [1, 1], 1)
    # each float kernel forced on integer problems of its own shapes (1x1, depthwise, 3x3, grouped)
    problems = [(x, w, 1), (x, values(torch.int32, (8, 4, 1, 1)), 1), (x, values(torch.int32, (4, 1, 3, 3)), 4),
                (values(torch.int32, (2, 64, 16, 16)), values(torch.int32, (64, 64, 3, 3)), 1),
                (values(torch.int32, (2, 64, 16, 16)).contiguous(memory_format=torch.channels_last),
                 values(torch.int32, (64, 16, 3, 3)), 4)]
    for name in conv_ext._C.cpu_algorithms("forward"):
        if name in ("integer", "reference"):  # (integer_pairs too must refuse: these are int32)
            continue
        conv_ext._C.force_cpu_algorithm("forward", name)
        try:
            for xi, wi, g in problems:
                with pytest.raises(RuntimeError, match=f"forced forward algorithm '{name}' does not support"):
                    conv_ext.conv2d(xi, wi, groups=g)
        finally:
            conv_ext._C.force_cpu_algorithm("forward", "auto")


def test_integer_compiles():
    x, w = values(torch.int16, (2, 4, 9, 9)), values(torch.int16, (6, 4, 3, 3))
    f = torch.compile(lambda x, w: conv_ext.conv2d(x, w, None, 2, 1), fullgraph=True, backend="eager")
    assert torch.equal(f(x, w), F.conv2d(x, w, None, 2, 1))
    assert conv_ext.conv2d(x.to("meta"), w.to("meta"), None, 2, 1).dtype == torch.int16


@pytest.mark.parametrize("dtype", [torch.int8, torch.int32], ids=str)
def test_integer_opcheck(dtype):
    """torch.library.opcheck on integer operands: schema, fake kernel, autograd registration and
    AOT dispatch (an integer output takes no gradient)."""
    x, w, b = values(dtype, (2, 4, 9, 9)), values(dtype, (6, 2, 3, 3)), values(dtype, (6,))
    torch.library.opcheck(torch.ops.conv_ext.conv2d_forward.default, (x, w, b, [2, 1], [1, 0], [1, 2], 2))
    xc = x.contiguous(memory_format=torch.channels_last)
    torch.library.opcheck(torch.ops.conv_ext.conv2d_forward.default, (xc, w, None, [1, 1], [1, 1], [1, 1], 2))
