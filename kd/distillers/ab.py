"""Activation boundaries (Heo et al., AAAI 2019), RepDistiller's loss, as a term of the whole training.

On the stages' pre-ReLU maps (preact[1:]), the student's through a connector (none where its channels and
size already equal the teacher's, else FitNet's regressor without the ReLU: conv, BN), the alternative
(hinge-squared) loss transfers where each teacher neuron is active: (s + m)^2 where s > -m but t <= 0, and
(s - m)^2 where s <= m but t > 0 (margin m = 1), summed over channels and positions, divided by the batch,
weighted 2^(i - stages + 1) (the deepest 1), and scaled by 3 / 1000, all as RepDistiller's ABLoss.

Where kd differs, and why: RepDistiller (and the paper) use this loss only in an initialisation stage, 30
epochs training the connector and the student's feature layers on it alone, then train the student on CE only
(its `-a 0 -b 1` multiplies a zero AB term there); its published 73.17 (resnet32x4->resnet8x4) is that recipe.
kd has no such first stage yet, so here the loss is a term added to CE for the whole training, like every
other distiller's; the published recipe is not reachable until kd's loop runs a distiller's first stage.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from kd.distillers.base import Outputs
from kd.distillers.common import FeatureDistiller, probed_stages, stage_maps
from kd.distillers.fitnet import conv_regressor


def ab_stage(s: torch.Tensor, t: torch.Tensor, margin: float) -> torch.Tensor:
    on, off = t > 0, t <= 0
    loss = (s + margin).pow(2) * ((s > -margin) & off) + (s - margin).pow(2) * ((s <= margin) & on)
    return loss.sum() / s.shape[0]


class AB(FeatureDistiller):
    """term = feat_weight * 3/1000 * sum_i 2^(i - stages + 1) * alternative_l2(connector_i(s_i), t_i) / N."""

    reference = "RepDistiller's AB weight is 1"

    def __init__(self, margin: float = 1.0, feat_weight: float = 1.0, scale: float = 1.0) -> None:
        super().__init__(feat_weight, scale)
        if not margin > 0.0:
            raise ValueError(f"loss.margin={margin} must be > 0 (RepDistiller uses 1)")
        self.margin = margin
        self.connectors = nn.ModuleList()

    def setup(self, student: nn.Module, teacher: Optional[nn.Module], images: torch.Tensor) -> None:
        pairs = probed_stages(student, teacher, images, "AB", preact=True)
        for f_s, f_t in pairs:
            same = f_s.shape[1:3] == f_t.shape[1:3]  # RepDistiller compares the channels and the height
            self.connectors.append(nn.Identity() if same else conv_regressor(f_s.shape, f_t.shape, relu=False))

    def term(self, student: Outputs, teacher: Outputs, targets: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
        if not len(self.connectors):
            raise RuntimeError("AB.setup(student, teacher, images) must run before its term")
        pairs = stage_maps(student, teacher, "AB", preact=True)
        total = sum(2.0 ** (i - len(pairs) + 1) * ab_stage(conn(f_s.float()), f_t.float(), self.margin)
                    for i, ((f_s, f_t), conn) in enumerate(zip(pairs, self.connectors)))
        return {"kd": self.feat_weight * 3.0 / 1000.0 * total}
