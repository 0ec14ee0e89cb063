"""Activation boundaries (Heo et al., AAAI 2019), RepDistiller's loss, as a term of the whole training.

On the stages' pre-ReLU maps (preact[1:]), the student's through a connector (none where its channels and
size already equal the teacher's, else FitNet's regressor without the ReLU: conv, BN), the alternative
(hinge-squared) loss transfers where each teacher neuron is active: (s + m)^2 where s > -m but t <= 0, and
(s - m)^2 where s <= m but t > 0 (margin m = 1), summed over channels and positions, divided by the batch,
weighted 2^(i - stages + 1) (the deepest 1), and scaled by 3 / 1000, all as RepDistiller's ABLoss.

RepDistiller's recipe (its published 73.17, resnet32x4->resnet8x4) uses this loss only in a first stage
(kd/distillers/base.py): 30 epochs training the connectors and the student's feature layers on it alone, then
the student on CE only (its `-a 0 -b 1` multiplies a zero AB term there). conf/loss/ab.yaml is that recipe:
first_stage_epochs 30 and feat_weight 0, the main stage's AB weight; feat_weight > 0 adds the AB term to CE in
the main stage too (with first_stage_epochs 0, AB as a term of the whole training, like the other distillers).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from kd.distillers.base import Outputs
from kd.distillers.common import FeatureDistiller, feature_modules, probed_stages, stage_maps
from kd.distillers.fitnet import conv_regressor


def ab_stage(s: torch.Tensor, t: torch.Tensor, margin: float) -> torch.Tensor:
    on, off = t > 0, t <= 0
    loss = (s + margin).pow(2) * ((s > -margin) & off) + (s - margin).pow(2) * ((s <= margin) & on)
    return loss.sum() / s.shape[0]


class AB(FeatureDistiller):
    """term = feat_weight * AB, AB = 3/1000 * sum_i 2^(i - stages + 1) * alternative_l2(connector_i(s_i), t_i) / N;
    the first stage's loss is AB."""

    reference = "RepDistiller's main stage is CE only: 0"

    def __init__(self, margin: float = 1.0, feat_weight: float = 0.0, scale: float = 1.0,
                 first_stage_epochs: int = 30, first_stage_lr: float = 0.05) -> None:
        super().__init__(feat_weight, scale)
        self.set_first_stage(first_stage_epochs, first_stage_lr)
        if not margin > 0.0:
            raise ValueError(f"loss.margin={margin} must be > 0 (RepDistiller uses 1)")
        self.margin = margin
        self.connectors = nn.ModuleList()

    def setup(self, student: nn.Module, teacher: Optional[nn.Module], images: torch.Tensor) -> None:
        pairs = probed_stages(student, teacher, images, "AB", preact=True)
        for f_s, f_t in pairs:
            same = f_s.shape[1:3] == f_t.shape[1:3]  # RepDistiller compares the channels and the height
            self.connectors.append(nn.Identity() if same else conv_regressor(f_s.shape, f_t.shape, relu=False))

    def first_stage_modules(self, student: nn.Module) -> list[nn.Module]:
        return [self.connectors, *feature_modules(student)]

    def first_term(self, student: Outputs, teacher: Outputs) -> torch.Tensor:
        if not len(self.connectors):
            raise RuntimeError("AB.setup(student, teacher, images) must run before its term")
        pairs = stage_maps(student, teacher, "AB", preact=True)
        total = sum(2.0 ** (i - len(pairs) + 1) * ab_stage(conn(f_s.float()), f_t.float(), self.margin)
                    for i, ((f_s, f_t), conn) in enumerate(zip(pairs, self.connectors)))
        return 3.0 / 1000.0 * total

    def term(self, student: Outputs, teacher: Outputs, targets: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
        return {"kd": self.feat_weight * self.first_term(student, teacher)}
