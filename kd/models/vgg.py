"""CIFAR VGGs with BatchNorm, as in RepDistiller's models/vgg.py (their vgg*_bn; the CRD benchmark's vgg13 and vgg8).

Five blocks of 3x3 conv (with bias) + BN + ReLU, the last ReLU of each block left to the network so that it
can report the block's preact; 2x2 max-pools between the first four blocks, global average pooling and one
linear `classifier` (no VGG fully connected stack). Module names are theirs (`block2.3.weight` is the
third block's second conv), so their checkpoints load with a strict `load_state_dict` and no renaming.

Their `pool3` quirk is kept: only a 64x64 input (their TinyImageNet) is pooled a fourth time before block4,
so on 32x32 CIFAR block3 and block4 both see 4x4 maps, on 16x16 digits 2x2. Three pools need an input of
at least MIN_IMAGE_SIZE = 8 (block3 and block4 then see 1x1); a smaller one fails in the third pool.
Their global pooling is already adaptive; nothing differs.
"""
from __future__ import annotations

import math
from typing import Union

import torch
import torch.nn.functional as F
from torch import nn

from kd.models.features import Features
from kd.models.pooling import GlobalAvgPool

MIN_IMAGE_SIZE = 8

# Conv widths per block, their configurations S (vgg8), A, B, D, E.
_VGG8 = ((64,), (128,), (256,), (512,), (512,))
_VGG11 = ((64,), (128,), (256, 256), (512, 512), (512, 512))
_VGG13 = ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512))
_VGG16 = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
_VGG19 = ((64, 64), (128, 128), (256, 256, 256, 256), (512, 512, 512, 512), (512, 512, 512, 512))


def _block(in_channels: int, widths: tuple[int, ...]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        in_channels = width
    return nn.Sequential(*layers[:-1])  # ends in BN: the ReLU is the network's, after it reads the preact


class VGG(nn.Module):
    def __init__(self, widths: tuple[tuple[int, ...], ...], num_classes: int) -> None:
        super().__init__()
        self.block0 = _block(3, widths[0])
        self.block1 = _block(widths[0][-1], widths[1])
        self.block2 = _block(widths[1][-1], widths[2])
        self.block3 = _block(widths[2][-1], widths[3])
        self.block4 = _block(widths[3][-1], widths[4])
        self.pool = GlobalAvgPool()
        self.classifier = nn.Linear(widths[4][-1], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels  # He init in their arithmetic: same bits
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor, features: bool = False) -> Union[torch.Tensor, tuple[torch.Tensor, Features]]:
        pools = 4 if x.shape[2] == 64 else 3
        x = torch.relu(self.block0(x))
        feats, preact = [x], [x]
        for i, block in enumerate((self.block1, self.block2, self.block3, self.block4)):
            if i < pools:
                x = F.max_pool2d(x, 2)
            pre = block(x)
            x = torch.relu(pre)
            if features:
                feats.append(x)
                preact.append(pre)
        pooled = torch.flatten(self.pool(x), 1)
        logits = self.classifier(pooled)
        return (logits, Features(feats, preact, pooled)) if features else logits


def vgg8(num_classes: int) -> VGG:
    return VGG(_VGG8, num_classes)


def vgg11(num_classes: int) -> VGG:
    return VGG(_VGG11, num_classes)


def vgg13(num_classes: int) -> VGG:
    return VGG(_VGG13, num_classes)


def vgg16(num_classes: int) -> VGG:
    return VGG(_VGG16, num_classes)


def vgg19(num_classes: int) -> VGG:
    return VGG(_VGG19, num_classes)
