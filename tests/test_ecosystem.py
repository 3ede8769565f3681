"""conv_ext among torch's tools: autocast, DistributedDataParallel, torch.compile, torch.export,
ONNX, torch.fx and torch.nn.utils.

Each test holds conv_ext to what nn.Conv2d does in the same situation.
"""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import conv_ext

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # benchmarks.models: the networks live in the repo

from benchmarks import models  # noqa: E402

HAS_CUDA = torch.cuda.is_available() and conv_ext.info()["cuda_available"]


def pair(*args, **kwargs):
    """An nn.Conv2d and a conv_ext.Conv2d sharing its parameters."""
    torch.manual_seed(0)
    ref = nn.Conv2d(*args, **kwargs)
    return ref, conv_ext.Conv2d.from_conv(ref)


# ---------------------------------------------------------------------------------------------
# autocast
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("amp_dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_autocast_cpu_matches_nn_conv2d(amp_dtype, layout):
    ref, ext = pair(6, 8, 3, stride=1, padding=1, groups=2, bias=True)
    x = torch.randn(2, 6, 9, 7).contiguous(memory_format=layout)
    x_ref, x_ext = x.clone().requires_grad_(), x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=amp_dtype):
        y_ref, y_ext = ref(x_ref), ext(x_ext)
    assert y_ref.dtype == amp_dtype  # what nn.Conv2d does under autocast ...
    assert y_ext.dtype == y_ref.dtype  # ... conv_ext does too
    assert y_ext.is_contiguous(memory_format=layout)
    torch.testing.assert_close(y_ext.float(), y_ref.float(), rtol=0, atol=3e-2 if amp_dtype == torch.bfloat16 else 5e-3)
    # gradients reach the float32 parameters and input in float32, as with nn.Conv2d
    g = torch.randn_like(y_ref)
    ref_grads = torch.autograd.grad(y_ref, (x_ref, ref.weight, ref.bias), g)
    ext_grads = torch.autograd.grad(y_ext, (x_ext, ext.weight, ext.bias), g)
    for a, b in zip(ext_grads, ref_grads):
        assert a.dtype == b.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=0, atol=0.1 * b.abs().max().item())


