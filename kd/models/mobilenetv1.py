"""MobileNetV1 as mdistiller's ImageNet benchmark student (mdistiller/models/imagenet/mobilenetv1.py; the
ResNet50 -> MobileNetV1 pair): 4,231,976 parameters at 1000 classes, as theirs.

A 3x3 stride-2 conv + BN + ReLU stem (32 channels), thirteen depthwise-separable blocks (3x3 depthwise conv +
BN + ReLU, 1x1 conv + BN + ReLU) to 1024 channels at a total stride of 32, global average pooling and a linear
classifier. Module names are theirs (`model.<i>.<j>`, `fc`), so their state dicts load with no renaming, and
weights keep PyTorch's default init, as theirs (it has no init of its own). Their features are the ends of
blocks 3, 5, 11 and 13 (128, 256, 512 and 1024 channels at 56, 28, 14 and 7 on 224x224), after and before
their last ReLU: kd's feats[1:] and preact[1:]; kd adds feats[0], the stem's output (theirs have none), so
that the stages pair one to one with a ResNet's four.

Differences: global pooling is adaptive where theirs is AvgPool2d(7), the same on 224x224 inputs (other sizes
run: padded stride-2 convs map 1x1 to 1x1); their ReLUs are in place, kd's are not (vmap and torch.compile).
"""
from __future__ import annotations

from typing import Union

import torch
from torch import nn

from kd.models.features import Features, staged_features
from kd.models.pooling import GlobalAvgPool

# The depthwise-separable blocks: (output channels, stride of the depthwise conv).
_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
           (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))
_STAGE_ENDS = (3, 5, 11, 13)  # indices in `model` of each stage's last block: their feat1..feat4
STEM_CHANNELS = 32


class DepthwiseSeparable(nn.Sequential):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__(
            nn.Conv2d(in_planes, in_planes, 3, stride, 1, groups=in_planes, bias=False), nn.BatchNorm2d(in_planes),
            nn.ReLU(),
            nn.Conv2d(in_planes, planes, 1, bias=False), nn.BatchNorm2d(planes), nn.ReLU(),
        )

    def preact(self, x: torch.Tensor) -> torch.Tensor:
        """The block's output before its last ReLU: their preact feature."""
        for layer in list(self)[:-1]:
            x = layer(x)
        return x


class MobileNetV1(nn.Module):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        stem = nn.Sequential(nn.Conv2d(3, STEM_CHANNELS, 3, 2, 1, bias=False), nn.BatchNorm2d(STEM_CHANNELS),
                             nn.ReLU())
        blocks, in_planes = [], STEM_CHANNELS
        for planes, stride in _BLOCKS:
            blocks.append(DepthwiseSeparable(in_planes, planes, stride))
            in_planes = planes
        self.model = nn.Sequential(stem, *blocks)
        self.pool = GlobalAvgPool()
        self.fc = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor, features: bool = False) -> Union[torch.Tensor, tuple[torch.Tensor, Features]]:
        if not features:
            return self.fc(torch.flatten(self.pool(self.model(x)), 1))
        starts = (1, *(end + 1 for end in _STAGE_ENDS[:-1]))
        stages = [self.model[start:end + 1] for start, end in zip(starts, _STAGE_ENDS)]
        x, found = staged_features(self.model[0](x), stages)
        pooled = torch.flatten(self.pool(x), 1)
        return self.fc(pooled), found._replace(pooled=pooled)


def mobilenetv1(num_classes: int) -> MobileNetV1:
    return MobileNetV1(num_classes)
