"""torchvision's ImageNet ResNets (18, 34, 50), with kd's stage features: the networks of the field's ImageNet pairs.

The network is torchvision's own `torchvision.models.ResNet` (its stem, stages, init and module names), so
torchvision's published weights and mdistiller's ImageNet teachers (the same files) load with a strict
`load_state_dict`. kd adds two things: `forward(x, features=True)` and a block's `preact` (its output before
the last ReLU), and global pooling as kd's GlobalAvgPool (the same values as torchvision's adaptive pooling, and
vmap batches it). The features are mdistiller's (models/imagenet/resnet.py): feats[0] the stem after its ReLU and
before the max-pool (112x112 at 224), preact[0] the stem before that ReLU, then each stage's output (56, 28, 14
and 7 at 224) after and before its last ReLU. Any input of 1x1 and more runs (every stride-2 layer is padded).

kd's CIFAR `resnet50` is RepDistiller's (kd/models/resnetv2.py); ImageNet's is `imagenet_resnet50` here.
"""
from __future__ import annotations

from typing import Union

import torch
from torchvision.models import resnet as tv

from kd.models.features import Features, staged_features
from kd.models.pooling import GlobalAvgPool

# kd's factory name -> torchvision's builder, whose published weights (teacher.weights) are this network's.
TORCHVISION_BUILDERS = {"resnet18": "resnet18", "resnet34": "resnet34", "imagenet_resnet50": "resnet50"}


class BasicBlock(tv.BasicBlock):
    def preact(self, x: torch.Tensor) -> torch.Tensor:
        """torchvision's forward without its last ReLU: what a stage's last block gives as `preact`."""
        out = self.relu(self.bn1(self.conv1(x)))
        identity = x if self.downsample is None else self.downsample(x)
        return self.bn2(self.conv2(out)) + identity


class Bottleneck(tv.Bottleneck):
    def preact(self, x: torch.Tensor) -> torch.Tensor:
        """torchvision's forward without its last ReLU."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        identity = x if self.downsample is None else self.downsample(x)
        return self.bn3(self.conv3(out)) + identity


class ResNet(tv.ResNet):
    def __init__(self, block: type, layers: list[int], num_classes: int) -> None:
        super().__init__(block, layers, num_classes=num_classes)
        self.avgpool = GlobalAvgPool()

    def forward(self, x: torch.Tensor, features: bool = False) -> Union[torch.Tensor, tuple[torch.Tensor, Features]]:
        if not features:
            return self._forward_impl(x)
        pre = self.bn1(self.conv1(x))
        stem = torch.relu(pre)  # not torchvision's in-place ReLU: `pre` is kept
        x, found = staged_features(self.maxpool(stem), [self.layer1, self.layer2, self.layer3, self.layer4])
        pooled = torch.flatten(self.avgpool(x), 1)
        return self.fc(pooled), Features([stem, *found.feats[1:]], [pre, *found.preact[1:]], pooled)


# The block counts of torchvision's builders (torchvision/models/resnet.py), which build torchvision's blocks.
def resnet18(num_classes: int) -> ResNet:
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes)


def resnet34(num_classes: int) -> ResNet:
    return ResNet(BasicBlock, [3, 4, 6, 3], num_classes)


def imagenet_resnet50(num_classes: int) -> ResNet:
    """torchvision's resnet50 (ImageNet's), not kd's CIFAR `resnet50` (RepDistiller's)."""
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes)
