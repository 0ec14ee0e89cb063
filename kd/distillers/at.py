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
from kd.distillers.common import pool_to_common, stage_maps


def attention(f: torch.Tensor, p: float) -> torch.Tensor:
    return F.normalize(f.float().pow(p).mean(1).flatten(1), dim=1)


def at_stage(f_s: torch.Tensor, f_t: torch.Tensor, p: float) -> torch.Tensor:
    f_s, f_t = pool_to_common(f_s, f_t)
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
        pairs = stage_maps(student, teacher, "AT")
        return {"kd": self.feat_weight * sum(at_stage(f_s, f_t, self.p) for f_s, f_t in pairs)}