def test_autocast_disabled_region_runs_in_float32():
    ref, ext = pair(3, 4, 3)
    x = torch.randn(1, 3, 6, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with torch.autocast("cpu", enabled=False):
            y_ref, y_ext = ref(x), ext(x)
    assert y_ext.dtype == y_ref.dtype == torch.float32
    torch.testing.assert_close(y_ext, y_ref)


def test_autocast_leaves_float64_alone():
    torch.manual_seed(0)
    ref = nn.Conv2d(3, 4, 3).double()
    ext = conv_ext.Conv2d.from_conv(ref)
    x = torch.randn(1, 3, 6, 6, dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_ref, y_ext = ref(x), ext(x)
    assert y_ref.dtype == torch.float64
    assert y_ext.dtype == torch.float64


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
@pytest.mark.parametrize("amp_dtype", [torch.float16, torch.bfloat16])
def test_autocast_cuda_matches_nn_conv2d(amp_dtype):
    ref, ext = pair(16, 32, 3, padding=1, bias=True)
    ref, ext = ref.cuda(), conv_ext.Conv2d.from_conv(ref.cuda())
    x = torch.randn(4, 16, 14, 14, device="cuda")
    with torch.autocast("cuda", dtype=amp_dtype):
        y_ref, y_ext = ref(x), ext(x)
    assert y_ext.dtype == y_ref.dtype == amp_dtype
    torch.testing.assert_close(y_ext.float(), y_ref.float(), rtol=0, atol=2e-2 * y_ref.abs().max().item())
    (y_ext.float().sum()).backward()
    assert ext.weight.grad.dtype == torch.float32


# ---------------------------------------------------------------------------------------------
# DistributedDataParallel: two gloo processes == one process with the same global batch
# ---------------------------------------------------------------------------------------------
STEPS, GLOBAL_BATCH, LR = 3, 8, 0.1


class SmallNet(nn.Module):
    """No batch norm on purpose: with it each process would normalise with its half batch's
    statistics, and DDP would not equal single-process training by design."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=2, bias=False)
        self.conv3 = nn.Conv2d(16, 16, 1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.relu(self.conv3(x))
        return self.fc(x.mean((2, 3)))


def _ddp_data():
    gen = torch.Generator().manual_seed(1)
    xs = torch.randn(STEPS, GLOBAL_BATCH, 3, 12, 12, generator=gen)
    ys = torch.randint(0, 10, (STEPS, GLOBAL_BATCH), generator=gen)
    return xs, ys


def _new_model():
    torch.manual_seed(0)
    return conv_ext.convert(SmallNet())


def _train(model, xs, ys):
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    for x, y in zip(xs, ys):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()


def _ddp_worker(rank, world, store_path, out_path):
    torch.set_num_threads(1)
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=world)
    try:
        model = _new_model()
        assert isinstance(model.conv1, conv_ext.Conv2d)
        ddp = nn.parallel.DistributedDataParallel(model)
        xs, ys = _ddp_data()
        shard = GLOBAL_BATCH // world
        _train(ddp, xs[:, rank * shard:(rank + 1) * shard], ys[:, rank * shard:(rank + 1) * shard])
        if rank == 0:
            torch.save(model.state_dict(), out_path)
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_two_processes_match_single_process(tmp_path):
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    world, out = 2, tmp_path / "ddp_state.pt"
    procs = [ctx.Process(target=_ddp_worker, args=(r, world, str(tmp_path / "store"), str(out))) for r in range(world)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + 180
    for p in procs:
        p.join(max(1.0, deadline - time.monotonic()))
    alive = [p for p in procs if p.is_alive()]
    for p in alive:
        p.kill()
    assert not alive, "DDP workers did not finish within 180 s"
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]

    single = _new_model()
    _train(single, *_ddp_data())
    ddp_state = torch.load(out)
    initial = _new_model().state_dict()
    for name, value in single.state_dict().items():
        assert not torch.equal(value, initial[name]), f"{name} did not train"
        torch.testing.assert_close(ddp_state[name], value, rtol=1e-5, atol=1e-6, msg=lambda m: f"{name}: {m}")


# ---------------------------------------------------------------------------------------------
# torch.compile
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_compile_converted_resnet18_has_no_graph_breaks():
    import torch._dynamo

    torch.manual_seed(0)
    model = conv_ext.convert(models.resnet18(num_classes=10, width=8))
    assert sum(isinstance(m, conv_ext.Conv2d) for m in model.modules()) == 20
    x = torch.randn(2, 3, 32, 32)

    torch._dynamo.reset()
    explanation = torch._dynamo.explain(model)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1

    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    # backward before the next forward: batch norm's running stats (saved for backward) change
    y_eager = model(x1)
    y_eager.sum().backward()
    grad_eager = model.conv1.weight.grad.clone()
    model.zero_grad()
    y_comp = compiled(x2)
    y_comp.sum().backward()
    torch.testing.assert_close(y_comp, y_eager)
    torch.testing.assert_close(x2.grad, x1.grad)
    torch.testing.assert_close(model.conv1.weight.grad, grad_eager)
    torch._dynamo.reset()


def test_cpu_output_cache_reuses_freed_outputs():
    """Outputs of >= 1 MiB come from conv_ext's CPU output cache (a fresh mmap pays a page
    fault per 4 KiB on first touch): a freed output is reused for the next one of its size,
    the values are the same as torch's, the output stays an ordinary resizable tensor, and
    empty_cache() gives the blocks back."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 64, 64, generator=g)
    w = torch.randn(64, 8, 3, 3, generator=g)  # y: 2x64x64x64 floats = 2 MiB
    conv_ext.empty_cache()
    y = conv_ext.conv2d(x, w, padding=1)
    ptr = y.data_ptr()
    torch.testing.assert_close(y, torch.nn.functional.conv2d(x, w, padding=1), rtol=1e-4, atol=1e-4)
    del y
    assert conv_ext.info()["cpu_cached_bytes"] >= 2 << 20
    y = conv_ext.conv2d(x, w, padding=1)
    assert y.data_ptr() == ptr and conv_ext.info()["cpu_cached_bytes"] == 0
    torch.testing.assert_close(y, torch.nn.functional.conv2d(x, w, padding=1), rtol=1e-4, atol=1e-4)
    y.resize_(3, 64, 64, 64)  # grows through the same allocator
    y.fill_(1.0)
    assert y.sum().item() == 3 * 64 * 64 * 64
    del y
    conv_ext.empty_cache()
    assert conv_ext.info()["cpu_cached_bytes"] == 0


def test_cpu_output_cache_can_be_turned_off():
    code = (
        "import torch, conv_ext\n"
        "x = torch.randn(2, 8, 64, 64); w = torch.randn(64, 8, 3, 3)\n"
        "y = conv_ext.conv2d(x, w, padding=1); del y\n"
        "assert conv_ext.info()['cpu_cached_bytes'] == 0\n"
    )
    env = dict(os.environ, CONV_EXT_CPU_CACHE_MB="0")
    subprocess.run([sys.executable, "-c", code], env=env, check=True)


# ---------------------------------------------------------------------------------------------
# export: torch.export keeps conv_ext's op; ONNX (both exporters) writes it as ONNX's Conv
# ---------------------------------------------------------------------------------------------
def _export_pair():
    import copy

    torch.manual_seed(0)
    ref = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(8, 4, (3, 2), stride=(2, 1), dilation=(1, 2), padding=(1, 0), groups=2, bias=False),
                        nn.Conv2d(4, 4, 3, padding="same", padding_mode="reflect")).eval()
    return ref, conv_ext.convert(copy.deepcopy(ref)).eval(), torch.randn(2, 3, 16, 16)


