"""Autograd: gradcheck, gradgradcheck (double backward), opcheck of every op, and only the
gradients autograd asks for are computed."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import conv_ext
import conv_ext.testing
from conftest import rel_error

ops = torch.ops.conv_ext

CONFIGS = [
    # (x shape, w shape, stride, padding, dilation, groups, bias)
    ((2, 3, 5, 6), (4, 3, 3, 3), 1, 1, 1, 1, True),
    ((1, 4, 7, 6), (4, 2, 3, 2), (2, 1), (0, 1), (1, 2), 2, True),
    ((2, 2, 5, 5), (4, 1, 3, 3), 2, 1, 1, 2, False),  # depthwise, multiplier 2
    ((1, 3, 4, 4), (2, 3, 1, 1), 1, 0, 1, 1, True),
]


def leaves(cfg, device, layout=torch.contiguous_format, dtype=torch.float64):
    xs, ws, stride, padding, dilation, groups, bias = cfg
    g = torch.Generator().manual_seed(7)
    x = torch.randn(xs, generator=g, dtype=dtype).to(device).contiguous(memory_format=layout)
    w = torch.randn(ws, generator=g, dtype=dtype).to(device)
    b = torch.randn(ws[0], generator=g, dtype=dtype).to(device) if bias else None
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    return [t.requires_grad_() for t in (x, w, b) if t is not None], kw


@pytest.mark.parametrize("cfg", CONFIGS)
def test_gradcheck(cfg, device):
    ts, kw = leaves(cfg, device)
    fn = lambda *t: conv_ext.conv2d(t[0], t[1], t[2] if len(t) > 2 else None, **kw)
    assert torch.autograd.gradcheck(fn, ts)


@pytest.mark.parametrize("cfg", CONFIGS)
def test_gradgradcheck(cfg, device):
    ts, kw = leaves(cfg, device)
    fn = lambda *t: conv_ext.conv2d(t[0], t[1], t[2] if len(t) > 2 else None, **kw)
    assert torch.autograd.gradgradcheck(fn, ts)


# complex128: gradcheck compares the Wirtinger derivatives (PyTorch's convention for complex
# gradients), first and second order, in both layouts
@pytest.mark.parametrize("cfg", CONFIGS)
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("strategy", ["pairs", "gauss"])
def test_gradcheck_complex(cfg, layout, strategy, device):
    ts, kw = leaves(cfg, device, layout, torch.complex128)
    fn = lambda *t: conv_ext.conv2d(t[0], t[1], t[2] if len(t) > 2 else None, **kw)
    with conv_ext.testing.complex_strategy(strategy):
        assert torch.autograd.gradcheck(fn, ts)
        assert torch.autograd.gradgradcheck(fn, ts)


def test_gradgradcheck_channels_last(device):
    ts, kw = leaves(CONFIGS[0], device, torch.channels_last)
    assert torch.autograd.gradgradcheck(lambda x, w, b: conv_ext.conv2d(x, w, b, **kw), ts)


def test_gradient_penalty_matches_torch(device):
    """WGAN-GP-style: the gradient of a gradient norm, against nn.functional.conv2d."""
    results = []
    for conv in (conv_ext.conv2d, F.conv2d):
        (x, w, b), kw = leaves(CONFIGS[1], device)
        y = conv(x, w, b, **kw).tanh().sum()
        (gx,) = torch.autograd.grad(y, x, create_graph=True)
        penalty = (gx.flatten(1).norm(dim=1) - 1).pow(2).mean()
        results.append(torch.autograd.grad(penalty, [x, w, b]))
    for a, e in zip(*results):
        assert rel_error(a, e) <= 1e-10


class OpLog(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("wanted", [("x",), ("w",), ("b",), ("x", "w", "b")])
def test_only_needed_gradients(wanted, device):
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64, device=device, requires_grad="x" in wanted)
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64, device=device, requires_grad="w" in wanted)
    b = torch.randn(3, dtype=torch.float64, device=device, requires_grad="b" in wanted)
    y = conv_ext.conv2d(x, w, b)
    with OpLog() as log:
        y.backward(torch.ones_like(y))
    ran = {op.split(".")[-1] for op in log.ops if "conv_ext" in op}
    expected = {{"x": "conv2d_backward_input", "w": "conv2d_backward_weight", "b": "conv2d_backward_bias"}[n] for n in wanted}
    assert ran == expected


def test_only_requested_gradients_with_autograd_grad(device):
    """torch.autograd.grad(y, x) asks the node for dx only, though w also requires grad."""
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64, device=device, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, device=device, requires_grad=True)
    y = conv_ext.conv2d(x, w, b, padding=1)
    with OpLog() as log:
        (dx,) = torch.autograd.grad(y, x, torch.ones_like(y))
    ran = {op.split(".")[-1] for op in log.ops if "conv_ext" in op}
    assert ran == {"conv2d_backward_input"}
    (ref,) = torch.autograd.grad(F.conv2d(x, w, b, padding=1), x, torch.ones_like(y))
    assert rel_error(dx, ref) < 1e-12


def test_graph_nodes_behave_like_torchs(device):
    """The recorded node frees its saved tensors after backward (a second backward raises as
    torch's does, retain_graph keeps them), notices an in-place change of a saved input, has a
    name."""
    x = torch.randn(1, 2, 5, 5, device=device, requires_grad=True)
    w = torch.randn(3, 2, 3, 3, device=device, requires_grad=True)
    y = conv_ext.conv2d(x, w).sum()
    assert y.grad_fn.next_functions[0][0].name() == "ConvExtForwardBackward"
    y.backward(retain_graph=True)
    g1 = w.grad.clone()
    y.backward()
    torch.testing.assert_close(w.grad, 2 * g1)
    with pytest.raises(RuntimeError, match="second time"):
        y.backward()

    xi = x.detach().clone().requires_grad_()
    xl = xi * 1.0  # a non-leaf, so it may be changed in place
    y = conv_ext.conv2d(xl, w).sum()
    xl.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()


# Every mode torch's gradcheck knows: forward-mode AD (tangents), vmap over the backward and over
# the tangents (batched gradients), undefined incoming gradients, forward-over-reverse and
# reverse-over-reverse second derivatives, in float64 and complex128
@pytest.mark.parametrize("cfg", CONFIGS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
def test_gradcheck_every_mode(cfg, dtype, device):
    ts, kw = leaves(cfg, device, dtype=dtype)
    fn = lambda *t: conv_ext.conv2d(t[0], t[1], t[2] if len(t) > 2 else None, **kw)
    assert torch.autograd.gradcheck(fn, ts, check_forward_ad=True, check_batched_grad=True,
                                    check_batched_forward_grad=True, check_undefined_grad=True)
    assert torch.autograd.gradgradcheck(fn, ts, check_fwd_over_rev=True, check_rev_over_rev=True,
                                        check_batched_grad=True)


def test_forward_ad_matches_torch(device):
    # dual tensors: each op's tangent is the op again with one argument's tangent in its place
    import torch.autograd.forward_ad as fwAD
    g = torch.Generator().manual_seed(11)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(device)
    x, w, b = r(2, 4, 7, 6), r(6, 2, 3, 3), r(6)
    kw = dict(stride=(1, 2), padding=1, groups=2)
    for tangents in [(r(*x.shape), None, None), (None, r(*w.shape), None), (None, None, r(6)),
                     (r(*x.shape), r(*w.shape), r(6))]:
        out = {}
        for name, fn in [("ours", conv_ext.conv2d), ("torch", torch.nn.functional.conv2d)]:
            with fwAD.dual_level():
                args = [t if d is None else fwAD.make_dual(t, d) for t, d in zip((x, w, b), tangents)]
                y = fn(*args, **kw)
                out[name] = [t.clone() for t in fwAD.unpack_dual(y)]
        for a, e in zip(out["ours"], out["torch"]):
            assert rel_error(a, e) <= 1e-10


def test_torch_func_transforms_match_torch(device):
    """torch.func on a model of conv_ext layers: per-sample gradients (vmap of grad through
    functional_call), jacrev, jacfwd, the Hessian (forward over reverse) and jvp, against the same
    model of nn.Conv2d layers."""
    from torch.func import functional_call, grad, hessian, jacfwd, jacrev, jvp, vmap

    torch.manual_seed(0)
    ref = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Tanh(),
                              torch.nn.Conv2d(4, 2, 3, stride=2, groups=2)).to(device, torch.float64)
    ours = conv_ext.convert(copy.deepcopy(ref))
    params = {k: v.detach() for k, v in ref.named_parameters()}
    x = torch.randn(5, 3, 6, 6, dtype=torch.float64, device=device)

    def loss(model):
        return lambda p, xi: functional_call(model, p, (xi.unsqueeze(0),)).square().sum()

    per_sample = [vmap(grad(loss(m)), in_dims=(None, 0))(params, x) for m in (ours, ref)]
    for k in params:
        assert per_sample[0][k].shape == (5,) + params[k].shape
        assert rel_error(per_sample[0][k], per_sample[1][k]) <= 1e-10, k
    w = params["0.weight"]
    f = [lambda wt, m=m: functional_call(m, {**params, "0.weight": wt}, (x[:1],)) for m in (ours, ref)]
    for transform in (jacrev, jacfwd):
        assert rel_error(transform(f[0])(w), transform(f[1])(w)) <= 1e-10
    h = [hessian(lambda wt, fn=fn: fn(wt).square().sum())(w) for fn in f]
    assert rel_error(h[0], h[1]) <= 1e-10
    v = torch.randn_like(w)
    assert rel_error(jvp(f[0], (w,), (v,))[1], jvp(f[1], (w,), (v,))[1]) <= 1e-10


def opcheck_cases(device, dtype=torch.float64):
    g = torch.Generator().manual_seed(3)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype).to(device)
    cl = lambda t: t.contiguous(memory_format=torch.channels_last)
    cases = []
    for xs, ws, st, pad, dil, groups, layout in [
        ((2, 4, 6, 7), (6, 2, 3, 3), [1, 1], [1, 1], [1, 1], 2, False),
        ((1, 3, 9, 8), (4, 3, 3, 2), [2, 1], [0, 1], [1, 2], 1, True),
        ((2, 4, 5, 5), (4, 1, 3, 3), [1, 1], [1, 1], [1, 1], 4, True),
        ((0, 2, 4, 4), (3, 2, 1, 1), [1, 1], [0, 0], [1, 1], 1, False),
    ]:
        x, w = r(*xs).requires_grad_(), r(*ws).requires_grad_()
        if layout:
            x = cl(x.detach()).requires_grad_()
        b = r(ws[0]).requires_grad_()
        y = torch.ops.conv_ext.conv2d_forward(x.detach(), w.detach(), None, st, pad, dil, groups)
        dy = r(*y.shape).requires_grad_()
        if layout:
            dy = cl(dy.detach()).requires_grad_()
        geo = (st, pad, dil, groups)
        cases += [
            (ops.conv2d_forward, (x, w, b) + geo),
            (ops.conv2d_forward, (x, w, None) + geo),
            (ops.conv2d_backward_input, (dy, w, list(xs)) + geo),
            (ops.conv2d_backward_weight, (dy, x, list(ws)) + geo),
            (ops.conv2d_backward_bias, (dy,)),
        ]
    return cases


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
def test_opcheck(dtype, device):
    for op, args in opcheck_cases(device, dtype):
        torch.library.opcheck(op, args)


def test_meta_tensors_give_shapes_and_layout():
    x = torch.empty(2, 3, 17, 19, device="meta").contiguous(memory_format=torch.channels_last)
    w = torch.empty(8, 3, 3, 3, device="meta")
    y = conv_ext.conv2d(x, w, stride=2, padding=1)
    assert y.device.type == "meta" and y.shape == (2, 8, 9, 10)
    assert y.is_contiguous(memory_format=torch.channels_last)


class _Sub(torch.Tensor):
    """A trivial tensor subclass: conv_ext.conv2d takes torch.ops' path for it."""


class _CountingMode(torch.overrides.TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.calls = 0
        self.funcs = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        self.funcs.append(func)
        return func(*args, **(kwargs or {}))


class _Logged(torch.Tensor):
    """A subclass with its own __torch_function__: it sees the functions called on it."""
    funcs = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        cls.funcs.append(func)
        return super().__torch_function__(func, types, args, kwargs)


def test_direct_binding_and_torch_ops_agree(device):
    """conv2d on plain tensors calls the op through the C++ binding (_C.conv2d_forward); tensor
    subclasses and torch-function modes go through torch.ops. Both give torch's values and
    gradients, bit for bit the same as each other."""
    ts, kw = leaves(CONFIGS[1], device)
    y = conv_ext.conv2d(*ts, **kw)
    gy = torch.randn_like(y)
    grads = torch.autograd.grad(y, ts, gy)
    ref = F.conv2d(*ts, **kw)
    assert rel_error(y, ref) <= 1e-10
    for g, r in zip(grads, torch.autograd.grad(ref, ts, gy)):
        assert rel_error(g, r) <= 1e-10

    sub = [t.detach().as_subclass(_Sub).requires_grad_() for t in ts]
    ys = conv_ext.conv2d(*sub, **kw)
    assert torch.equal(ys.as_subclass(torch.Tensor), y)
    for g, gs in zip(grads, torch.autograd.grad(ys, sub, gy)):
        assert torch.equal(gs.as_subclass(torch.Tensor), g)

    with _CountingMode() as mode:
        ym = conv_ext.conv2d(*ts, **kw)
    assert mode.calls > 0 and torch.equal(ym, y)
    # as with torch.nn.functional.conv2d, __torch_function__ sees conv_ext.conv2d itself first
    assert mode.funcs[0] is conv_ext.conv2d
    _Logged.funcs.clear()
    yl = conv_ext.conv2d(ts[0].detach().as_subclass(_Logged), *ts[1:], **kw)
    assert _Logged.funcs[0] is conv_ext.conv2d and type(yl) is _Logged
    assert torch.equal(yl.as_subclass(torch.Tensor), y)


def test_eager_binding_takes_the_common_calls_only(device):
    """_C.conv2d_eager runs conv_ext.conv2d's common call in C++ (plain tensors, int or pair
    geometry, batched or unbatched input) and returns None for every other call, which the Python
    path then takes (other argument forms, subclasses, autocast, torch-function modes, errors)."""
    from conv_ext import _C

    g = torch.Generator().manual_seed(3)
    x, w, b = (torch.randn(*s, generator=g).to(device) for s in [(2, 4, 9, 8), (6, 2, 3, 3), (6,)])
    want = ops.conv2d_forward(x, w, b, [2, 1], [1, 0], [1, 2], 2)
    for args in [((2, 1), (1, 0), [1, 2], 2), ([2, 1], [1, 0], (1, 2), 2)]:
        assert torch.equal(_C.conv2d_eager(x, w, b, *args), want)
    assert torch.equal(_C.conv2d_eager(x[0], w, None, 1, 1, 1, 2), ops.conv2d_forward(x[:1], w, None, [1, 1], [1, 1], [1, 1], 2)[0])
    assert torch.equal(_C.conv2d_eager(x, torch.nn.Parameter(w), b, 1, 0, 1, 2), ops.conv2d_forward(x, w, b, [1, 1], [0, 0], [1, 1], 2))
    others = [
        (x, w, b, 1, "same", 1, 2), (x, w, b, [2], 0, 1, 2), (x, w, b, (1, 2, 3), 0, 1, 2), (x, w, b, 1, 0, 1, True),
        (x, w, b, True, 0, 1, 2), (x, w, b, 2**70, 0, 1, 2), (x, w, b, 1, 0, 1, 2.0), (x[0, 0], w, b, 1, 0, 1, 2),
        (x.as_subclass(_Sub), w, b, 1, 0, 1, 2), (x, w, b.as_subclass(_Sub), 1, 0, 1, 2), (x, w, [1.0] * 6, 1, 0, 1, 2),
    ]
    for args in others:
        assert _C.conv2d_eager(*args) is None, args
    with torch.autocast(device, dtype=torch.bfloat16):
        assert _C.conv2d_eager(x, w, b, 1, 0, 1, 2) is None
    with _CountingMode():
        assert _C.conv2d_eager(x, w, b, 1, 0, 1, 2) is None


@pytest.mark.parametrize("x_cl,w_cl", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("ks,groups", [(1, 1), (3, 1), (3, 8), (3, 2)])
def test_gradient_layouts_follow_torch(device, x_cl, w_cl, ks, groups):
    # channels_last in, channels_last gradients out (torch's rule): a channels_last parameter
    # then takes its .grad as it comes, with no reorder by AccumulateGrad
    cl = torch.channels_last
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 8, 6, 7, generator=g, dtype=torch.float64).to(device)
    w = torch.randn(16, 8 // groups, ks, ks, generator=g, dtype=torch.float64).to(device)
    if x_cl:
        x = x.contiguous(memory_format=cl)
    if w_cl:
        w = w.contiguous(memory_format=cl)
    grads = []
    for conv in (F.conv2d, conv_ext.conv2d):
        xs, ws = x.clone().requires_grad_(), w.clone().requires_grad_()
        y = conv(xs, ws, None, 1, 1, 1, groups)
        y.backward(torch.ones_like(y))
        grads.append((y, xs.grad, ws.grad))
    layout = lambda t: (t.is_contiguous(), t.is_contiguous(memory_format=cl))  # size-1 strides aside
    for ref, ours in zip(*grads):
        assert layout(ours) == layout(ref)
        assert rel_error(ours, ref) <= 1e-10


@pytest.mark.parametrize("shape,layout", [
    ((4, 576, 7, 7), "nhwc"),     # 196 pixel rows: 2 chunks; 576 = 9 blocks of 64 channels
    ((3, 100, 30, 31), "nhwc"),   # 16 chunks of pixel rows; 100 = 64 + a tail of 36
    ((2, 5, 3, 3), "nhwc"),       # one chunk, only a tail block
    ((2, 7, 17, 19), "nchw"),     # planes of 323: 32 running sums, a tail of 3
    ((3, 70, 7, 7), "nchw"),      # small planes: one sum each; 70 = 64 + 6 channels
], ids=str)
def test_backward_bias_sums(shape, layout, device):
    """conv2d_backward_bias (db = dy summed over N, P, Q) against a float64 sum: its chunks of
    pixel rows (channels_last) and running sums per plane (NCHW) cover every element once."""
    g = torch.Generator().manual_seed(3)
    dy = torch.randn(*shape, generator=g).to(device)
    if layout == "nhwc":
        dy = dy.contiguous(memory_format=torch.channels_last)
    db = torch.ops.conv_ext.conv2d_backward_bias(dy)
    ref = dy.double().sum((0, 2, 3))
    assert db.dtype == dy.dtype and db.shape == (shape[1],)
    assert rel_error(db, ref) <= 1e-6


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_vmap_rules_match_a_loop(layout, device):
    """Each op's vmap rule (conv_ext/_ops.py) against one call per element, for every choice of
    which arguments are batched and along which dimension."""
    import itertools

    g = torch.Generator().manual_seed(21)
    nb, geo = 3, ([2, 1], [1, 0], [1, 2], 2)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(device)
    x, w, b = r(2, 4, 7, 8).contiguous(memory_format=layout), r(6, 2, 3, 2), r(6)
    dy = ops.conv2d_forward(x, w, None, *geo).contiguous(memory_format=layout)

    def batched(t, dim):  # nb different values of t, stacked along dim (None: t itself)
        return t if dim is None else torch.stack([t * (1 + i) + 0.5 * i for i in range(nb)], dim)

    def element(t, dim, i):
        return t if dim is None else t.select(dim, i)

    cases = [
        (lambda x, w, b: ops.conv2d_forward(x, w, b, *geo), (x, w, b)),
        (lambda dy, w: ops.conv2d_backward_input(dy, w, list(x.shape), *geo), (dy, w)),
        (lambda dy, x: ops.conv2d_backward_weight(dy, x, list(w.shape), *geo), (dy, x)),
        (lambda dy: ops.conv2d_backward_bias(dy), (dy,)),
    ]
    for op, args in cases:
        for dims in itertools.product([None, 0, 1], repeat=len(args)):
            if all(d is None for d in dims) or any(d == 1 and a.dim() == 1 for d, a in zip(dims, args)):
                continue
            inputs = [batched(a, d) for a, d in zip(args, dims)]
            got = torch.vmap(op, in_dims=dims)(*inputs)
            want = torch.stack([op(*[element(t, d, i) for t, d in zip(inputs, dims)]) for i in range(nb)])
            assert got.shape == want.shape and rel_error(got, want) <= 1e-12, (op, dims)
