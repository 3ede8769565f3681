"""conv_ext.Conv2d as a drop-in nn.Conv2d: constructor, padding modes, state_dict, from_conv,
convert, and training parity."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import conv_ext
from conftest import rel_error


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "replicate", "circular"])
@pytest.mark.parametrize("padding", [1, (2, 1), "same", "valid"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
def test_padding_modes_match_nn(padding_mode, padding, dtype, device):
    torch.manual_seed(0)
    ref = nn.Conv2d(4, 6, (3, 4) if padding != "same" else 3, padding=padding, padding_mode=padding_mode,
                    groups=2, dtype=dtype, device=device)
    ours = conv_ext.Conv2d(4, 6, (3, 4) if padding != "same" else 3, padding=padding, padding_mode=padding_mode,
                           groups=2, dtype=dtype, device=device)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 4, 7, 8, dtype=dtype, device=device, requires_grad=True)
    y_ref, y = ref(x), ours(x)
    assert y.shape == y_ref.shape and rel_error(y, y_ref) <= 1e-10
    go = torch.randn_like(y)
    g_ref = torch.autograd.grad(y_ref, [x, ref.weight, ref.bias], go)
    g = torch.autograd.grad(y, [x, ours.weight, ours.bias], go)
    for a, e in zip(g, g_ref):
        assert rel_error(a, e) <= 1e-10


def test_is_an_nn_conv2d_with_its_constructor():
    m = conv_ext.Conv2d(3, 16, 3, 1, 1)  # positional like nn.Conv2d(in, out, kernel, stride, padding)
    assert isinstance(m, nn.Conv2d)
    assert m.weight.shape == (16, 3, 3, 3) and m.bias.shape == (16,)
    assert m(torch.randn(1, 3, 8, 8)).shape == (1, 16, 8, 8)
    m = conv_ext.Conv2d(4, 8, kernel_size=(1, 3), stride=(2, 1), padding=(0, 1), dilation=(1, 2), groups=4,
                        bias=False, padding_mode="reflect", device="cpu", dtype=torch.float64)
    assert m.bias is None and m.weight.dtype == torch.float64 and m.weight.shape == (8, 1, 1, 3)
    assert "conv_ext" not in repr(m) or "Conv2d" in repr(m)


def test_state_dict_round_trip():
    torch.manual_seed(0)
    ref = nn.Conv2d(3, 5, 3, padding=1)
    ours = conv_ext.Conv2d(3, 5, 3, padding=1)
    ours.load_state_dict(ref.state_dict())
    back = nn.Conv2d(3, 5, 3, padding=1)
    back.load_state_dict(ours.state_dict())
    assert ours.state_dict().keys() == ref.state_dict().keys()
    for k in ref.state_dict():
        assert torch.equal(back.state_dict()[k], ref.state_dict()[k])
    x = torch.randn(2, 3, 6, 6)
    assert rel_error(ours(x), ref(x)) <= 1e-6


def test_from_conv_shares_parameters():
    ref = nn.Conv2d(3, 4, 3, stride=2, padding=1, dilation=1, groups=1, padding_mode="circular")
    ours = conv_ext.Conv2d.from_conv(ref)
    assert type(ours) is conv_ext.Conv2d
    assert ours.weight is ref.weight and ours.bias is ref.bias
    assert (ours.stride, ours.padding, ours.padding_mode) == (ref.stride, ref.padding, ref.padding_mode)
    x = torch.randn(1, 3, 9, 9)
    assert rel_error(ours(x), ref(x)) <= 1e-6
    with torch.no_grad():
        ref.weight.add_(1.0)  # the same tensor: the change shows in both
    assert rel_error(ours(x), ref(x)) <= 1e-6
    with pytest.raises(TypeError):
        conv_ext.Conv2d.from_conv(nn.Linear(2, 2))


class Nested(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.blocks = nn.Sequential(
            nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU()),
            nn.ModuleList([nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8)]),
        )
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        x = self.stem(x)
        x = self.blocks[0](x)
        for m in self.blocks[1]:
            x = m(x)
        return self.head(x.mean((2, 3)))


def test_convert_nested_model():
    torch.manual_seed(0)
    model = Nested().eval()
    x = torch.randn(2, 3, 8, 8)
    expected = model(x)
    converted = conv_ext.convert(copy.deepcopy(model))
    convs = [m for m in converted.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 3 and all(type(m) is conv_ext.Conv2d for m in convs)
    assert rel_error(converted(x), expected) <= 1e-5
    single = conv_ext.convert(nn.Conv2d(2, 2, 1))
    assert type(single) is conv_ext.Conv2d


def test_revert_undoes_convert():
    # back to nn.Conv2d (sharing the parameters), e.g. for torch.ao.quantization's eager-mode
    # tools, which look modules up by exact type: its conv + batch norm + relu fusion then works
    torch.manual_seed(0)
    model = Nested().eval()
    x = torch.randn(2, 3, 8, 8)
    converted = conv_ext.convert(copy.deepcopy(model))
    weights = [m.weight for m in converted.modules() if isinstance(m, nn.Conv2d)]
    reverted = conv_ext.revert(converted)
    convs = [m for m in reverted.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 3 and all(type(m) is nn.Conv2d for m in convs)
    assert all(m.weight is w for m, w in zip(convs, weights))
    assert rel_error(reverted(x), model(x)) <= 1e-6
    assert type(conv_ext.revert(conv_ext.Conv2d(2, 2, 1))) is nn.Conv2d
    seq = conv_ext.convert(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).eval())
    fused = torch.ao.quantization.fuse_modules(conv_ext.revert(seq), [["0", "1", "2"]])
    assert rel_error(fused(x), seq(x)) <= 1e-5


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.nn.utils.weight_norm, the old form
@pytest.mark.parametrize("kind", ["weight_norm", "parametrized", "pruned", "hooks", "attributes"])
def test_convert_and_revert_keep_what_the_module_holds(kind):
    # convert swaps the class of the computation and keeps everything else the module holds:
    # weight norm's and pruning's forward pre-hooks (weight is then a plain tensor they compute),
    # torch.nn.utils.parametrize's parametrizations (the module's class is parametrize's own
    # subclass), the user's hooks and attributes -- and revert brings the same back
    import torch.nn.utils.prune as prune
    from torch.nn.utils import parametrize

    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    if kind == "weight_norm":
        torch.nn.utils.weight_norm(conv)
    elif kind == "parametrized":
        torch.nn.utils.parametrizations.weight_norm(conv)
    elif kind == "pruned":
        prune.random_unstructured(conv, "weight", amount=0.5)
    elif kind == "hooks":
        conv.register_forward_pre_hook(lambda m, args: (args[0] * 0.5,))
        conv.register_forward_hook(lambda m, args, out: out.relu())
    else:
        conv.tag = "stem"
        conv.register_buffer("scale", torch.tensor(2.0))
    model = nn.Sequential(conv, nn.Tanh())
    x = torch.randn(2, 3, 7, 6)
    want = model(x)
    params = list(model.parameters())
    model = conv_ext.convert(model)
    ours = model[0]
    assert isinstance(ours, conv_ext.Conv2d)
    assert parametrize.is_parametrized(ours) == (kind == "parametrized")
    assert len(list(model.parameters())) == len(params)
    assert all(a is b for a, b in zip(model.parameters(), params))  # the same Parameter objects
    assert rel_error(model(x), want) <= 1e-6
    grads = torch.autograd.grad(model(x).square().sum(), list(model.parameters()))
    assert all(g.abs().sum() > 0 for g in grads)
    if kind == "attributes":
        assert ours.tag == "stem" and ours.scale.item() == 2.0 and "scale" in ours.state_dict()
        ours.register_buffer("extra", torch.zeros(1))  # the containers are the new module's own
        assert not hasattr(conv, "extra")
    if kind == "parametrized":
        parametrize.remove_parametrizations(ours, "weight")
        assert type(ours) is conv_ext.Conv2d and rel_error(model(x), want) <= 1e-6
    if kind == "pruned":
        prune.remove(ours, "weight")
        assert type(ours) is conv_ext.Conv2d and (ours.weight == 0).sum() == ours.weight.numel() // 2
    back = conv_ext.revert(model)[0]
    assert not isinstance(back, conv_ext.Conv2d) and isinstance(back, nn.Conv2d)
    assert rel_error(model(x), want) <= 1e-6


def small_cnn(conv):
    torch.manual_seed(0)
    return nn.Sequential(
        conv(1, 8, 3, padding=1), nn.ReLU(), conv(8, 8, 3, stride=2, padding=1, groups=2), nn.ReLU(),
        conv(8, 16, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 3),
    )


def test_sgd_training_matches_nn():
    """Ten SGD steps of a small CNN give the same losses with conv_ext as with nn.Conv2d."""
    g = torch.Generator().manual_seed(1)
    data = torch.randn(16, 1, 10, 10, generator=g)
    target = torch.randint(0, 3, (16,), generator=g)
    losses = {}
    for name, conv in [("nn", nn.Conv2d), ("conv_ext", conv_ext.Conv2d)]:
        model = small_cnn(conv)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        losses[name] = []
        for _ in range(10):
            opt.zero_grad()
            loss = F.cross_entropy(model(data), target)
            loss.backward()
            opt.step()
            losses[name].append(loss.item())
    assert losses["nn"][-1] < losses["nn"][0]  # it learns
    for a, b in zip(losses["conv_ext"], losses["nn"]):
        assert abs(a - b) <= 1e-6 * abs(b), (losses["conv_ext"], losses["nn"])


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "circular"])
@pytest.mark.parametrize("padding", [1, "same", "valid"])
def test_torchscript_matches_nn(padding_mode, padding, tmp_path, device):
    # torch.jit.script compiles Conv2d's own scripted forward (the op with explicit padding);
    # the scripted module saves, loads, and trains (gradients) as nn.Conv2d's does
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Conv2d(4, 6, 3, padding=padding, padding_mode=padding_mode, groups=2), nn.Tanh(),
                        nn.Conv2d(6, 2, (2, 3), stride=(2, 1), dilation=(1, 2))).to(device, torch.float64)
    scripted = torch.jit.script(conv_ext.convert(copy.deepcopy(ref)))
    path = str(tmp_path / "model.pt")
    torch.jit.save(scripted, path)
    loaded = torch.jit.load(path, map_location=device)
    for x in [torch.randn(2, 4, 9, 8, dtype=torch.float64, device=device), torch.randn(4, 9, 8, dtype=torch.float64, device=device)]:
        want = ref(x)
        for m in (scripted, loaded):
            assert rel_error(m(x), want) <= 1e-10
    x = torch.randn(2, 4, 9, 8, dtype=torch.float64, device=device)
    traced = torch.jit.trace(conv_ext.convert(copy.deepcopy(ref)), (x,))  # records conv_ext's op
    assert "conv_ext::conv2d_forward" in str(traced.inlined_graph)
    assert rel_error(traced(x), ref(x)) <= 1e-10
    grads = [torch.autograd.grad(m(x).square().sum(), list(m.parameters())) for m in (loaded, ref)]
    for a, e in zip(*grads):
        assert rel_error(a, e) <= 1e-10
