"""The CIFAR bottleneck ResNet50, as in RepDistiller's models/resnetv2.py (their ResNet50, a CRD benchmark teacher).

ImageNet ResNet50's four stages of 3/4/6/3 bottlenecks (widths 64/128/256/512, expansion 4) behind a
CIFAR stem: one 3x3 stride-1 conv + BN + ReLU and no max-pool, so a 32x32 input gives 32/16/8/4 maps.
Module names are theirs (the classifier is `linear`; the projection is `shortcut.{0,1}`), so their
checkpoints load with a strict `load_state_dict` and no renaming. Their global pooling is already
adaptive; nothing differs. 16x16 gives a 2x2 last map, 8x8 a 1x1 one; the stride-2 convolutions are
padded, so every size runs, down to 1x1.
"""
from __future__ import annotations

from typing import Union

import torch
from torch import nn

from kd.models.features import Features, staged_features
from kd.models.pooling import GlobalAvgPool
from kd.models.resnet import shortcut

MIN_IMAGE_SIZE = 1
EXPANSION = 4


class Bottleneck(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        out_planes = EXPANSION * planes
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = shortcut(in_planes, out_planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.preact(x))

    def preact(self, x: torch.Tensor) -> torch.Tensor:
        """The block's output before its last ReLU: what their last block of a stage returns as `preact`."""
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out)) + self.shortcut(x)


def _stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    return nn.Sequential(Bottleneck(in_planes, planes, stride),
                         *(Bottleneck(EXPANSION * planes, planes, 1) for _ in range(blocks - 1)))


class ResNet(nn.Module):
    def __init__(self, blocks: tuple[int, int, int, int], num_classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = _stage(64, 64, blocks[0], 1)
        self.layer2 = _stage(EXPANSION * 64, 128, blocks[1], 2)
        self.layer3 = _stage(EXPANSION * 128, 256, blocks[2], 2)
        self.layer4 = _stage(EXPANSION * 256, 512, blocks[3], 2)
        self.pool = GlobalAvgPool()
        self.linear = nn.Linear(EXPANSION * 512, num_classes)  # keeps PyTorch's default init, as theirs
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor, features: bool = False) -> Union[torch.Tensor, tuple[torch.Tensor, Features]]:
        x = torch.relu(self.bn1(self.conv1(x)))
        stages = (self.layer1, self.layer2, self.layer3, self.layer4)
        if not features:
            for stage in stages:
                x = stage(x)
            return self.linear(torch.flatten(self.pool(x), 1))
        x, found = staged_features(x, list(stages))
        pooled = torch.flatten(self.pool(x), 1)
        return self.linear(pooled), found._replace(pooled=pooled)


def resnet50(num_classes: int) -> ResNet:
    return ResNet((3, 4, 6, 3), num_classes)