def test_torch_export_keeps_our_op():
    ref, ours, x = _export_pair()
    ep = torch.export.export(ours, (x,)).run_decompositions()
    targets = [str(n.target) for n in ep.graph.nodes if n.op == "call_function"]
    assert targets.count("conv_ext.conv2d_forward.default") == 3 and not any("convolution" in t for t in targets)
    torch.testing.assert_close(ep.module()(x), ref(x))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("dynamo", [True, False])
def test_onnx_export_runs_in_onnxruntime(dynamo, tmp_path):
    for module in ("onnx", "onnxruntime") + (("onnxscript",) if dynamo else ()):
        pytest.importorskip(module)
    import onnx
    import onnxruntime

    ref, ours, x = _export_pair()
    path = str(tmp_path / "model.onnx")
    torch.onnx.export(ours, (x,), path, dynamo=dynamo)
    assert [n.op_type for n in onnx.load(path).graph.node].count("Conv") == 3
    session = onnxruntime.InferenceSession(path)
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    torch.testing.assert_close(torch.from_numpy(out), ref(x), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# torch.fx and torch.nn.utils: the tools that rewrite or wrap a model's convolutions
# ---------------------------------------------------------------------------------------------
def _model_pair():
    import copy

    torch.manual_seed(0)
    ref = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, padding_mode="reflect"), nn.ReLU(),
                        nn.Conv2d(8, 4, 3, stride=2, groups=2, bias=False), nn.Conv2d(4, 4, 3, padding="same"))
    return ref, conv_ext.convert(copy.deepcopy(ref))


def _same_values_and_grads(ref_fn, ext_fn, ref_params, ext_params, x):
    # .backward(), not autograd.grad: reentrant checkpointing takes only the former
    xr, xe = x.clone().requires_grad_(), x.clone().requires_grad_()
    yr, ye = ref_fn(xr), ext_fn(xe)
    torch.testing.assert_close(ye, yr)
    gy = torch.randn_like(yr)
    for p in ref_params + ext_params:
        p.grad = None
    yr.backward(gy), ye.backward(gy)
    for a, b in zip([xe, *ext_params], [xr, *ref_params]):
        assert a.grad is not None
        torch.testing.assert_close(a.grad, b.grad)


