"""Probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018), RepDistiller's and mdistiller's CIFAR loss.

Each network's pooled features (Features.pooled, what the classifier reads; their `feat[-1]`/`pooled_feat`)
give, over the batch, cosine similarities mapped to [0, 1] and normalised per row into conditional
probabilities p(j | i); the term is the KL divergence of the student's from the teacher's, averaged (not
summed) over the N x N entries as both references do, with their eps of 1e-7 in the norms and the log.
"""
from __future__ import annotations

import torch

from kd.distillers.base import Outputs
from kd.distillers.common import FeatureDistiller, flat

EPS = 1e-7


def conditional_probs(f: torch.Tensor) -> torch.Tensor:
    f = flat(f)
    f = f / (f.norm(dim=1, keepdim=True) + EPS)
    similarity = (f @ f.t() + 1.0) / 2.0
    return similarity / similarity.sum(1, keepdim=True)


def pkt_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    p_s, p_t = conditional_probs(f_s), conditional_probs(f_t)
    return (p_t * torch.log((p_t + EPS) / (p_s + EPS))).mean()


class PKT(FeatureDistiller):
    """term = feat_weight * KL-mean(p_t || p_s) on the pooled features; the references' weight is 30000."""

    reference = "RepDistiller's and mdistiller's PKT weight is 30000"

    def __init__(self, feat_weight: float = 30000.0, scale: float = 1.0) -> None:
        super().__init__(feat_weight, scale)

    def term(self, student: Outputs, teacher: Outputs, targets: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
        return {"kd": self.feat_weight * pkt_loss(student.features.pooled, teacher.features.pooled)}
