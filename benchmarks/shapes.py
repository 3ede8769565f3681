"""Benchmark suites: named lists of conv2d problems, defined here and nowhere else.

    resnet50      every distinct conv layer of ResNet-50 at 224x224 (23 layers)
    mobilenet_v2  every distinct conv layer of MobileNetV2 at 224x224, depthwise 3x3 included
    vgg16         every distinct conv layer of VGG-16 at 224x224
    stem          the first layer of common networks (3 input channels, large images)
    tiny          the (1, 3, 8, 8) -> 16 layer of the README and CIFAR-sized (32x32) layers
    default       a mix of the above, sized to run in under 3 minutes on a 2-core CPU

The model suites are read off the definitions in ``models.py`` by tracing the model on the meta
device (no memory, no compute) and keeping each distinct layer once, with ``count`` = how many
times it occurs. A case's ``n`` is its default batch; the CLI's ``--batch`` replaces it.

Used by ``python -m conv_ext.bench`` (which imports this file from the source tree) and by the
pytest-benchmark files beside it.
"""
import dataclasses
from typing import Dict, List, Tuple

import torch
from torch import nn

try:  # imported as the package `benchmarks` (the CLI, pytest) or as a plain file beside models.py
    from . import models
except ImportError:  # pragma: no cover
    import models  # type: ignore


@dataclasses.dataclass(frozen=True)
class Case:
    """One conv2d problem: input (n, c, h, w), weight (k, c/groups, r, s)."""

    name: str
    n: int
    c: int
    h: int
    w: int
    k: int
    r: int
    s: int
    stride: Tuple[int, int] = (1, 1)
    padding: Tuple[int, int] = (0, 0)
    dilation: Tuple[int, int] = (1, 1)
    groups: int = 1
    bias: bool = False
    count: int = 1  # how many times the layer occurs in its network

    @property
    def out_hw(self) -> Tuple[int, int]:
        p = (self.h + 2 * self.padding[0] - self.dilation[0] * (self.r - 1) - 1) // self.stride[0] + 1
        q = (self.w + 2 * self.padding[1] - self.dilation[1] * (self.s - 1) - 1) // self.stride[1] + 1
        return p, q

    def flops(self) -> int:
        """Floating-point operations of one pass (forward, backward-input or backward-weight):
        2 * N*K*P*Q * (C/groups)*R*S (a multiply and an add per weight tap and output)."""
        p, q = self.out_hw
        return 2 * self.n * self.k * p * q * (self.c // self.groups) * self.r * self.s

    def with_batch(self, n: int) -> "Case":
        return dataclasses.replace(self, n=n)

    def describe(self) -> str:
        """'n3x224x224 -> 64 k7x7 s2 p3' style: what a reader needs to recognise the layer."""
        text = f"{self.n}x{self.c}x{self.h}x{self.w} -> {self.k} k{self.r}x{self.s}"
        if self.stride != (1, 1):
            text += f" s{self.stride[0]}" if self.stride[0] == self.stride[1] else f" s{self.stride}"
        if self.padding != (0, 0):
            text += f" p{self.padding[0]}" if self.padding[0] == self.padding[1] else f" p{self.padding}"
        if self.dilation != (1, 1):
            text += f" d{self.dilation[0]}"
        if self.groups != 1:
            text += " dw" if self.groups == self.c == self.k else f" g{self.groups}"
        return text


def _case(name, n, c, hw, k, kernel, stride=1, padding=0, groups=1, bias=False) -> Case:
    return Case(name, n, c, hw, hw, k, kernel, kernel, (stride, stride), (padding, padding), (1, 1), groups, bias)


def distinct_convs(model: nn.Module, image: int, n: int, prefix: str) -> List[Case]:
    """Every distinct nn.Conv2d problem met when ``model`` sees an (n, 3, image, image) input,
    in order of first occurrence, named after the first module that has it."""
    seen: Dict[tuple, Case] = {}

    def hook(module, args, _output, name):
        _, c, h, w = args[0].shape
        case = Case(
            f"{prefix}.{name}", n, c, h, w, module.out_channels, *module.kernel_size, tuple(module.stride),
            tuple(module.padding), tuple(module.dilation), module.groups, module.bias is not None,
        )
        key = dataclasses.astuple(dataclasses.replace(case, name=""))
        if key in seen:
            seen[key] = dataclasses.replace(seen[key], count=seen[key].count + 1)
        else:
            seen[key] = case

    handles = [
        m.register_forward_hook(lambda mod, a, o, name=name: hook(mod, a, o, name))
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d)
    ]
    try:
        with torch.no_grad():
            model.eval()(torch.empty(n, 3, image, image, device="meta"))
    finally:
        for h in handles:
            h.remove()
    return list(seen.values())


def model_suite(model_name: str, n: int) -> List[Case]:
    make, image = models.MODELS[model_name]
    with torch.device("meta"):
        model = make()
    return distinct_convs(model, image, n, model_name)


