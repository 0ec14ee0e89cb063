"""A comprehensive overhaul of feature distillation (Heo et al., ICCV 2019), mdistiller's CIFAR loss.

The stages' pre-ReLU maps (preact[1:]) are distilled: the student's through a learned connector (1x1 conv
without bias, He-initialised, then BatchNorm) onto the teacher's channels, the teacher's average-pooled to
the student's size. The teacher's target is max(t, margin), margin per channel the expectation of the
teacher's negative responses, E[x | x < 0] for x ~ N(beta, gamma^2) from the BatchNorm before its ReLU
(-3 |gamma| where P(x < 0) <= 0.001); the partial L2 distance leaves out where both the target and the
student are non-positive and the student is below the target: (s - T)^2 except where s <= T <= 0. Per stage,
the sum over channels and positions of its batch mean, weighted 1 / 2^(stages - 1 - i) (the deepest 1);
term = feat_weight * that sum, mdistiller's 0.001.

kd's networks do not name that BatchNorm (mdistiller's `get_bn_before_relu` is written per network), so setup
finds it in the teacher by running it once with hooks on its BatchNorms: the one whose output is the stage's
preact (pre-activation networks: WRN; VGG, MobileNetV2), else, for a residual sum (ResNets, ShuffleNetV1), the
last BatchNorm of the preact's shape run before the next stage's first one; a teacher where none is found is
refused (naming the stage). The connectors' count follows the stages of both networks, which must be equal
(mdistiller keeps the deepest of the longer list).

Both references run the teacher in train mode while distilling (mdistiller's OFD.train() leaves out its base
class's `self.teacher.eval()`; the original code, clovaai/overhaul-distillation CIFAR-100/train_with_distillation.py,
calls `t_net.train()`): its BatchNorms normalize with each batch's statistics, so the features the student matches
are those. `teacher_batch_stats` (default true, their recipe) does the same; false runs it in eval mode, as kd's
OFD did before 2026-12-07. Their running statistics also move, which nothing of theirs reads afterwards (the
margins come from the BatchNorm's weight and bias, the teacher is never evaluated again): kd leaves them as cached.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from kd.distillers.base import Outputs
from kd.distillers.common import FeatureDistiller, probe_features, probed_stages, stage_maps


def connector(s_channels: int, t_channels: int) -> nn.Module:
    conv = nn.Conv2d(s_channels, t_channels, kernel_size=1, bias=False)
    nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / t_channels))  # mdistiller's: std sqrt(2 / (k * k * out))
    return nn.Sequential(conv, nn.BatchNorm2d(t_channels))


def negative_mean(gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """E[x | x < 0] for x ~ N(beta, gamma^2) per channel; -3 |gamma| where P(x < 0) <= 0.001."""
    s, m = gamma.double().abs(), beta.double()
    below = torch.special.ndtr(-m / s)
    density = torch.exp(-((m / s) ** 2) / 2) / math.sqrt(2 * math.pi)
    return torch.where(below > 0.001, m - s * density / below, -3 * s).float()


SHORTCUTS = {"shortcut", "downsample"}  # a residual block's projection (kd's networks; torchvision's): not its path


@torch.no_grad()
def bn_before_relu(teacher: nn.Module, images: torch.Tensor) -> list[nn.BatchNorm2d]:
    """Each stage's BatchNorm before its last ReLU (preact[1:]), found by running the teacher once."""
    ran: list[tuple[nn.BatchNorm2d, torch.Tensor]] = []
    hooks = [m.register_forward_hook(lambda m, _, out: ran.append((m, out)))
             for name, m in teacher.named_modules() if isinstance(m, nn.BatchNorm2d)
             and not SHORTCUTS & set(name.split("."))]
    try:
        preact = probe_features(teacher, images).preact[1:]
    finally:
        for h in hooks:
            h.remove()
    found, start = [], 0
    for i, p in enumerate(preact):
        same = [k for k, (_, out) in enumerate(ran) if out is p]
        if not same:
            nxt = preact[i + 1].shape if i + 1 < len(preact) else None
            end = next((k for k in range(start, len(ran)) if nxt is not None and ran[k][1].shape == nxt
                        and nxt != p.shape), len(ran))
            same = [k for k in range(start, end) if ran[k][1].shape == p.shape]
        if not same:
            raise ValueError(f"OFD cannot find the BatchNorm before the ReLU of the teacher's stage {i + 1} "
                             f"({type(teacher).__name__}): its margin is computed from that BatchNorm")
        found.append(ran[same[-1]][0])
        start = same[-1] + 1
    return found


def partial_l2(s: torch.Tensor, t: torch.Tensor, margin: torch.Tensor) -> torch.Tensor:
    """The sum over channels and positions of the batch mean of the partial L2 to max(t, margin)."""
    target = torch.maximum(t, margin)
    kept = ~((s <= target) & (target <= 0))
    return ((s - target).pow(2) * kept).mean(0).sum()


class OFD(FeatureDistiller):
    """term = feat_weight * sum_i partial_l2(connector_i(s_i), pool(t_i), margin_i) / 2^(stages - 1 - i)."""

    reference = "mdistiller's OFD weight is 0.001"

    def __init__(self, feat_weight: float = 0.001, scale: float = 1.0, teacher_batch_stats: bool = True) -> None:
        super().__init__(feat_weight, scale)
        self.teacher_batch_stats = teacher_batch_stats
        self.connectors = nn.ModuleList()  # and a buffer margin<i> per stage, from setup

    def setup(self, student: nn.Module, teacher: Optional[nn.Module], images: torch.Tensor) -> None:
        pairs = probed_stages(student, teacher, images, "OFD", preact=True)
        for (f_s, f_t), bn in zip(pairs, bn_before_relu(teacher, images)):
            self.connectors.append(connector(f_s.shape[1], f_t.shape[1]))
            margin = negative_mean(bn.weight.detach(), bn.bias.detach()).view(1, -1, 1, 1)
            # A buffer (a function of the teacher, so not saved): it moves with the distiller to the device.
            self.register_buffer(f"margin{len(self.connectors) - 1}", margin.to(bn.weight.device), persistent=False)

    def term(self, student: Outputs, teacher: Outputs, targets: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
        if not len(self.connectors):
            raise RuntimeError("OFD.setup(student, teacher, images) must run before its term")
        pairs = stage_maps(student, teacher, "OFD", preact=True)
        total = 0.0
        for i, ((f_s, f_t), conn) in enumerate(zip(pairs, self.connectors)):
            s = conn(f_s.float())
            t = F.adaptive_avg_pool2d(f_t.float(), s.shape[-2:])
            total = total + partial_l2(s, t, getattr(self, f"margin{i}")) / 2 ** (len(pairs) - 1 - i)
        return {"kd": self.feat_weight * total}
