"""Whole networks, nn.Conv2d vs conv_ext.convert, through pytest-benchmark: inference and one SGD
training step (options --models, --image, --batch; see conftest.py)."""
from benchmarks import shapes
from conv_ext.bench import make_model_fns

from .conftest import synchronized


def test_model(benchmark, setting, model_name, model_pass, impl):
    torch_fn, ext_fn, _ = make_model_fns(model_name, model_pass, setting["device"], setting["dtype"], setting["layout"],
                                         setting["batch"] or 4, setting["image"], shapes)
    fn = synchronized(torch_fn if impl == "torch" else ext_fn, setting["device"])
    benchmark.group = f"{model_name} {setting['image']}px {model_pass}"
    fn()
    benchmark.pedantic(fn, rounds=3, warmup_rounds=1)
