"""Hinton's distillation loss as a pure function of logits.

One meaning of alpha everywhere: L = (1 - alpha) * CE(s, y) + alpha * T^2 * KL(p_t || p_s),
with the KL summed over classes and averaged over the batch ("batchmean"). The T^2
keeps the KD gradient on the same scale as CE when T changes (Hinton et al. 2015).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class LossParts(NamedTuple):
    total: torch.Tensor
    ce: torch.Tensor
    kd: torch.Tensor


def check_kd_params(alpha: float, temperature: float | None) -> None:
    """Reject settings that would silently train something else than asked (None: a loss without a temperature)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha} is outside [0, 1]; set alpha=0 (plain CE) .. alpha=1 (pure KD)")
    if temperature is not None and not temperature > 0.0:
        raise ValueError(f"loss.temperature={temperature} must be > 0 (the paper uses 4)")


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    targets: torch.Tensor,
    alpha: float,
    temperature: float = 4.0,
) -> LossParts:
    """Return (total, ce, kd); `teacher_logits` may be None only when alpha == 0."""
    check_kd_params(alpha, temperature)
    ce = F.cross_entropy(student_logits.float(), targets)
    if teacher_logits is None:
        if alpha != 0.0:
            raise ValueError("teacher_logits are required when alpha > 0")
        return LossParts(ce, ce, torch.zeros_like(ce))
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_p_t = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    kd = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * temperature**2
    return LossParts((1.0 - alpha) * ce + alpha * kd, ce, kd)


def cross_entropy(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    targets: torch.Tensor,
    alpha: float,
) -> LossParts:
    """Plain cross-entropy: the teacher's own training loss (it has no teacher, so alpha must be 0)."""
    if alpha != 0.0:
        raise ValueError(f"the cross_entropy loss has no KD term, so alpha={alpha} would be ignored; use alpha=0")
    ce = F.cross_entropy(student_logits.float(), targets)
    return LossParts(ce, ce, torch.zeros_like(ce))
