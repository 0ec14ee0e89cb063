"""Correlation congruence (Peng et al., ICCV 2019), RepDistiller's CIFAR recipe (CC has none in mdistiller).

RepDistiller embeds each network's pooled features linearly into `feat_dim` (128) dimensions, both embeddings
learned with the student, and uses the code the paper's authors gave it: with d_i = |embed_s(s_i) -
embed_t(t_i)| (elementwise), term = feat_weight * mean_i sum_k d_i,k d_{i+1},k over consecutive samples of
the batch. kd follows that code, which is what its published numbers measure, rather than the paper's
Gaussian-kernel correlation matrices.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from kd.distillers.base import Outputs
from kd.distillers.common import FeatureDistiller, flat, probe_features, require_teacher


def cc_loss(e_s: torch.Tensor, e_t: torch.Tensor) -> torch.Tensor:
    delta = (e_s - e_t).abs()
    return (delta[:-1] * delta[1:]).sum(1).mean()


class CC(FeatureDistiller):
    """term = feat_weight * mean_i sum_k |d_i,k d_{i+1},k|; RepDistiller's feat_dim=128, weight 0.02."""

    reference = "RepDistiller's CC weight is 0.02"

    def __init__(self, feat_dim: int = 128, feat_weight: float = 0.02, scale: float = 1.0) -> None:
        super().__init__(feat_weight, scale)
        if not feat_dim >= 1:
            raise ValueError(f"loss.feat_dim={feat_dim} must be >= 1 (the embedding's size; RepDistiller uses 128)")
        self.feat_dim = feat_dim
        self.embed_s: Optional[nn.Module] = None
        self.embed_t: Optional[nn.Module] = None

    def setup(self, student: nn.Module, teacher: Optional[nn.Module], images: torch.Tensor) -> None:
        teacher = require_teacher(teacher, "CC")
        p_s, p_t = probe_features(student, images).pooled, probe_features(teacher, images).pooled
        self.embed_s, self.embed_t = nn.Linear(p_s.shape[1], self.feat_dim), nn.Linear(p_t.shape[1], self.feat_dim)

    def term(self, student: Outputs, teacher: Outputs, targets: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
        if self.embed_s is None:
            raise RuntimeError("CC.setup(student, teacher, images) must run before its term")
        e_s, e_t = self.embed_s(flat(student.features.pooled)), self.embed_t(flat(teacher.features.pooled))
        return {"kd": self.feat_weight * cc_loss(e_s, e_t)}
