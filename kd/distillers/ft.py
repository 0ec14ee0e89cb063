"""Factor transfer (Kim et al., NeurIPS 2018, "Paraphrasing Complex Network"), on RepDistiller's recipe.

A paraphraser (an autoencoder of the teacher's last stage map, feats[-1], RepDistiller's feat[-2]: three 3x3
convs with LeakyReLU(0.1) to k = 0.5 of its channels, three transposed convs back, no BN) is trained first,
alone, to reconstruct that map (MSE): the first stage (kd/distillers/base.py), 30 epochs at lr 0.01 (RepDistiller's
lr for resnet and wrn students; its others use 0.05). Then it is frozen, and a translator (the same encoder, with
BN, on the student's last stage map) trains with the student on CE + feat_weight * the factor loss: the mean
|f(s) - f(t)| of the factors' normalised maps f(x) = normalize(mean over channels of x^2), the larger map
average-pooled to the smaller's size. Published: 72.86 (resnet32x4->resnet8x4), with `-b 200`.
"""
from __future__ import annotations

from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn

from kd.distillers.base import Outputs
from kd.distillers.common import FeatureDistiller, pool_to_common, probe_features, require_teacher


def encoder(c_in: int, c_out: int, bn: bool) -> list[nn.Module]:
    layers = []
    for a, b in ((c_in, c_in), (c_in, c_out), (c_out, c_out)):
        layers += [nn.Conv2d(a, b, 3, 1, 1), *([nn.BatchNorm2d(b)] if bn else []), nn.LeakyReLU(0.1)]
    return layers


def paraphraser(channels: int, k: float) -> nn.Module:
    factor = int(channels * k)
    decoder = []
    for a, b in ((factor, factor), (factor, channels), (channels, channels)):
        decoder += [nn.ConvTranspose2d(a, b, 3, 1, 1), nn.LeakyReLU(0.1)]
    return nn.ModuleDict({"encoder": nn.Sequential(*encoder(channels, factor, bn=False)),
                          "decoder": nn.Sequential(*decoder)})


def factor_map(f: torch.Tensor) -> torch.Tensor:
    return F.normalize(f.pow(2).mean(1).flatten(1))


def factor_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """mean |f(s) - f(t)| of the normalised factor maps, at the smaller map's size."""
    f_s, f_t = pool_to_common(f_s, f_t)
    return (factor_map(f_s) - factor_map(f_t)).abs().mean()


class FT(FeatureDistiller):
    """term = feat_weight * factor_loss(translator(s), paraphraser.encoder(t)); the first stage's loss is the
    paraphraser's reconstruction MSE."""

    reference = "RepDistiller's FT weight is 200"

    def __init__(self, k: float = 0.5, feat_weight: float = 200.0, scale: float = 1.0, first_stage_epochs: int = 30,
                 first_stage_lr: float = 0.01) -> None:
        super().__init__(feat_weight, scale)
        if not 0.0 < k:
            raise ValueError(f"loss.k={k} must be > 0 (the factors' share of the teacher's channels; RepDistiller 0.5)")
        self.k = k
        self.set_first_stage(first_stage_epochs, first_stage_lr)
        self.paraphraser: Optional[nn.Module] = None
        self.translator: Optional[nn.Module] = None

    def setup(self, student: nn.Module, teacher: Optional[nn.Module], images: torch.Tensor) -> None:
        c_s = probe_features(student, images).feats[-1].shape[1]
        c_t = probe_features(require_teacher(teacher, "FT"), images).feats[-1].shape[1]
        self.paraphraser = paraphraser(c_t, self.k)
        self.translator = nn.Sequential(*encoder(c_s, int(c_t * self.k), bn=True))

    def first_stage_modules(self, student: nn.Module) -> list[nn.Module]:
        return [self.paraphraser]

    def main_parameters(self) -> Iterator[nn.Parameter]:
        # The paraphraser stays as its first stage left it.
        return (p for name, p in self.named_parameters() if not name.startswith("paraphraser."))

    def first_term(self, student: Outputs, teacher: Outputs) -> torch.Tensor:
        f_t = teacher.features.feats[-1].float()
        return F.mse_loss(self.paraphraser["decoder"](self.paraphraser["encoder"](f_t)), f_t)

    def term(self, student: Outputs, teacher: Outputs, targets: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
        if self.translator is None:
            raise RuntimeError("FT.setup(student, teacher, images) must run before its term")
        with torch.no_grad():
            factor_t = self.paraphraser["encoder"](teacher.features.feats[-1].float())
        return {"kd": self.feat_weight * factor_loss(self.translator(student.features.feats[-1].float()), factor_t)}
