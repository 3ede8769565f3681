"""conv_ext vs torch per layer, through pytest-benchmark (options: see conftest.py)."""
import conv_ext  # noqa: F401
from conv_ext.bench import make_case_fns

from .conftest import synchronized


def test_conv(benchmark, setting, case, pass_name, impl):
    torch_fn, ext_fn, _ = make_case_fns(case, pass_name, setting["device"], setting["dtype"], setting["layout"])
    fn = synchronized(torch_fn if impl == "torch" else ext_fn, setting["device"])
    benchmark.group = f"{case.name} [{case.describe()}] {pass_name}"
    benchmark.extra_info.update(flops=case.flops() * (3 if pass_name == "all" else 1), impl=impl)
    fn()  # warm-up outside the timing
    benchmark(fn)
