"""CIFAR ShuffleNetV2 with the shapes of the public CIFAR-100 KD benchmarks: RepDistiller's models/ShuffleNetv2.py.

`shufflev2` is their `ShuffleV2` (net_size 1): a 1x1 stem to 24 channels at full resolution, three stages
(a stride-2 down block, then 3, 7 and 3 basic blocks) of 116, 232 and 464 channels, a 1x1 conv to 1024
channels and the classifier. Module names are theirs (`conv1`, `bn1`, `layer<k>.<block>.conv<i>/bn<i>`,
`conv2`, `bn2`, `linear`), so their checkpoints load with no renaming, and the weights keep PyTorch's
default initialisation, as theirs do.

`preact` is as their `preact=True` returns it: the stage's last block's two halves concatenated before the
branch's ReLU and before the channel shuffle, so its channels are not in the order of `feats`.

Differences: global pooling is adaptive where theirs is F.avg_pool2d(out, 4), the same on 32x32 inputs
(ending at 4x4); 16x16 ends at 2x2, where theirs fails. Each stage halves the size with padded stride-2
3x3 filters, which map 1x1 to 1x1, so 8x8 (ending at 1x1) and smaller inputs run, down to MIN_IMAGE_SIZE.
"""
from __future__ import annotations

from typing import Union

import torch
from torch import nn

from kd.models.features import Features
from kd.models.pooling import GlobalAvgPool
from kd.models.shufflenetv1 import channel_shuffle

MIN_IMAGE_SIZE = 1


class BasicBlock(nn.Module):
    """Half the channels pass as they are, the other half go through 1x1, 3x3 depthwise, 1x1; then a shuffle."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.half = channels // 2
        c = self.half
        self.conv1 = nn.Conv2d(c, c, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1, groups=c, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = nn.Conv2d(c, c, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c)

    def _halves(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The untouched half and the branch before its last ReLU."""
        out = torch.relu(self.bn1(self.conv1(x[:, self.half:])))
        out = self.bn2(self.conv2(out))
        return x[:, :self.half], self.bn3(self.conv3(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kept, pre = self._halves(x)
        return channel_shuffle(torch.cat([kept, torch.relu(pre)], 1), 2)

    def with_preact(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The output and their `preact` (unshuffled), for a stage's last block."""
        kept, pre = self._halves(x)
        return channel_shuffle(torch.cat([kept, torch.relu(pre)], 1), 2), torch.cat([kept, pre], 1)


class DownBlock(nn.Module):
    """Two stride-2 branches of half the output channels each, concatenated and shuffled."""

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__()
        mid = channels // 2
        self.conv1 = nn.Conv2d(in_channels, in_channels, 3, 2, 1, groups=in_channels, bias=False)  # left
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(in_channels, mid, 1, bias=False)  # right
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, 3, 2, 1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, 1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = torch.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = self.bn4(self.conv4(torch.relu(self.bn3(self.conv3(x)))))
        right = torch.relu(self.bn5(self.conv5(right)))
        return channel_shuffle(torch.cat([left, right], 1), 2)


class ShuffleNetV2(nn.Module):
    def __init__(self, num_classes: int, widths: tuple[int, int, int, int], blocks: tuple[int, int, int]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.layer1 = self._stage(24, widths[0], blocks[0])
        self.layer2 = self._stage(widths[0], widths[1], blocks[1])
        self.layer3 = self._stage(widths[1], widths[2], blocks[2])
        self.conv2 = nn.Conv2d(widths[2], widths[3], 1, bias=False)
        self.bn2 = nn.BatchNorm2d(widths[3])
        self.linear = nn.Linear(widths[3], num_classes)
        self.pool = GlobalAvgPool()

    @staticmethod
    def _stage(in_channels: int, channels: int, blocks: int) -> nn.Sequential:
        return nn.Sequential(DownBlock(in_channels, channels), *(BasicBlock(channels) for _ in range(blocks)))

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(torch.relu(self.bn2(self.conv2(x)))), 1)

    def forward(self, x: torch.Tensor, features: bool = False) -> Union[torch.Tensor, tuple[torch.Tensor, Features]]:
        x = torch.relu(self.bn1(self.conv1(x)))
        if not features:
            return self.linear(self._head(self.layer3(self.layer2(self.layer1(x)))))
        feats, preact = [x], [x]
        for layer in (self.layer1, self.layer2, self.layer3):
            *body, last = layer
            for block in body:
                x = block(x)
            x, pre = last.with_preact(x)
            feats.append(x)
            preact.append(pre)
        pooled = self._head(x)
        return self.linear(pooled), Features(feats, preact, pooled)


def shufflev2(num_classes: int) -> ShuffleNetV2:
    """RepDistiller's `ShuffleV2` (net_size 1)."""
    return ShuffleNetV2(num_classes, widths=(116, 232, 464, 1024), blocks=(3, 7, 3))
