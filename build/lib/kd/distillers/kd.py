"""Hinton's knowledge distillation (Hinton et al. 2015), the paper's loss: term = T^2 * KL(p_t || p_s)."""
from __future__ import annotations

import torch

from kd.distillers.base import Distiller, Outputs
from kd.losses import kd_term


class KD(Distiller):
    """With alpha: L = (1 - alpha) * CE + alpha * T^2 * KL. mdistiller's KD (0.1 CE + 0.9 KD) is alpha=0.9."""

    def __init__(self, temperature: float = 4.0, scale: float = 1.0) -> None:
        super().__init__(scale)
        if not temperature > 0.0:
            raise ValueError(f"loss.temperature={temperature} must be > 0 (the paper uses 4)")
        self.temperature = temperature

    def term(self, student: Outputs, teacher: Outputs, targets: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
        return {"kd": kd_term(student.logits, teacher.logits, self.temperature)}
