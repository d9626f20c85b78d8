"""ResNet-18 and ResNet-50 as in the phase-transition zoos: CIFAR stem, width-scaled, BatchNorm,
no conv bias.

``width`` is the number of channels of the first residual stage; each later stage doubles it
(width, 2w, 4w, 8w). In ResNet-50 ``width`` is the bottleneck width, and each block's output has
4x as many channels. The stem is a 3x3 convolution with stride 1 and no max-pool, so the
network works for any image size down to 8x8 (an adaptive average pool ends it).

Module names (walked by weight-space code): ``conv1``/``bn1`` (stem), ``layer1`` .. ``layer4``
(one ``nn.Sequential`` of blocks each), ``fc``. A block has ``conv1``/``bn1``, ``conv2``/``bn2``
(and ``conv3``/``bn3`` in a bottleneck) and ``shortcut`` (empty, or ``0`` = 1x1 conv, ``1`` = BN).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (1x1 projection when the shape changes)."""

    expansion = 1  # output channels per block = expansion * channels

    def __init__(self, in_channels: int, channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride), 1x1 expand to 4x ``channels``, plus the residual."""

    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int):
        super().__init__()
        out_channels = channels * self.expansion
        self.conv1 = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = nn.Conv2d(channels, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-stem ResNet: ``blocks_per_stage`` blocks of type ``block`` in four stages."""

    def __init__(self, blocks_per_stage: list[int], width: int, num_classes: int, in_channels: int,
                 block: type[BasicBlock] | type[Bottleneck] = BasicBlock):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        stages, channels = [], width
        for index, blocks in enumerate(blocks_per_stage):
            out_channels = width * 2**index
            layers = []
            for position in range(blocks):
                stride = 2 if index > 0 and position == 0 else 1
                layers.append(block(channels, out_channels, stride))
                channels = out_channels * block.expansion
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nn.Linear(channels, num_classes)
        init_kaiming_uniform(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)


def init_kaiming_uniform(model: nn.Module) -> None:
    """The zoos' ``kaiming_uniform`` init: conv and linear weights, zero biases, unit BatchNorm."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_uniform_(module.weight, nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def resnet18(width: int = 64, num_classes: int = 10, in_channels: int = 3) -> ResNet:
    """ResNet-18 with ``width`` channels in the first stage (64 is the standard network)."""
    return ResNet([2, 2, 2, 2], width=width, num_classes=num_classes, in_channels=in_channels)


def resnet50(width: int = 64, num_classes: int = 10, in_channels: int = 3) -> ResNet:
    """ResNet-50 (bottlenecks [3, 4, 6, 3]) with bottleneck width ``width`` in the first stage."""
    return ResNet([3, 4, 6, 3], width=width, num_classes=num_classes, in_channels=in_channels,
                  block=Bottleneck)
