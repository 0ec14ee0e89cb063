"""CIFAR wide ResNets WRN-d-k, as in RepDistiller's models/wrn.py (the CRD benchmark's teachers and students).

Pre-activation basic blocks (BN-ReLU-conv twice) in three groups of (d - 4) / 6 blocks, widths 16k/32k/64k
after a plain 3x3 stem conv, a final BN-ReLU, global average pooling and `fc`. Module names are theirs, so
their checkpoints load with a strict `load_state_dict` and no renaming. No dropout: their factories leave
dropRate at 0. One difference: pooling is adaptive instead of `avg_pool2d(8)`, the same on 32x32 input (an
8x8 map) and also defined on smaller images: 16x16 gives a 4x4 map, 8x8 a 2x2 one. The stride-2
convolutions are padded, so every size runs, down to 1x1.

As theirs (`is_feat=True`), `feats` are the stem's and each group's raw outputs (a pre-activation network
has no ReLU there), and a stage's `preact` is the next BN applied to its output (`preact=True`): the first
BN of the next group, or the final `bn1`. kd reads it where the network computes it anyway, so it runs
each BN once (theirs runs it a second time, updating its running statistics twice in training).
"""
from __future__ import annotations

import math
from typing import Union

import torch
from torch import nn

from kd.models.features import Features
from kd.models.pooling import GlobalAvgPool

MIN_IMAGE_SIZE = 1


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        # Construction order as theirs, so that one seed gives both the same initial weights.
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False)
        # Theirs projects only where the width changes (it never strides at an unchanged width).
        self.convShortcut = None if in_planes == out_planes else nn.Conv2d(in_planes, out_planes, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.after_bn1(x, self.bn1(x))

    def after_bn1(self, x: torch.Tensor, bn1_x: torch.Tensor) -> torch.Tensor:
        """The block given its input and bn1(input), which the network also reports as the previous stage's preact."""
        act = torch.relu(bn1_x)
        out = self.conv2(torch.relu(self.bn2(self.conv1(act))))
        # A projection reads the activated input, an identity the raw one (as theirs).
        return (x if self.convShortcut is None else self.convShortcut(act)) + out


class NetworkBlock(nn.Module):
    """A group of blocks; it exists so that parameter names read `block1.layer.0...` as in their checkpoints."""

    def __init__(self, blocks: int, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.layer = nn.Sequential(BasicBlock(in_planes, out_planes, stride),
                                   *(BasicBlock(out_planes, out_planes, 1) for _ in range(blocks - 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    def __init__(self, depth: int, widen_factor: int, num_classes: int) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"wide ResNet depth must be 6n+4 with n >= 1, got {depth}")
        blocks = (depth - 4) // 6
        widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.block1 = NetworkBlock(blocks, widths[0], widths[1], 1)
        self.block2 = NetworkBlock(blocks, widths[1], widths[2], 2)
        self.block3 = NetworkBlock(blocks, widths[2], widths[3], 2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.pool = GlobalAvgPool()
        self.fc = nn.Linear(widths[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels  # He init in their arithmetic: same bits
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)  # the weight keeps PyTorch's default, as theirs

    def forward(self, x: torch.Tensor, features: bool = False) -> Union[torch.Tensor, tuple[torch.Tensor, Features]]:
        x = self.conv1(x)
        if not features:
            x = self.block3(self.block2(self.block1(x)))
            return self.fc(torch.flatten(self.pool(torch.relu(self.bn1(x))), 1))
        feats, preact = [x], [x]
        x = self.block1(x)
        for group in (self.block2, self.block3):
            first, *rest = group.layer
            pre = first.bn1(x)
            feats.append(x)
            preact.append(pre)
            x = first.after_bn1(x, pre)
            for block in rest:
                x = block(x)
        pre = self.bn1(x)
        feats.append(x)
        preact.append(pre)
        pooled = torch.flatten(self.pool(torch.relu(pre)), 1)
        return self.fc(pooled), Features(feats, preact, pooled)


def wrn_16_1(num_classes: int) -> WideResNet:
    return WideResNet(16, 1, num_classes)


def wrn_16_2(num_classes: int) -> WideResNet:
    return WideResNet(16, 2, num_classes)


def wrn_40_1(num_classes: int) -> WideResNet:
    return WideResNet(40, 1, num_classes)


def wrn_40_2(num_classes: int) -> WideResNet:
    return WideResNet(40, 2, num_classes)
