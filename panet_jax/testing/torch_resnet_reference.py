"""Plain-PyTorch torchvision-style bottleneck ResNet-50/101, for comparisons with
:class:`panet_jax.models.resnet.ResNetEncoder`.

Restates torchvision's ``models/resnet.py`` (pytorch/vision: ``Bottleneck`` v1.5 with the
stride on ``conv2``, ``ResNet._make_layer`` with ``downsample = Sequential(conv1x1, BN)``), so
the state-dict keys are torchvision's exactly: ``conv1``, ``bn1``, ``layer1.0.conv1``, ...,
``layer1.0.downsample.0/1``, ``layer4.*``, ``fc``. No torchvision: it is not installable beside
the CPU torch wheel here.

Differences from torchvision, as in the encoder: ``layer3`` has stride 1 and dilation 2 in
every 3x3 conv (CANet / PFENet style), and :meth:`ResNet.forward` returns the ``layer3``
features (``layer4``, ``avgpool`` and ``fc`` only exist so that the state dict is complete);
a ``width`` multiplier shrinks the channels with the encoder's rounding. Use it in ``eval()``.
"""

from __future__ import annotations

import torch
from torch import nn

BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
EXPANSION = 4


def scaled_channels(channels: int, width: float) -> int:
    """Channel count under a width multiplier (at least 1); mirrors ``vgg.scaled_channels``."""
    return max(1, round(channels * width))


class Bottleneck(nn.Module):
    """torchvision ``Bottleneck``: 1x1, 3x3 (stride, dilation), 1x1 (x4), identity add."""

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(
            planes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False
        )
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * EXPANSION, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * EXPANSION)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)


class ResNet(nn.Module):
    """torchvision ``ResNet`` with ``Bottleneck`` blocks; ``forward`` gives ``layer3``."""

    def __init__(self, depth: int = 50, width: float = 1.0, num_classes: int = 1000) -> None:
        super().__init__()
        blocks = BLOCKS[depth]
        self.inplanes = scaled_channels(64, width)
        self.conv1 = nn.Conv2d(3, self.inplanes, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(scaled_channels(64, width), blocks[0])
        self.layer2 = self._make_layer(scaled_channels(128, width), blocks[1], stride=2)
        self.layer3 = self._make_layer(scaled_channels(256, width), blocks[2], dilation=2)
        self.layer4 = self._make_layer(scaled_channels(512, width), blocks[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(self.inplanes, num_classes)
        for m in self.modules():  # torchvision's init
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(
        self, planes: int, blocks: int, stride: int = 1, dilation: int = 1
    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * EXPANSION:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * EXPANSION, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * EXPANSION),
            )
        layers = [Bottleneck(self.inplanes, planes, stride, downsample, dilation)]
        self.inplanes = planes * EXPANSION
        layers += [Bottleneck(self.inplanes, planes, dilation=dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W] -> [B, 4 * planes3, h, w]``: the ``layer3`` features (output stride 8)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer3(self.layer2(self.layer1(x)))


def randomize_(net: ResNet, seed: int = 0) -> ResNet:
    """Random non-trivial weights and BN statistics (in place, ``no_grad``): He-normal convs,
    BN weight ~ U(0.5, 1.5), bias and running mean ~ N(0, 0.1), running var ~ U(0.5, 2)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.normal_(0.0, (2.0 / fan_in) ** 0.5, generator=g)
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0.0, 0.1, generator=g)
                m.running_mean.normal_(0.0, 0.1, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
                m.num_batches_tracked.fill_(100)
            elif isinstance(m, nn.Linear):
                m.weight.normal_(0.0, 0.01, generator=g)
                m.bias.zero_()
    return net
