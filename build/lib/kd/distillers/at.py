"""Attention transfer (Zagoruyko & Komodakis, ICLR 2017), mdistiller's CIFAR loss.

A stage's attention map is its activations' p-th power averaged over channels, flattened and
L2-normalised per sample (mdistiller's mean_c A_c^p: the paper's |A_c|^p for even p); the term sums over
the stages (feats[1:]) the mean squared gap between the student's and the teacher's maps, the larger map first
average-pooled to the smaller's size so that networks of different resolutions pair up.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kd.distillers.base import Distiller, Outputs


def attention(f: torch.Tensor, p: float) -> torch.Tensor:
    return F.normalize(f.float().pow(p).mean(1).flatten(1), dim=1)


def at_stage(f_s: torch.Tensor, f_t: torch.Tensor, p: float) -> torch.Tensor:
    size = (min(f_s.shape[2], f_t.shape[2]), min(f_s.shape[3], f_t.shape[3]))
    f_s = F.adaptive_avg_pool2d(f_s.float(), size) if f_s.shape[2:] != size else f_s
    f_t = F.adaptive_avg_pool2d(f_t.float(), size) if f_t.shape[2:] != size else f_t
    return (attention(f_s, p) - attention(f_t, p)).pow(2).mean()


class AT(Distiller):
    """term = feat_weight * sum over stages of mean((at_s - at_t)^2); mdistiller's p=2, feat_weight=1000."""

    needs_features = True

    def __init__(self, p: float = 2.0, feat_weight: float = 1000.0, scale: float = 1.0) -> None:
        super().__init__(scale)
        if not p > 0.0:
            raise ValueError(f"loss.p={p} must be > 0 (the attention map's power; the paper uses 2)")
        if not feat_weight >= 0.0:
            raise ValueError(f"loss.feat_weight={feat_weight} must be >= 0 (mdistiller uses 1000)")
        self.p, self.feat_weight = p, feat_weight

    def term(self, student: Outputs, teacher: Outputs, targets: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
        g_s, g_t = student.features.feats[1:], teacher.features.feats[1:]
        if len(g_s) != len(g_t):  # mdistiller's zip would silently drop the deeper network's last stages
            raise ValueError(f"AT pairs the networks' stages, but the student has {len(g_s)} and the teacher "
                             f"{len(g_t)}")
        return {"kd": self.feat_weight * sum(at_stage(f_s, f_t, self.p) for f_s, f_t in zip(g_s, g_t))}
