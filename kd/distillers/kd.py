"""Hinton's knowledge distillation (Hinton et al. 2015), the paper's loss, as pure functions of logits and
as the KD distiller (term = T^2 * KL(p_t || p_s)).

One meaning of alpha everywhere: L = (1 - alpha) * CE(s, y) + alpha * T^2 * KL(p_t || p_s),
with the KL summed over classes and averaged over the batch ("batchmean"). The T^2
keeps the KD gradient on the same scale as CE when T changes (Hinton et al. 2015).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kd.distillers.base import Distiller, LossParts, Outputs, check_alpha


def kd_term(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(p_t || p_s) at temperature T, summed over classes, averaged over the batch."""
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_p_t = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * temperature**2


def check_temperature(temperature: float) -> None:
    if not temperature > 0.0:
        raise ValueError(f"loss.temperature={temperature} must be > 0 (the paper uses 4)")


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    targets: torch.Tensor,
    alpha: float,
    temperature: float = 4.0,
) -> LossParts:
    """Return (total, ce, kd); `teacher_logits` may be None only when alpha == 0."""
    check_alpha(alpha)
    check_temperature(temperature)
    ce = F.cross_entropy(student_logits.float(), targets)
    if teacher_logits is None:
        if alpha != 0.0:
            raise ValueError("teacher_logits are required when alpha > 0")
        return LossParts(ce, ce, torch.zeros_like(ce))
    kd = kd_term(student_logits, teacher_logits, temperature)
    return LossParts((1.0 - alpha) * ce + alpha * kd, ce, kd)


class KD(Distiller):
    """With alpha: L = (1 - alpha) * CE + alpha * T^2 * KL. mdistiller's KD (0.1 CE + 0.9 KD) is alpha=0.9."""

    def __init__(self, temperature: float = 4.0, scale: float = 1.0) -> None:
        super().__init__(scale)
        check_temperature(temperature)
        self.temperature = temperature

    def term(self, student: Outputs, teacher: Outputs, targets: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
        return {"kd": kd_term(student.logits, teacher.logits, self.temperature)}
