"""Neuron selectivity transfer (Huang & Wang, 2017), RepDistiller's and mdistiller's CIFAR loss.

For each stage (feats[1:]), the larger map average-pooled to the smaller's size, each channel's spatial
activations are one sample of the network's distribution (L2-normalised); the term sums over the stages the
squared MMD between the students' and the teacher's channels with the polynomial kernel k(x, y) = (x . y)^2
(the references' full MMD: mean k(t, t) + mean k(s, s) - 2 mean k(s, t)).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kd.distillers.base import Outputs
from kd.distillers.common import FeatureDistiller, pool_to_common, stage_maps


def poly_kernel_mean(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.bmm(a, b.transpose(1, 2)).pow(2).mean()


def nst_stage(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    s, t = (F.normalize(f.flatten(2), dim=2) for f in pool_to_common(f_s, f_t))
    return poly_kernel_mean(t, t) + poly_kernel_mean(s, s) - 2.0 * poly_kernel_mean(s, t)


class NST(FeatureDistiller):
    """term = feat_weight * sum over stages of MMD^2 (polynomial kernel); the references' weight is 50."""

    reference = "RepDistiller's and mdistiller's NST weight is 50"

    def __init__(self, feat_weight: float = 50.0, scale: float = 1.0) -> None:
        super().__init__(feat_weight, scale)

    def term(self, student: Outputs, teacher: Outputs, targets: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
        return {"kd": self.feat_weight * sum(nst_stage(f_s, f_t) for f_s, f_t in stage_maps(student, teacher, "NST"))}
