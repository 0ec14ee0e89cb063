"""What several distillers share: probing a network's feature shapes, pairing the stages of a student and a
teacher, pooling two maps to a common size, and checking a weight."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from kd.distillers.base import Distiller, Outputs
from kd.models.features import Features


@torch.no_grad()
def probe_features(net: nn.Module, images: torch.Tensor) -> Features:
    """The network's features in eval mode, its modules' own modes restored after: BN statistics stay put."""
    modes = {m: m.training for m in net.modules()}
    net.eval()
    try:
        return net(images, features=True)[1]
    finally:
        for m, training in modes.items():
            m.training = training


def require_teacher(teacher: Optional[nn.Module], method: str) -> nn.Module:
    if teacher is None:
        raise ValueError(f"{method}'s learned parts are built from the teacher's features: a teacher is required")
    return teacher


def check_weight(key: str, value: float, reference: str) -> None:
    if not value >= 0.0:
        raise ValueError(f"loss.{key}={value} must be >= 0 ({reference})")


def paired_stages(s: list[torch.Tensor], t: list[torch.Tensor], method: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The stages' maps (feats[1:] or preact[1:]) of both networks, pair by pair; unequal counts are refused
    (the references' zip would silently drop the deeper network's last stages)."""
    g_s, g_t = s[1:], t[1:]
    if len(g_s) != len(g_t):
        raise ValueError(f"{method} pairs the networks' stages, but the student has {len(g_s)} and the teacher "
                         f"{len(g_t)}")
    return list(zip(g_s, g_t))


def probed_stages(student: nn.Module, teacher: Optional[nn.Module], images: torch.Tensor, method: str,
                  preact: bool = False) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """For a setup: the two networks' stage maps on `images` (probed in eval mode), pair by pair; a teacher is
    required."""
    teacher = require_teacher(teacher, method)
    f_s, f_t = probe_features(student, images), probe_features(teacher, images)
    return paired_stages(f_s.preact if preact else f_s.feats, f_t.preact if preact else f_t.feats, method)


def pool_to_common(f_s: torch.Tensor, f_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both maps in float32, the larger average-pooled to the smaller's size (per side)."""
    size = (min(f_s.shape[2], f_t.shape[2]), min(f_s.shape[3], f_t.shape[3]))
    f_s = F.adaptive_avg_pool2d(f_s.float(), size) if f_s.shape[2:] != size else f_s.float()
    f_t = F.adaptive_avg_pool2d(f_t.float(), size) if f_t.shape[2:] != size else f_t.float()
    return f_s, f_t


def flat(x: torch.Tensor) -> torch.Tensor:
    """One float32 row per sample."""
    return x.float().reshape(x.shape[0], -1)


def stage_maps(student: Outputs, teacher: Outputs, method: str, preact: bool = False):
    """Pairs of (student, teacher) stage maps, feats[1:] or preact[1:]."""
    fs, ft = ((o.features.preact if preact else o.features.feats) for o in (student, teacher))
    return paired_stages(fs, ft, method)


class FeatureDistiller(Distiller):
    """A distiller that reads features and weights its loss by `feat_weight` (its reference's -b, mdistiller's
    FEAT_WEIGHT); `reference` names that recipe's weight in the error of a negative one."""

    needs_features = True
    reference = ""

    def __init__(self, feat_weight: float, scale: float = 1.0) -> None:
        super().__init__(scale)
        check_weight("feat_weight", feat_weight, self.reference)
        self.feat_weight = feat_weight


def linear_warmup(epoch: int, warmup: int) -> float:
    """min((epoch + 1) / warmup, 1), epochs counted from 0 (mdistiller's epoch / warmup, counted from 1); 1 for
    warmup=0."""
    return min((epoch + 1) / warmup, 1.0) if warmup > 0 else 1.0


def feature_modules(student: nn.Module) -> list[nn.Module]:
    """The network's children but its classifier (the one holding its nn.Linear): RepDistiller's
    get_feat_modules(), what AB's and FSP's first stages train."""
    return [m for m in student.children() if not any(isinstance(x, nn.Linear) for x in m.modules())]
