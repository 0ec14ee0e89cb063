"""How a logit distiller reads logits: in float32 at least, and z-scored per sample when `loss.standardize`.

Logit standardization (Sun et al., CVPR 2024, "Logit Standardization in Knowledge Distillation";
sunshangquan/logit-standardization-KD): a shared temperature asks the student to match the teacher's logit
range as well as their relations; z-scoring each sample's logits over the classes (subtract their mean, divide
by their standard deviation) before the temperature leaves only the relations to match. It is one switch,
`loss.standardize`, of every distiller here (KD, DKD, DIST, TTM, WTTM): each term reads its logits through
`LogitDistiller.read`, and cross-entropy always reads the raw ones. The temperature then acts on z-scores (the
authors' base temperature: 2 on CIFAR, conf/loss/kd_ls.yaml, dkd_ls.yaml).
"""
from __future__ import annotations

import torch

from kd.distillers.base import Distiller, at_least_float32

STANDARDIZE_EPS = 1e-7  # the authors' normalize(): added to the standard deviation, which has Bessel's correction


def standardized(logits: torch.Tensor) -> torch.Tensor:
    """Each sample's logits (the last dim) minus their mean, over their standard deviation (+ eps)."""
    z = at_least_float32(logits)
    return (z - z.mean(-1, keepdim=True)) / (STANDARDIZE_EPS + z.std(-1, keepdim=True, correction=1))


class LogitDistiller(Distiller):
    """A distiller whose term reads logits, through `read`: z-scored per sample when `standardize`."""

    def __init__(self, scale: float = 1.0, standardize: bool = False) -> None:
        super().__init__(scale)
        self.standardize = standardize

    def read(self, logits: torch.Tensor) -> torch.Tensor:
        """The logits as the term reads them (any leading dims; the classes last)."""
        return standardized(logits) if self.standardize else logits
