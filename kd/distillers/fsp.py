"""FSP (Yim et al., CVPR 2017, "A Gift from Knowledge Distillation"), on RepDistiller's recipe.

The "flow of solution procedure" of consecutive feature maps (kd's feats: the stem's and each stage's output,
RepDistiller's feat[:-1]): G[j, i] = mean over positions of top_j * bottom_i, the larger map average-pooled to
the smaller's size first; the loss is the mean squared gap of the student's and the teacher's G, summed over the
pairs. It needs equal channels stage by stage (RepDistiller refuses the others too).

RepDistiller (its published 72.62, resnet32x4->resnet8x4) trains on it only in a first stage
(kd/distillers/base.py): 30 epochs of the student's feature layers on FSP alone, then CE only. conf/loss/fsp.yaml
is that recipe: first_stage_epochs 30 and feat_weight 0, the main stage's FSP weight (> 0 adds it to CE there).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from kd.distillers.base import Outputs
from kd.distillers.common import FeatureDistiller, feature_modules, probe_features, require_teacher


def fsp_matrix(bottom: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
    """(N, C_top, C_bottom): the maps' products averaged over positions, at the smaller map's size."""
    size = min(bottom.shape[2], top.shape[2])
    bottom, top = (F.adaptive_avg_pool2d(x, (size, size)) if x.shape[2] != size else x
                   for x in (bottom.float(), top.float()))
    return torch.einsum("nip,njp->nji", bottom.flatten(2), top.flatten(2)) / bottom[0, 0].numel()


def fsp_loss(s_maps: list[torch.Tensor], t_maps: list[torch.Tensor]) -> torch.Tensor:
    return sum((fsp_matrix(s_maps[i], s_maps[i + 1]) - fsp_matrix(t_maps[i], t_maps[i + 1])).pow(2).mean()
               for i in range(len(s_maps) - 1))


class FSP(FeatureDistiller):
    """term = feat_weight * sum over consecutive map pairs of mean((G_s - G_t)^2); the first stage's loss is the sum."""

    reference = "RepDistiller's main stage is CE only: 0"

    def __init__(self, feat_weight: float = 0.0, scale: float = 1.0, first_stage_epochs: int = 30,
                 first_stage_lr: float = 0.05) -> None:
        super().__init__(feat_weight, scale)
        self.set_first_stage(first_stage_epochs, first_stage_lr)

    def setup(self, student: nn.Module, teacher: Optional[nn.Module], images: torch.Tensor) -> None:
        s = probe_features(student, images).feats
        t = probe_features(require_teacher(teacher, "FSP"), images).feats
        if [f.shape[1] for f in s] != [f.shape[1] for f in t]:
            raise ValueError(f"FSP compares the networks' maps channel by channel, but the student's have "
                             f"{[f.shape[1] for f in s]} channels and the teacher's {[f.shape[1] for f in t]}")

    def first_stage_modules(self, student: nn.Module) -> list[nn.Module]:
        return feature_modules(student)

    def first_term(self, student: Outputs, teacher: Outputs) -> torch.Tensor:
        return fsp_loss(student.features.feats, teacher.features.feats)

    def term(self, student: Outputs, teacher: Outputs, targets: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
        return {"kd": self.feat_weight * self.first_term(student, teacher)}
