"""Hinton's distillation loss as a pure function of logits (the KD distiller's term: kd/distillers/kd.py).

One meaning of alpha everywhere: L = (1 - alpha) * CE(s, y) + alpha * T^2 * KL(p_t || p_s),
with the KL summed over classes and averaged over the batch ("batchmean"). The T^2
keeps the KD gradient on the same scale as CE when T changes (Hinton et al. 2015).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kd.distillers.base import LossParts, check_alpha


def kd_term(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(p_t || p_s) at temperature T, summed over classes, averaged over the batch."""
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_p_t = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * temperature**2


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    targets: torch.Tensor,
    alpha: float,
    temperature: float = 4.0,
) -> LossParts:
    """Return (total, ce, kd); `teacher_logits` may be None only when alpha == 0."""
    check_alpha(alpha)
    if not temperature > 0.0:
        raise ValueError(f"loss.temperature={temperature} must be > 0 (the paper uses 4)")
    ce = F.cross_entropy(student_logits.float(), targets)
    if teacher_logits is None:
        if alpha != 0.0:
            raise ValueError("teacher_logits are required when alpha > 0")
        return LossParts(ce, ce, torch.zeros_like(ce))
    kd = kd_term(student_logits, teacher_logits, temperature)
    return LossParts((1.0 - alpha) * ce + alpha * kd, ce, kd)
