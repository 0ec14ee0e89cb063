"""Variational information distillation (Ahn et al., CVPR 2019), RepDistiller's and mdistiller's CIFAR loss.

For each stage (feats[1:]), the larger map average-pooled to the smaller's size, a learned regressor (1x1
convs s->t->t->t channels, ReLUs between, no biases) predicts the mean of a Gaussian over the teacher's map,
with a learned variance per teacher channel, softplus(log_scale) + eps, started at init_pred_var (5). The term
is the mean over the batch, channels and positions of the negative log-likelihood without its constant,
0.5 * ((t - mu)^2 / var + log var) (the variational bound on the mutual information, up to constants), summed
over the stages.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from kd.distillers.base import Outputs
from kd.distillers.common import FeatureDistiller, pool_to_common, probed_stages, stage_maps


def vid_regressor(s_channels: int, t_channels: int) -> nn.Module:
    def conv(a: int, b: int) -> nn.Conv2d:
        return nn.Conv2d(a, b, kernel_size=1, bias=False)
    return nn.Sequential(conv(s_channels, t_channels), nn.ReLU(), conv(t_channels, t_channels), nn.ReLU(),
                         conv(t_channels, t_channels))


def gaussian_nll(mean: torch.Tensor, log_scale: torch.Tensor, target: torch.Tensor, eps: float) -> torch.Tensor:
    var = (F.softplus(log_scale) + eps).view(1, -1, 1, 1)
    return (0.5 * ((mean - target).pow(2) / var + torch.log(var))).mean()


class VID(FeatureDistiller):
    """term = feat_weight * sum over stages of the Gaussian NLL; the references' weight 1, init_pred_var 5."""

    reference = "RepDistiller's and mdistiller's VID weight is 1"

    def __init__(self, init_pred_var: float = 5.0, eps: float = 1e-5, feat_weight: float = 1.0,
                 scale: float = 1.0) -> None:
        super().__init__(feat_weight, scale)
        if not init_pred_var > eps > 0.0:
            raise ValueError(f"loss.init_pred_var={init_pred_var} must be > loss.eps={eps} > 0 (the references: "
                             "5 and 1e-5)")
        self.init_pred_var, self.eps = init_pred_var, eps
        self.regressors = nn.ModuleList()
        self.log_scales = nn.ParameterList()

    def setup(self, student: nn.Module, teacher: Optional[nn.Module], images: torch.Tensor) -> None:
        pairs = probed_stages(student, teacher, images, "VID")
        start = math.log(math.expm1(self.init_pred_var - self.eps))  # softplus(start) + eps = init_pred_var
        for f_s, f_t in pairs:
            self.regressors.append(vid_regressor(f_s.shape[1], f_t.shape[1]))
            self.log_scales.append(nn.Parameter(torch.full((f_t.shape[1],), start)))

    def term(self, student: Outputs, teacher: Outputs, targets: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
        if not len(self.regressors):
            raise RuntimeError("VID.setup(student, teacher, images) must run before its term")
        total = 0.0
        for (f_s, f_t), regressor, log_scale in zip(stage_maps(student, teacher, "VID"), self.regressors,
                                                    self.log_scales):
            f_s, f_t = pool_to_common(f_s, f_t)
            total = total + gaussian_nll(regressor(f_s), log_scale, f_t, self.eps)
        return {"kd": self.feat_weight * total}