def test_fx_symbolic_trace_records_conv_ext_conv2d():
    # fx traces through conv_ext.Conv2d (a module outside torch.nn is not a leaf) and records
    # conv_ext.conv2d as one call_function node, as it records F.conv2d
    ref, ours = _model_pair()
    gm = torch.fx.symbolic_trace(ours)
    calls = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert calls.count(conv_ext.conv2d) == 3 and F.pad in calls
    for x in (torch.randn(2, 3, 11, 9), torch.randn(3, 10, 10)):  # batched and unbatched
        _same_values_and_grads(ref, gm, list(ref.parameters()), list(ours.parameters()), x)
    # and a traced model's conv_ext nodes can be rewritten as graph passes do: back to F.conv2d
    for n in gm.graph.nodes:
        if n.target is conv_ext.conv2d:
            n.target = F.conv2d
    gm.recompile()
    x = torch.randn(2, 3, 11, 9)
    torch.testing.assert_close(gm(x), ref(x))


def test_weight_and_spectral_norm_parametrizations():
    ref, ours = _model_pair()
    for m in (ref, ours):
        torch.nn.utils.parametrizations.weight_norm(m[0])
        torch.nn.utils.parametrizations.spectral_norm(m[2], n_power_iterations=3)
    for m in (ref, ours):
        m.eval()  # spectral norm's power iteration runs in training mode only
    for name in ("_u", "_v"):  # the same starting vectors
        getattr(ours[2].parametrizations.weight[0], name).copy_(getattr(ref[2].parametrizations.weight[0], name))
    _same_values_and_grads(ref, ours, list(ref.parameters()), list(ours.parameters()), torch.randn(2, 3, 11, 9))


@pytest.mark.parametrize("reentrant", [False, True])
def test_activation_checkpointing(reentrant):
    from torch.utils.checkpoint import checkpoint

    ref, ours = _model_pair()
    _same_values_and_grads(ref, lambda x: checkpoint(ours, x, use_reentrant=reentrant), list(ref.parameters()),
                           list(ours.parameters()), torch.randn(2, 3, 11, 9))


def test_full_backward_hooks_see_torchs_gradients():
    ref, ours = pair(3, 8, 3, padding=1)
    seen = {}
    for name, m in (("ref", ref), ("ours", ours)):
        m.register_full_backward_pre_hook(lambda mod, go, name=name: seen.setdefault(name, []).append(go[0]))
        m.register_full_backward_hook(lambda mod, gi, go, name=name: seen[name].extend([gi[0], go[0]]))
    x = torch.randn(2, 3, 7, 7)
    for m in (ref, ours):
        torch.manual_seed(2)
        m(x.clone().requires_grad_()).exp().sum().backward()
    assert len(seen["ours"]) == len(seen["ref"]) == 3
    for a, b in zip(seen["ours"], seen["ref"]):
        torch.testing.assert_close(a, b)


def test_pruning_fusion_and_functional_call():
    import torch.nn.utils.prune as prune
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    x = torch.randn(2, 3, 9, 9)
    ref, ours = pair(3, 8, 3, padding=1)
    prune.l1_unstructured(ours, "weight", amount=0.5)  # forward pre-hook: weight = orig * mask
    torch.testing.assert_close(ours(x), F.conv2d(x, ours.weight, ours.bias, padding=1))
    prune.remove(ours, "weight")
    assert (ours.weight == 0).sum() == ours.weight.numel() // 2

    ref, ours = pair(3, 8, 3, padding=1)
    bn = nn.BatchNorm2d(8).eval()
    bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.weight.data.uniform_(0.5, 2)
    fused = fuse_conv_bn_eval(ours.eval(), bn)
    assert type(fused) is conv_ext.Conv2d
    torch.testing.assert_close(fused(x), bn(ref.eval()(x)))

    params = {k: torch.randn_like(v) for k, v in ours.named_parameters()}
    torch.testing.assert_close(torch.func.functional_call(ours, params, (x,)),
                               F.conv2d(x, params["weight"], params["bias"], padding=1))


def test_meta_device_module_then_to_empty():
    ours = conv_ext.Conv2d(3, 8, 3, stride=2, device="meta")
    y = ours(torch.empty(2, 3, 9, 9, device="meta"))
    assert y.device.type == "meta" and y.shape == (2, 8, 4, 4)
    ours = ours.to_empty(device="cpu")
    ours.reset_parameters()
    x = torch.randn(2, 3, 9, 9)
    torch.testing.assert_close(ours(x), F.conv2d(x, ours.weight, ours.bias, stride=2))
