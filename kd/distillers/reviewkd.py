"""Knowledge review (Chen et al., CVPR 2021), mdistiller's CIFAR loss.

The student's stage maps (feats[1:]) and its pooled vector (as a 1x1 map) are reviewed from the deepest
down: each level's attention-based fusion (ABF) maps its features to `mid` channels (1x1 conv, BN), fuses them
with the deeper level's (nearest-upsampled to this level's size) by two learned spatial attention maps, and
gives an output (3x3 conv, BN) of the teacher's channels at the teacher's size, the fused map going on to the
next level. Each output is compared with the teacher's pre-ReLU map of its level (preact[1:] and pooled) by the
hierarchical context loss (HCL): the MSE, plus the MSEs of both average-pooled to 4x4, 2x2 and 1x1 (those
smaller than the map), weighted 1, 1/2, 1/4, 1/8 and normalised by their sum. term = feat_weight *
min((epoch + 1) / warmup, 1) * sum of the levels' HCL (mdistiller: warmup 20, weight 5 for
resnet32x4->resnet8x4, its one CIFAR config; 1 by default).

Where kd differs: mdistiller's config lists the levels' channels and sizes by hand for one pair (its output
sizes the student's); kd reads both networks' shapes in setup and gives each output the teacher's size, so
any pair with as many stages runs. mid = min(512, the pooled vector's width), as mdistiller's.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from kd.distillers.base import Outputs
from kd.distillers.common import FeatureDistiller, linear_warmup, paired_stages, probe_features, require_teacher


class ABF(nn.Module):
    """One level of the review: its features to `mid` channels, fused with the deeper level's, to `out`."""

    def __init__(self, in_channels: int, mid: int, out_channels: int, fuse: bool) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, mid, 1, bias=False), nn.BatchNorm2d(mid))
        self.conv2 = nn.Sequential(nn.Conv2d(mid, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels))
        self.att_conv = nn.Sequential(nn.Conv2d(2 * mid, 2, 1), nn.Sigmoid()) if fuse else None
        for conv in (self.conv1[0], self.conv2[0]):
            nn.init.kaiming_uniform_(conv.weight, a=1)

    def forward(self, x: torch.Tensor, deeper: Optional[torch.Tensor],
                out_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(the level's output, its fused map for the next level)."""
        x = self.conv1(x)
        if self.att_conv is not None:
            deeper = F.interpolate(deeper, x.shape[-2:], mode="nearest")
            z = self.att_conv(torch.cat([x, deeper], 1))
            x = x * z[:, :1] + deeper * z[:, 1:]
        if x.shape[-2:] != out_size:
            x = F.interpolate(x, out_size, mode="nearest")
        return self.conv2(x), x


def hcl(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    loss, weight, total = F.mse_loss(f_s, f_t), 1.0, 1.0
    for side in (4, 2, 1):
        if side < f_s.shape[2]:
            weight /= 2.0
            loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(f_s, side), F.adaptive_avg_pool2d(f_t, side))
            total += weight
    return loss / total


def levels(feats: list[torch.Tensor], pooled: torch.Tensor) -> list[torch.Tensor]:
    """The stages' maps and the pooled vector as a 1x1 map, in float32, shallowest first."""
    return [f.float() for f in feats[1:]] + [pooled.float()[:, :, None, None]]


class ReviewKD(FeatureDistiller):
    """term = feat_weight * warmup * sum over levels of HCL(review_s, t); mdistiller's warmup 20."""

    reference = "mdistiller's ReviewKD weight is 5 for resnet32x4->resnet8x4, 1 by default"

    def __init__(self, feat_weight: float = 1.0, warmup: int = 20, max_mid_channels: int = 512,
                 scale: float = 1.0) -> None:
        super().__init__(feat_weight, scale)
        if not warmup >= 0:
            raise ValueError(f"loss.warmup={warmup} must be >= 0 epochs (0: no warmup; mdistiller uses 20)")
        if not max_mid_channels >= 1:
            raise ValueError(f"loss.max_mid_channels={max_mid_channels} must be >= 1 (mdistiller uses 512)")
        self.warmup, self.max_mid_channels = warmup, max_mid_channels
        self.abfs = nn.ModuleList()  # deepest first

    def setup(self, student: nn.Module, teacher: Optional[nn.Module], images: torch.Tensor) -> None:
        teacher = require_teacher(teacher, "ReviewKD")
        s, t = probe_features(student, images), probe_features(teacher, images)
        paired_stages(s.feats, t.preact, "ReviewKD")
        s_levels, t_levels = levels(s.feats, s.pooled), levels(t.preact, t.pooled)
        mid = min(self.max_mid_channels, s_levels[-1].shape[1])
        for depth, (f_s, f_t) in enumerate(zip(reversed(s_levels), reversed(t_levels))):
            self.abfs.append(ABF(f_s.shape[1], mid, f_t.shape[1], fuse=depth > 0))

    def review(self, student: Outputs, t_levels: list[torch.Tensor]) -> list[torch.Tensor]:
        """The student's outputs, deepest first."""
        outs, fused = [], None
        for x, f_t, abf in zip(reversed(levels(student.features.feats, student.features.pooled)), reversed(t_levels),
                               self.abfs):
            out, fused = abf(x, fused, f_t.shape[-2:])
            outs.append(out)
        return outs

    def term(self, student: Outputs, teacher: Outputs, targets: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
        if not len(self.abfs):
            raise RuntimeError("ReviewKD.setup(student, teacher, images) must run before its term")
        t_levels = levels(teacher.features.preact, teacher.features.pooled)
        loss = sum(hcl(f_s, f_t) for f_s, f_t in zip(self.review(student, t_levels), reversed(t_levels)))
        return {"kd": self.feat_weight * linear_warmup(epoch, self.warmup) * loss}
