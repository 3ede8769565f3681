"""The networks the benchmarks measure, defined here so that nothing needs torchvision.

ResNet-18/50 (He et al. 2015, the torchvision "v1.5" variant: stride on the 3x3 of a bottleneck),
MobileNetV2 (Sandler et al. 2018: inverted residuals with depthwise 3x3) and the VGG-16 feature
extractor. Each takes ``width`` (channels of the first stage; the paper's value is the default)
and ``num_classes``, so tests can build small copies with the same structure.

The benchmark suites in ``shapes.py`` are read off these definitions (every distinct conv layer),
so a layer list and the model it came from cannot disagree.
"""
import functools
from typing import List, Optional

import torch
from torch import nn

__all__ = ["ResNet", "resnet18", "resnet50", "resnext50_32x4d", "MobileNetV2", "mobilenet_v2", "vgg16", "cifar_resnet20", "MODELS"]


# ---------------------------------------------------------------------------------------------
# ResNet
# ---------------------------------------------------------------------------------------------
def conv3x3(c_in: int, c_out: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, groups=groups, bias=False)


def conv1x1(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs (ResNet-18/34); ``stride`` on the first."""

    expansion = 1

    def __init__(self, c_in: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv3x3(c_in, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: Optional[nn.Module] = None
        if stride != 1 or c_in != planes:
            self.downsample = nn.Sequential(conv1x1(c_in, planes, stride), nn.BatchNorm2d(planes))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (``stride`` here, as torchvision), 1x1 expand x4 (ResNet-50/101/152).
    ResNeXt: the 3x3 is grouped, ``groups`` of ``width_per_group`` channels (32 x 4 in the first
    stage of ResNeXt-50 32x4d: 128 channels where ResNet-50 has 64)."""

    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int = 1, groups: int = 1, width_per_group: int = 64):
        super().__init__()
        c_out = planes * self.expansion
        width = planes * width_per_group // 64 * groups
        self.conv1 = conv1x1(c_in, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride, groups)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, c_out)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: Optional[nn.Module] = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(conv1x1(c_in, c_out, stride), nn.BatchNorm2d(c_out))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """ImageNet ResNet: 7x7/2 stem, 3x3/2 max-pool, four stages (the first of stages 2-4 strided),
    global average pool, linear classifier."""

    def __init__(self, block, layers: List[int], num_classes: int = 1000, width: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        c_in, stages = width, []
        for i, blocks in enumerate(layers):
            planes = width * 2**i
            stage = []
            for b in range(blocks):
                stage.append(block(c_in, planes, stride=2 if (i > 0 and b == 0) else 1))
                c_in = planes * block.expansion
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(num_classes: int = 1000, width: int = 64) -> ResNet:
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, width)


def resnet50(num_classes: int = 1000, width: int = 64) -> ResNet:
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes, width)


def resnext50_32x4d(num_classes: int = 1000, width: int = 64) -> ResNet:
    block = functools.partial(Bottleneck, groups=32, width_per_group=4)
    block.expansion = Bottleneck.expansion
    return ResNet(block, [3, 4, 6, 3], num_classes, width)


class CifarResNet(nn.Module):
    """ResNet-20 for 32x32 images (He et al. 2015, section 4.2): 3x3 stem, three stages of
    BasicBlocks at 16/32/64 channels; 1x1 strided convs on the shortcut when the shape changes."""

    def __init__(self, blocks: int = 3, num_classes: int = 10, width: int = 16):
        super().__init__()
        self.conv1 = conv3x3(3, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        c_in, stages = width, []
        for i in range(3):
            planes = width * 2**i
            stage = []
            for b in range(blocks):
                stage.append(BasicBlock(c_in, planes, stride=2 if (i > 0 and b == 0) else 1))
                c_in = planes
            stages.append(nn.Sequential(*stage))
        self.layers = nn.Sequential(*stages)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x):
        x = self.layers(self.relu(self.bn1(self.conv1(x))))
        return self.fc(x.mean((2, 3)))


def cifar_resnet20(num_classes: int = 10, width: int = 16) -> CifarResNet:
    return CifarResNet(3, num_classes, width)


# ---------------------------------------------------------------------------------------------
# MobileNetV2
# ---------------------------------------------------------------------------------------------
def _make_divisible(v: float, divisor: int = 8) -> int:
    """Channel counts rounded to a multiple of 8, never more than 10% below ``v`` (the paper's rule)."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


def conv_bn_relu6(c_in: int, c_out: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """1x1 expand (x ``expand``), 3x3 depthwise (``stride``), 1x1 linear projection; a residual
    connection when the shape is unchanged."""

    def __init__(self, c_in: int, c_out: int, stride: int, expand: int):
        super().__init__()
        hidden = c_in * expand
        layers = [] if expand == 1 else [conv_bn_relu6(c_in, hidden, 1)]
        layers += [
            conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),  # depthwise
            nn.Conv2d(hidden, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
        ]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x):
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2(nn.Module):
    # (expansion t, output channels c, repeats n, first stride s), as in the paper's Table 2
    SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0):
        super().__init__()
        c_in = _make_divisible(32 * width_mult)
        last = _make_divisible(1280 * max(1.0, width_mult))
        features = [conv_bn_relu6(3, c_in, 3, 2)]
        for t, c, n, s in self.SETTINGS:
            c_out = _make_divisible(c * width_mult)
            for i in range(n):
                features.append(InvertedResidual(c_in, c_out, s if i == 0 else 1, t))
                c_in = c_out
        features.append(conv_bn_relu6(c_in, last, 1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))
        for m in self.modules():  # the reference implementation's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.classifier(self.features(x).mean((2, 3)))


def mobilenet_v2(num_classes: int = 1000, width_mult: float = 1.0) -> MobileNetV2:
    return MobileNetV2(num_classes, width_mult)


# ---------------------------------------------------------------------------------------------
# VGG-16 (configuration D), with batch norm after every conv
# ---------------------------------------------------------------------------------------------
class VGG(nn.Module):
    CFG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]

    def __init__(self, num_classes: int = 1000, width: int = 64):
        super().__init__()
        layers, c_in = [], 3
        for v in self.CFG16:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                c_out = v * width // 64
                layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
                c_in = c_out
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c_in, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x).mean((2, 3)))


def vgg16(num_classes: int = 1000, width: int = 64) -> VGG:
    return VGG(num_classes, width)


# name -> (constructor, the input image size it is measured at)
MODELS = {
    "resnet18": (resnet18, 224),
    "resnet50": (resnet50, 224),
    "resnext50_32x4d": (resnext50_32x4d, 224),
    "mobilenet_v2": (mobilenet_v2, 224),
    "vgg16": (vgg16, 224),
    "cifar_resnet20": (cifar_resnet20, 32),
}
