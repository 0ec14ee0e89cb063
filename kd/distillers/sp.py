"""Similarity-preserving KD (Tung & Mori, ICCV 2019), RepDistiller's and mdistiller's CIFAR loss.

On the last stage's map (feats[-1]; RepDistiller's feat[-2], mdistiller's feats[-1]), each network's batch
Gram matrix G = F F^T of the flattened features, each row L2-normalised; the term is
||G_t - G_s||_F^2 / N^2 (the paper's).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kd.distillers.base import Outputs
from kd.distillers.common import FeatureDistiller, flat


def batch_similarity(f: torch.Tensor) -> torch.Tensor:
    f = flat(f)
    return F.normalize(f @ f.t(), dim=1)


def sp_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    return (batch_similarity(f_t) - batch_similarity(f_s)).pow(2).sum() / f_s.shape[0] ** 2


class SP(FeatureDistiller):
    """term = feat_weight * ||G_t - G_s||_F^2 / N^2 on the last stage; the references' weight is 3000."""

    reference = "RepDistiller's and mdistiller's SP weight is 3000"

    def __init__(self, feat_weight: float = 3000.0, scale: float = 1.0) -> None:
        super().__init__(feat_weight, scale)

    def term(self, student: Outputs, teacher: Outputs, targets: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
        return {"kd": self.feat_weight * sp_loss(student.features.feats[-1], teacher.features.feats[-1])}
