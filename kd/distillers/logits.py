"""How a logit distiller reads logits: in float32 at least, and z-scored per sample when `loss.standardize`.

Logit standardization (Sun et al., CVPR 2024, "Logit Standardization in Knowledge Distillation";
sunshangquan/logit-standardization-KD): a shared temperature asks the student to match the teacher's logit
range as well as their relations; z-scoring each sample's logits over the classes (subtract their mean, divide
by their standard deviation) before the temperature leaves only the relations to match. It is one switch,
`loss.standardize`, of every distiller here (KD, DKD, DIST, TTM, WTTM): each term reads its logits through
`LogitDistiller.read`, and cross-entropy always reads the raw ones. The temperature then acts on z-scores (the
authors' base temperature: 2 on CIFAR, conf/loss/kd_ls.yaml, dkd_ls.yaml).

A learned temperature (CTKD, kd/distillers/temperature.py) is the other switch here, `loss.learned_temperature`,
of the distillers whose term has one temperature (KD, DKD): such a term asks `temperature_at` for it, which is the
fixed `loss.temperature`, or the learned one with its value to log (train/temperature).
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from kd.distillers.base import Distiller, at_least_float32
from kd.distillers.temperature import (CTKD_RANGE, CTKD_REVERSAL, CTKD_REVERSAL_EPOCHS, LearnedTemperature,
                                      check_curriculum)

STANDARDIZE_EPS = 1e-7  # the authors' normalize(): added to the standard deviation, which has Bessel's correction


def standardized(logits: torch.Tensor) -> torch.Tensor:
    """Each sample's logits (the last dim) minus their mean, over their standard deviation (+ eps)."""
    z = at_least_float32(logits)
    return (z - z.mean(-1, keepdim=True)) / (STANDARDIZE_EPS + z.std(-1, keepdim=True, correction=1))


class LogitDistiller(Distiller):
    """A distiller whose term reads logits, through `read`: z-scored per sample when `standardize`; and whose
    temperature, where it has one, is learned when `learned_temperature` (with its curriculum's settings)."""

    def __init__(self, scale: float = 1.0, standardize: bool = False, learned_temperature: bool = False,
                 temperature_range: Sequence[float] = CTKD_RANGE, reversal_lambda: Sequence[float] = CTKD_REVERSAL,
                 reversal_epochs: int = CTKD_REVERSAL_EPOCHS) -> None:
        super().__init__(scale)
        self.standardize = standardize
        self.learned_temperature: Optional[LearnedTemperature] = None
        if learned_temperature:
            self.learned_temperature = LearnedTemperature(temperature_range, reversal_lambda, reversal_epochs)
        else:  # a bad curriculum is refused with the switch off too, before a grid that turns it on trains
            check_curriculum(temperature_range, reversal_lambda, reversal_epochs)

    def read(self, logits: torch.Tensor) -> torch.Tensor:
        """The logits as the term reads them (any leading dims; the classes last)."""
        return standardized(logits) if self.standardize else logits

    def temperature_at(self, epoch: int, fixed: float) -> tuple[Union[float, torch.Tensor], dict[str, torch.Tensor]]:
        """The term's temperature at main epoch `epoch`: `fixed`, or the learned one, then also returned (detached)
        as the part to log."""
        if self.learned_temperature is None:
            return fixed, {}
        temperature = self.learned_temperature(epoch)
        return temperature, {"temperature": temperature.detach()}
