"""CIFAR MobileNetV2 with the shapes of the public CIFAR-100 KD benchmarks: RepDistiller's models/mobilenetv2.py.

`mobilenetv2` is their `mobile_half`: expansion 6, width multiplier 0.5, the student of the benchmark pairs.
A stride-2 3x3 stem, seven stages of inverted residuals (whose last 1x1 conv has no ReLU: the linear
bottleneck), a 1x1 conv to 1280 channels and a linear classifier. Module names are theirs (`conv1`,
`blocks.<stage>.<block>.conv.<i>`, `conv2`, `classifier.0`), so their checkpoints load with no renaming, and
the weights are initialised as theirs. Features are read where theirs are: the stem and the ends of stages
1, 2, 4 and 6; a stage ends without a ReLU, so `preact` is `feats`.

Differences: global pooling is adaptive where theirs is AvgPool2d(input_size // 16), the same on 32x32
inputs; their ReLUs are in place, kd's are not (vmap and torch.compile). The total stride is 16: 32x32 ends
at 2x2 and 16x16 at 1x1 (from blocks[5] on). Smaller inputs still run, since a padded stride-2 3x3 conv
maps 1x1 to 1x1: at 8x8 blocks[3:] see a single position, and so on down to MIN_IMAGE_SIZE.
"""
from __future__ import annotations

from typing import Union

import torch
from torch import nn

from kd.models.features import Features
from kd.models.pooling import GlobalAvgPool

MIN_IMAGE_SIZE = 1

# Per stage: expansion (None: the network's), channels at width 1, blocks, stride of the first block.
_STAGES = ((1, 16, 1, 1), (None, 24, 2, 1), (None, 32, 3, 2), (None, 64, 4, 2),
           (None, 96, 3, 1), (None, 160, 3, 2), (None, 320, 1, 1))
_FEATURE_STAGES = (1, 2, 4, 6)  # RepDistiller's f1..f4


def _conv_bn_relu(in_planes: int, planes: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_planes, planes, kernel, stride, kernel // 2, bias=False),
                         nn.BatchNorm2d(planes), nn.ReLU())


class InvertedResidual(nn.Module):
    """Expand (1x1), filter (3x3 depthwise), project (1x1, linear); the input added where the shape allows.

    The expanding conv is there even at expansion 1, as in theirs (the MobileNetV2 paper drops it).
    """

    def __init__(self, in_planes: int, planes: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_planes * expansion
        self.residual = stride == 1 and in_planes == planes
        self.conv = nn.Sequential(
            nn.Conv2d(in_planes, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(),
            nn.Conv2d(hidden, planes, 1, bias=False), nn.BatchNorm2d(planes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.residual else out


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int, expansion: int, width: float) -> None:
        super().__init__()
        in_planes = int(32 * width)
        self.conv1 = _conv_bn_relu(3, in_planes, 3, 2)
        self.blocks = nn.ModuleList()
        for t, c, n, s in _STAGES:
            planes = int(c * width)
            stage = []
            for i in range(n):
                stage.append(InvertedResidual(in_planes, planes, s if i == 0 else 1, t or expansion))
                in_planes = planes
            self.blocks.append(nn.Sequential(*stage))
        last = max(1280, int(1280 * width))  # theirs: widened only for width > 1
        self.conv2 = _conv_bn_relu(in_planes, last, 1, 1)
        self.classifier = nn.Sequential(nn.Linear(last, num_classes))
        self.pool = GlobalAvgPool()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):  # theirs: normal(0, sqrt(2 / (k * k * out_channels)))
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor, features: bool = False) -> Union[torch.Tensor, tuple[torch.Tensor, Features]]:
        x = self.conv1(x)
        feats = [x]  # references only: the plain call computes nothing extra
        for i, stage in enumerate(self.blocks):
            x = stage(x)
            if i in _FEATURE_STAGES:
                feats.append(x)
        pooled = torch.flatten(self.pool(self.conv2(x)), 1)
        logits = self.classifier(pooled)
        if not features:
            return logits
        return logits, Features(feats, list(feats), pooled)


def mobilenetv2(num_classes: int) -> MobileNetV2:
    """RepDistiller's `mobile_half`."""
    return MobileNetV2(num_classes, expansion=6, width=0.5)
