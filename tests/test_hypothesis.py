"""Random valid configurations, drawn by hypothesis: forward and all three gradients in
float64 against torch.nn.functional.conv2d."""
import pytest
import torch
import torch.nn.functional as F

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import conv_ext  # noqa: E402
from conftest import rel_error  # noqa: E402


@st.composite
def configs(draw):
    groups = draw(st.integers(1, 3))
    cg, kg = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    r, s = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    dil = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    pad = (draw(st.integers(0, 3)), draw(st.integers(0, 3)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    # an input at least as large as the dilated kernel minus the padding
    h = draw(st.integers(max(1, dil[0] * (r - 1) + 1 - 2 * pad[0]), 12))
    w = draw(st.integers(max(1, dil[1] * (s - 1) + 1 - 2 * pad[1]), 12))
    n = draw(st.integers(0, 3))
    layout = draw(st.sampled_from(["nchw", "channels_last", "strided"]))
    bias = draw(st.booleans())
    return dict(n=n, c=cg * groups, h=h, w=w, k=kg * groups, r=r, s=s, stride=stride, padding=pad,
                dilation=dil, groups=groups, layout=layout, bias=bias, seed=draw(st.integers(0, 2**31 - 1)))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cfg=configs())
def test_random_configs_match_torch(cfg):
    g = torch.Generator().manual_seed(cfg["seed"])
    x = torch.randn(cfg["n"], cfg["c"], cfg["h"], cfg["w"] * (2 if cfg["layout"] == "strided" else 1),
                    generator=g, dtype=torch.float64)
    if cfg["layout"] == "strided":
        x = x[..., ::2]
    elif cfg["layout"] == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(cfg["k"], cfg["c"] // cfg["groups"], cfg["r"], cfg["s"], generator=g, dtype=torch.float64)
    b = torch.randn(cfg["k"], generator=g, dtype=torch.float64) if cfg["bias"] else None
    kw = {k: cfg[k] for k in ("stride", "padding", "dilation", "groups")}
    results = []
    for conv in (conv_ext.conv2d, F.conv2d):
        ts = [t.clone().requires_grad_() for t in (x, w, b) if t is not None]
        y = conv(ts[0], ts[1], ts[2] if b is not None else None, **kw)
        go = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        results.append([y] + list(torch.autograd.grad(y, ts, go)))
    for a, e in zip(*results):
        assert a.shape == e.shape
        assert rel_error(a, e) <= 1e-10
