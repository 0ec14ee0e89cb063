"""Relational KD (Park et al., CVPR 2019), RepDistiller's and mdistiller's CIFAR loss.

On the pooled features: the distance term is the Huber (smooth L1, beta 1) loss between the two networks'
pairwise Euclidean distances, each divided by its mean over the distinct pairs; the angle term the Huber loss
between the cosines of the angles e_i e_j e_k (cos of the angle at e_i between e_j and e_k, over all N^3
triples, a degenerate one counting 0 as in both references). term = feat_weight * (distance_weight * distance +
angle_weight * angle), the references' 1 * (25 * distance + 50 * angle).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kd.distillers.base import Outputs
from kd.distillers.common import FeatureDistiller, check_weight, flat


def normalised_distances(e: torch.Tensor) -> torch.Tensor:
    diff = e[:, None] - e[None]
    # The clamp keeps sqrt's gradient finite on the diagonal, which is then zeroed (as the references do).
    d = diff.pow(2).sum(-1).clamp(min=1e-12).sqrt()
    d = d.masked_fill(torch.eye(len(e), dtype=torch.bool, device=e.device), 0.0)
    return d / d[d > 0].mean()


def angles(e: torch.Tensor) -> torch.Tensor:
    u = F.normalize(e[None] - e[:, None], dim=2)  # u[i, j]: the unit vector from e_i to e_j
    return torch.bmm(u, u.transpose(1, 2))


def rkd_parts(f_s: torch.Tensor, f_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    s, t = flat(f_s), flat(f_t)
    distance = F.smooth_l1_loss(normalised_distances(s), normalised_distances(t))
    return distance, F.smooth_l1_loss(angles(s), angles(t))


class RKD(FeatureDistiller):
    """term = feat_weight * (distance_weight * distance + angle_weight * angle) on the pooled features."""

    reference = "the references' RKD weight is 1"

    def __init__(self, distance_weight: float = 25.0, angle_weight: float = 50.0, feat_weight: float = 1.0,
                 scale: float = 1.0) -> None:
        super().__init__(feat_weight, scale)
        check_weight("distance_weight", distance_weight, "the references use 25")
        check_weight("angle_weight", angle_weight, "the references use 50")
        self.distance_weight, self.angle_weight = distance_weight, angle_weight

    def term(self, student: Outputs, teacher: Outputs, targets: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
        distance, angle = rkd_parts(student.features.pooled, teacher.features.pooled)
        kd = self.feat_weight * (self.distance_weight * distance + self.angle_weight * angle)
        return {"kd": kd, "distance": distance, "angle": angle}
