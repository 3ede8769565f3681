"""torch.compile(fullgraph=True) of models using conv_ext: no graph break, same results,
forward and backward."""
import pytest
import torch
from torch import nn

import conv_ext
from conftest import rel_error


def net(conv):
    torch.manual_seed(0)
    return nn.Sequential(conv(3, 8, 3, padding=1), nn.ReLU(), conv(8, 8, 3, stride=2, padding=1, groups=4),
                         nn.ReLU(), conv(8, 4, 1))


@pytest.mark.parametrize("dynamic", [False, True])
def test_compile_fullgraph_forward_backward(dynamic, device):
    torch._dynamo.reset()
    eager, model = net(conv_ext.Conv2d).to(device), net(conv_ext.Conv2d).to(device)
    compiled = torch.compile(model, fullgraph=True, dynamic=dynamic)
    for shape in [(2, 3, 12, 12), (3, 3, 10, 14)] if dynamic else [(2, 3, 12, 12)]:
        x = torch.randn(shape, device=device)
        y_eager, y = eager(x), compiled(x)
        assert rel_error(y, y_eager) <= 1e-6
        y_eager.square().sum().backward()
        y.square().sum().backward()
        for p_eager, p in zip(eager.parameters(), model.parameters()):
            assert rel_error(p.grad, p_eager.grad) <= 1e-5
            p.grad, p_eager.grad = None, None


def test_compile_functional_no_graph_break(device):
    torch._dynamo.reset()

    def f(x, w, b):
        return conv_ext.conv2d(x, w, b, padding="same", dilation=2).relu()

    x, w, b = torch.randn(1, 4, 9, 9, device=device), torch.randn(6, 4, 2, 3, device=device), torch.randn(6, device=device)
    explanation = torch._dynamo.explain(f)(x, w, b)
    assert explanation.graph_break_count == 0
    assert rel_error(torch.compile(f, fullgraph=True)(x, w, b), f(x, w, b)) <= 1e-6


def test_compile_complex(device):
    # a complex layer compiles (inductor calls the op; the fake kernel gives complex shapes)
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(5)
    x, w = (torch.randn(*s, generator=g, dtype=torch.complex64).to(device).requires_grad_() for s in [(2, 3, 8, 8), (4, 3, 3, 3)])
    f = lambda x, w: conv_ext.conv2d(x, w, padding=1).abs().square().sum()
    eager = torch.autograd.grad(f(x, w), (x, w))
    compiled = torch.autograd.grad(torch.compile(f, fullgraph=True)(x, w), (x, w))
    for a, e in zip(compiled, eager):
        assert rel_error(a, e) <= 1e-5


def test_inductor_calls_our_op(device):
    # the decomposition conv_ext registers for ONNX's exporter (_ops.py) must not reach inductor:
    # its compiled code calls conv_ext's op, not aten.convolution
    from torch._inductor.utils import run_and_get_code

    torch._dynamo.reset()
    x, w = torch.randn(2, 3, 9, 9, device=device), torch.randn(4, 3, 3, 3, device=device)
    y, code = run_and_get_code(torch.compile(lambda x, w: conv_ext.conv2d(x, w, padding=1).relu()), x, w)
    assert any("conv_ext.conv2d_forward" in c for c in code) and not any("convolution" in c for c in code)
    assert rel_error(y, torch.nn.functional.conv2d(x, w, padding=1).relu()) <= 1e-6
