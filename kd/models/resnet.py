"""CIFAR ResNets with the shapes of the public CIFAR-100 KD benchmarks (RepDistiller).

Basic blocks, a 1x1 conv + BN projection where a block changes shape, three stages
after a 3x3 stem. Depth 6n+2; widths 16/16/32/64, or 32/64/128/256 for the "x4" nets.
Global average pooling is adaptive so smaller inputs (the 16x16 digits) work too;
on 32x32 CIFAR it is exactly RepDistiller's AvgPool2d(8).
"""
from __future__ import annotations

from typing import Union

import torch
from torch import nn

from kd.models.features import Features, staged_features
from kd.models.pooling import GlobalAvgPool


def shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Module:
    """A residual block's skip path: identity, or a 1x1 conv + BN projection where the block changes shape."""
    if stride == 1 and in_planes == out_planes:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride, bias=False), nn.BatchNorm2d(out_planes))


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = shortcut(in_planes, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.preact(x))

    def preact(self, x: torch.Tensor) -> torch.Tensor:
        """The block's output before its last ReLU: what RepDistiller's feature methods read as `preact`."""
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return out + self.shortcut(x)


class CifarResNet(nn.Module):
    def __init__(self, depth: int, widths: tuple[int, int, int, int], num_classes: int) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        blocks = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        layers, in_planes = [], widths[0]
        for stage, planes in enumerate(widths[1:]):
            for i in range(blocks):
                stride = 2 if stage > 0 and i == 0 else 1
                layers.append(BasicBlock(in_planes, planes, stride))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.blocks_per_stage = blocks
        self.pool = GlobalAvgPool()
        self.fc = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor, features: bool = False) -> Union[torch.Tensor, tuple[torch.Tensor, Features]]:
        x = torch.relu(self.bn1(self.conv1(x)))
        if not features:
            return self.fc(torch.flatten(self.pool(self.layers(x)), 1))
        n = self.blocks_per_stage
        x, found = staged_features(x, [self.layers[i * n:(i + 1) * n] for i in range(3)])
        pooled = torch.flatten(self.pool(x), 1)
        return self.fc(pooled), found._replace(pooled=pooled)


_NARROW = (16, 16, 32, 64)
_WIDE = (32, 64, 128, 256)


def resnet8(num_classes: int) -> CifarResNet:
    return CifarResNet(8, _NARROW, num_classes)


def resnet14(num_classes: int) -> CifarResNet:
    return CifarResNet(14, _NARROW, num_classes)


def resnet20(num_classes: int) -> CifarResNet:
    return CifarResNet(20, _NARROW, num_classes)


def resnet32(num_classes: int) -> CifarResNet:
    return CifarResNet(32, _NARROW, num_classes)


def resnet44(num_classes: int) -> CifarResNet:
    return CifarResNet(44, _NARROW, num_classes)


def resnet56(num_classes: int) -> CifarResNet:
    return CifarResNet(56, _NARROW, num_classes)


def resnet110(num_classes: int) -> CifarResNet:
    return CifarResNet(110, _NARROW, num_classes)


def resnet8x4(num_classes: int) -> CifarResNet:
    return CifarResNet(8, _WIDE, num_classes)


def resnet32x4(num_classes: int) -> CifarResNet:
    return CifarResNet(32, _WIDE, num_classes)
