"""FitNets (Romero et al., ICLR 2015), mdistiller's CIFAR loss: a learned regressor maps the student's
hint-layer map onto the teacher's, term = feat_weight * MSE(regressor(f_s), f_t) (the paper's hint loss)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from kd.distillers.base import Distiller, Outputs
from kd.distillers.common import probe_features


def conv_regressor(s_shape: torch.Size, t_shape: torch.Size, relu: bool = True) -> nn.Module:
    """mdistiller's ConvReg: conv (stride 2 for a map twice the teacher's, transposed for half, else a
    valid conv of the size difference), BatchNorm, ReLU (none with relu=False, AB's connector); its output
    has the teacher's map's shape."""
    (_, s_c, s_h, s_w), (_, t_c, t_h, t_w) = s_shape, t_shape
    if (s_h, s_w) == (2 * t_h, 2 * t_w):
        conv: nn.Module = nn.Conv2d(s_c, t_c, kernel_size=3, stride=2, padding=1)
    elif (2 * s_h, 2 * s_w) == (t_h, t_w):
        conv = nn.ConvTranspose2d(s_c, t_c, kernel_size=4, stride=2, padding=1)
    elif s_h >= t_h and s_w >= t_w:
        conv = nn.Conv2d(s_c, t_c, kernel_size=(1 + s_h - t_h, 1 + s_w - t_w))
    else:
        raise ValueError(f"cannot map the student's {s_h}x{s_w} map onto the teacher's {t_h}x{t_w}: the student's "
                         "must be twice, half, or at least the teacher's size (FitNet: choose another loss.hint_layer)")
    return nn.Sequential(conv, nn.BatchNorm2d(t_c), *([nn.ReLU()] if relu else []))


class FitNet(Distiller):
    """term = feat_weight * MSE(regressor(feats_s[hint_layer]), feats_t[hint_layer]); mdistiller's defaults."""

    needs_features = True

    def __init__(self, hint_layer: int = 2, feat_weight: float = 100.0, scale: float = 1.0) -> None:
        super().__init__(scale)
        if not hint_layer >= 0:
            raise ValueError(f"loss.hint_layer={hint_layer} must be >= 0 (feats[0] is the stem's map, feats[i] "
                             "stage i's; mdistiller uses 2)")
        if not feat_weight >= 0.0:
            raise ValueError(f"loss.feat_weight={feat_weight} must be >= 0 (mdistiller uses 100)")
        self.hint_layer, self.feat_weight = hint_layer, feat_weight
        self.regressor: Optional[nn.Module] = None

    def setup(self, student: nn.Module, teacher: Optional[nn.Module], images: torch.Tensor) -> None:
        if teacher is None:
            raise ValueError("FitNet's regressor is built from the teacher's features: a teacher is required")
        f_s, f_t = probe_features(student, images).feats, probe_features(teacher, images).feats
        stages = min(len(f_s), len(f_t)) - 1
        if self.hint_layer > stages:
            raise ValueError(f"loss.hint_layer={self.hint_layer} is out of range: the networks have {stages} "
                             f"stages (feats[0] the stem's map, feats[1..{stages}] the stages'), so use 0..{stages}")
        device = next(student.parameters()).device
        self.regressor = conv_regressor(f_s[self.hint_layer].shape, f_t[self.hint_layer].shape).to(device)

    def term(self, student: Outputs, teacher: Outputs, targets: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
        if self.regressor is None:
            raise RuntimeError("FitNet.setup(student, teacher, images) must run before its term")
        f_s = student.features.feats[self.hint_layer].float()  # the regressor is float32, the nets may be bf16
        f_t = teacher.features.feats[self.hint_layer].float()
        return {"kd": self.feat_weight * F.mse_loss(self.regressor(f_s), f_t)}