def tiny(n: int = 8) -> List[Case]:
    return [
        _case("readme.8x8", 1, 3, 8, 16, 3, padding=1),  # the README's (1, 3, 8, 8) -> (1, 16, 8, 8)
        _case("cifar.stem", n, 3, 32, 16, 3, padding=1),
        _case("cifar.16x32", n, 16, 32, 16, 3, padding=1),
        _case("cifar.down32", n, 16, 32, 32, 3, stride=2, padding=1),
        _case("cifar.32x16", n, 32, 16, 32, 3, padding=1),
        _case("cifar.64x8", n, 64, 8, 64, 3, padding=1),
        _case("cifar.shortcut", n, 32, 16, 64, 1, stride=2),
        _case("cifar.dw16", n, 96, 16, 96, 3, padding=1, groups=96),
        _case("cifar.bias", n, 16, 32, 16, 5, padding=2, bias=True),
    ]


def stem(n: int = 8) -> List[Case]:
    return [
        _case("resnet.stem7x7", n, 3, 224, 64, 7, stride=2, padding=3),
        _case("mobilenet.stem3x3", n, 3, 224, 32, 3, stride=2, padding=1),
        _case("vgg.stem3x3", n, 3, 224, 64, 3, padding=1),
        _case("cifar.stem3x3", n, 3, 32, 16, 3, padding=1),
        _case("readme.8x8", 1, 3, 8, 16, 3, padding=1),
    ]


def default(n: int = 4) -> List[Case]:
    """A mix covering the kernels' main regimes: 7x7 stem, 3x3 (plain and strided), 1x1 (plain and
    strided), depthwise 3x3, a grouped conv, bias, odd sizes, and the tiny cases."""
    r50 = {c.name: c for c in model_suite("resnet50", n)}
    mb = {c.name: c for c in model_suite("mobilenet_v2", n)}
    picked = [
        r50["resnet50.conv1"],  # 7x7/2 stem, C=3
        r50["resnet50.layer1.0.conv2"],  # 3x3, 64 ch, 56x56
        r50["resnet50.layer2.0.conv2"],  # 3x3/2
        r50["resnet50.layer3.1.conv2"],  # 3x3, 256 ch, 14x14
        r50["resnet50.layer4.1.conv2"],  # 3x3, 512 ch, 7x7
        r50["resnet50.layer2.0.conv3"],  # 1x1 expand
        r50["resnet50.layer3.0.downsample.0"],  # 1x1/2
        r50["resnet50.layer4.1.conv1"],  # 1x1 reduce, 2048 ch
        mb["mobilenet_v2.features.2.conv.1.0"],  # depthwise 3x3/2, 96 ch
        mb["mobilenet_v2.features.14.conv.1.0"],  # depthwise 3x3/2, 576 ch
        mb["mobilenet_v2.features.15.conv.1.0"],  # depthwise 3x3, 960 ch, 7x7
        _case("grouped.g4", n, 64, 28, 128, 3, padding=1, groups=4),
        _case("odd.bias5x5", n, 24, 27, 40, 5, stride=2, padding=1, bias=True),
    ]
    return picked + tiny(8)


def grouped(n: int = 4) -> List[Case]:
    """ResNeXt-50 (32x4d)'s grouped 3x3 layers: 32 groups of 4, 8, 16 and 32 channels (the first
    block of stages 2-4 strided), and the default suite's g4 layer."""
    return [
        _case("resnext50.layer1.g32", n, 128, 56, 128, 3, padding=1, groups=32),
        _case("resnext50.layer2.0.g32s2", n, 256, 56, 256, 3, stride=2, padding=1, groups=32),
        _case("resnext50.layer2.g32", n, 256, 28, 256, 3, padding=1, groups=32),
        _case("resnext50.layer3.g32", n, 512, 14, 512, 3, padding=1, groups=32),
        _case("resnext50.layer4.g32", n, 1024, 7, 1024, 3, padding=1, groups=32),
        _case("grouped.g4", n, 64, 28, 128, 3, padding=1, groups=4),
    ]


# name -> (builder(n), default batch)
SUITES = {
    "grouped": (grouped, 4),
    "resnet50": (lambda n: model_suite("resnet50", n), 8),
    "mobilenet_v2": (lambda n: model_suite("mobilenet_v2", n), 8),
    "vgg16": (lambda n: model_suite("vgg16", n), 4),
    "stem": (stem, 8),
    "tiny": (tiny, 8),
    "default": (default, 4),
}


def get_suite(name: str, batch: int = None) -> List[Case]:
    """The cases of suite ``name``; ``batch`` replaces every case's batch size when given."""
    if name not in SUITES:
        raise KeyError(f"unknown suite {name!r}; known: {', '.join(SUITES)}")
    build, n = SUITES[name]
    cases = build(n)
    return [c.with_batch(batch) for c in cases] if batch else cases
