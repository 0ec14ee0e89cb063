"""CIFAR ShuffleNetV1 with the shapes of the public CIFAR-100 KD benchmarks: RepDistiller's models/ShuffleNetv1.py.

`shufflev1` is their `ShuffleV1`: 3 groups, a 1x1 stem to 24 channels at full resolution, three stages of
4, 8 and 4 bottlenecks widening to 240, 480 and 960 channels, then the classifier. Module names are theirs
(`conv1`, `bn1`, `layer<k>.<block>.conv<i>/bn<i>`, `linear`), so their checkpoints load with no renaming,
and the weights keep PyTorch's default initialisation, as theirs do. `preact` is each stage's output
before its last ReLU, as their `preact=True` returns it.

Differences: global pooling is adaptive where theirs is F.avg_pool2d(out, 4), the same on 32x32 inputs
(ending at 4x4); 16x16 ends at 2x2, where theirs fails. Each stage halves the size with padded stride-2
3x3 filters, which map 1x1 to 1x1, so 8x8 (ending at 1x1) and smaller inputs run, down to MIN_IMAGE_SIZE.
"""
from __future__ import annotations

from typing import Union

import torch
from torch import nn

from kd.models.features import Features, staged_features
from kd.models.pooling import GlobalAvgPool

MIN_IMAGE_SIZE = 1


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave the channels of `groups` groups, so the next grouped conv sees all of them.

    Written without reading the shape, so it works under vmap and torch.compile alike.
    """
    return x.unflatten(1, (groups, -1)).transpose(1, 2).flatten(1, 2)


class Bottleneck(nn.Module):
    """1x1 group conv, shuffle, 3x3 depthwise, 1x1 group conv, each with BN, and ReLU except the last.

    A stride-2 block concatenates an average-pooled shortcut, so its own branch makes only the channels the
    stage adds; the other blocks add the identity.
    """

    def __init__(self, in_planes: int, planes: int, stride: int, groups: int, first_groups: int) -> None:
        super().__init__()
        mid = planes // 4
        self.first_groups = first_groups
        self.conv1 = nn.Conv2d(in_planes, mid, 1, groups=first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, planes, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(planes)
        self.shortcut = nn.AvgPool2d(3, 2, 1) if stride == 2 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.preact(x))

    def preact(self, x: torch.Tensor) -> torch.Tensor:
        """The block's output before its last ReLU: what their `preact=True` returns for a stage's last block."""
        out = torch.relu(self.bn1(self.conv1(x)))
        out = channel_shuffle(out, self.first_groups)
        out = torch.relu(self.bn2(self.conv2(out)))  # theirs has this ReLU; the ShuffleNet paper does not
        out = self.bn3(self.conv3(out))
        if self.shortcut is None:
            return out + x
        return torch.cat([out, self.shortcut(x)], 1)


class ShuffleNetV1(nn.Module):
    def __init__(self, num_classes: int, widths: tuple[int, int, int], blocks: tuple[int, int, int],
                 groups: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.layer1 = self._stage(24, widths[0], blocks[0], groups, first_groups=1)  # the stem is not grouped
        self.layer2 = self._stage(widths[0], widths[1], blocks[1], groups, first_groups=groups)
        self.layer3 = self._stage(widths[1], widths[2], blocks[2], groups, first_groups=groups)
        self.linear = nn.Linear(widths[2], num_classes)
        self.pool = GlobalAvgPool()

    @staticmethod
    def _stage(in_planes: int, planes: int, blocks: int, groups: int, first_groups: int) -> nn.Sequential:
        layers = [Bottleneck(in_planes, planes - in_planes, 2, groups, first_groups)]
        layers += [Bottleneck(planes, planes, 1, groups, groups) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, features: bool = False) -> Union[torch.Tensor, tuple[torch.Tensor, Features]]:
        x = torch.relu(self.bn1(self.conv1(x)))
        if not features:
            return self.linear(torch.flatten(self.pool(self.layer3(self.layer2(self.layer1(x)))), 1))
        x, found = staged_features(x, [self.layer1, self.layer2, self.layer3])
        pooled = torch.flatten(self.pool(x), 1)
        return self.linear(pooled), found._replace(pooled=pooled)


def shufflev1(num_classes: int) -> ShuffleNetV1:
    """RepDistiller's `ShuffleV1`."""
    return ShuffleNetV1(num_classes, widths=(240, 480, 960), blocks=(4, 8, 4), groups=3)
