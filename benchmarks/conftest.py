"""pytest-benchmark runs of the suites in shapes.py: ``pytest benchmarks/ --benchmark-only``.

    pytest benchmarks/ --benchmark-only --suite resnet50 --device cpu --dtype float32 --layout nhwc
    pytest benchmarks/ --benchmark-only --suite tiny --passes forward,all --benchmark-group-by=group

Each case and pass is one benchmark group holding two benchmarks, torch and conv_ext, so the
report sets them side by side. Not part of the normal test run (pytest's testpaths is tests/).
The same problems and callables as ``python -m conv_ext.bench`` (conv_ext.bench.make_case_fns).
"""
import pytest
import torch

from conv_ext.bench import DTYPES, MODEL_PASSES, PASSES


def pytest_addoption(parser):
    group = parser.getgroup("conv_ext benchmarks")
    group.addoption("--suite", default="default", help="suite from benchmarks/shapes.py")
    group.addoption("--device", default="auto", choices=["auto", "cpu", "cuda"])
    group.addoption("--dtype", default="float32", choices=sorted(DTYPES))
    group.addoption("--layout", default="nchw", choices=["nchw", "nhwc"])
    group.addoption("--batch", type=int, default=None, help="batch size of every case (default: the suite's)")
    group.addoption("--passes", default="forward,backward_input,backward_weight", help=",".join(PASSES))
    group.addoption("--models", default="resnet18,mobilenet_v2", help="networks for test_models.py")
    group.addoption("--image", type=int, default=64, help="image size for test_models.py")


def bench_device(config):
    import conv_ext

    device = config.getoption("--device")
    gpu = torch.cuda.is_available() and conv_ext.info()["cuda_available"]
    if device == "auto":
        return "cuda" if gpu else "cpu"
    if device == "cuda" and not gpu:
        raise pytest.UsageError("--device cuda: no CUDA device, or conv_ext was built without its CUDA kernels")
    return device


def pytest_generate_tests(metafunc):
    from benchmarks import shapes

    config = metafunc.config
    if "case" in metafunc.fixturenames:
        cases = shapes.get_suite(config.getoption("--suite"), config.getoption("--batch"))
        metafunc.parametrize("case", cases, ids=[c.name for c in cases])
    if "pass_name" in metafunc.fixturenames:
        passes = [p for p in config.getoption("--passes").split(",") if p]
        metafunc.parametrize("pass_name", passes)
    if "model_name" in metafunc.fixturenames:
        metafunc.parametrize("model_name", [m for m in config.getoption("--models").split(",") if m])
    if "model_pass" in metafunc.fixturenames:
        metafunc.parametrize("model_pass", MODEL_PASSES)
    if "impl" in metafunc.fixturenames:
        metafunc.parametrize("impl", ["torch", "conv_ext"])


@pytest.fixture
def setting(request):
    config = request.config
    return {
        "device": bench_device(config),
        "dtype": DTYPES[config.getoption("--dtype")],
        "layout": config.getoption("--layout"),
        "batch": config.getoption("--batch"),
        "image": config.getoption("--image"),
    }


def synchronized(fn, device):
    """The timed function: on GPU it waits for the kernels, so the time is the work's, not the launch's."""
    if device != "cuda":
        return fn

    def run():
        out = fn()
        torch.cuda.synchronize()
        return out

    return run
