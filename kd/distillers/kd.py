"""Hinton's knowledge distillation (Hinton et al. 2015), the paper's loss, as pure functions of logits and
as the KD distiller (term = T^2 * KL(p_t || p_s)).

One meaning of alpha everywhere: L = (1 - alpha) * CE(s, y) + alpha * T^2 * KL(p_t || p_s),
with the KL summed over classes and averaged over the batch ("batchmean"). The T^2
keeps the KD gradient on the same scale as CE when T changes (Hinton et al. 2015).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from typing import Optional, Sequence, Union

from kd.distillers.base import Distiller, LossParts, Outputs, PackLosses, check_alpha
from kd.distillers.logits import LogitDistiller, at_least_float32
from kd.distillers.temperature import CTKD_RANGE, CTKD_REVERSAL, CTKD_REVERSAL_EPOCHS


def kd_term(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
            temperature: Union[float, torch.Tensor]) -> torch.Tensor:
    """T^2 * KL(p_t || p_s) at temperature T, summed over classes, averaged over the batch."""
    log_p_s = F.log_softmax(at_least_float32(student_logits) / temperature, dim=1)
    log_p_t = F.log_softmax(at_least_float32(teacher_logits) / temperature, dim=1)
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


class KD(LogitDistiller):
    """With alpha: L = (1 - alpha) * CE + alpha * T^2 * KL. mdistiller's KD (0.1 CE + 0.9 KD) is alpha=0.9.
    T is `temperature`, or learned (CTKD) when `learned_temperature`: kd/distillers/temperature.py."""

    def __init__(self, temperature: float = 4.0, scale: float = 1.0, standardize: bool = False,
                 learned_temperature: bool = False, temperature_range: Sequence[float] = CTKD_RANGE,
                 reversal_lambda: Sequence[float] = CTKD_REVERSAL, reversal_epochs: int = CTKD_REVERSAL_EPOCHS) -> None:
        super().__init__(scale, standardize, learned_temperature, temperature_range, reversal_lambda, reversal_epochs)
        check_temperature(temperature)
        self.temperature = temperature

    def term(self, student: Outputs, teacher: Outputs, targets: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
        temperature, logged = self.temperature_at(epoch, self.temperature)
        return {"kd": kd_term(self.read(student.logits), self.read(teacher.logits), temperature), **logged}

    def pack_forward(self, logits: torch.Tensor, teachers: list[Optional[Outputs]], targets: torch.Tensor,
                     alphas: list[float], epoch: int = 0) -> PackLosses:
        """All students' losses in one pass over their stacked logits: the ops of one student's loss, not K of them
        (a launch-bound GPU step pays per op). Each equals `forward`'s within float reassociation."""
        # A subclass's CE is written for one student; a learned temperature is each student's own.
        if type(self).cross_entropy is not Distiller.cross_entropy or self.learned_temperature is not None:
            return super().pack_forward(logits, teachers, targets, alphas, epoch)
        for alpha in alphas:
            check_alpha(alpha)
        n, batch = logits.shape[:2]
        flat = logits.float().reshape(n * batch, -1)
        repeated = targets.repeat(n) if targets.ndim == 1 else targets.repeat(n, 1)  # hard, or Mixup's soft ones
        ce = F.cross_entropy(flat, repeated, reduction="none").view(n, batch).mean(1)
        distilling = [i for i, alpha in enumerate(alphas) if alpha > 0]
        weights = self._alpha_weights(tuple(alphas), logits.device)
        if distilling:
            if any(teachers[i] is None for i in distilling):
                raise ValueError("the teacher's outputs are required when alpha > 0")
            kd = self._pack_term(logits, [teachers[i].logits if i in distilling else None for i in range(n)])
            if len(distilling) < n:  # the others' term is 0 (their teacher never ran), as forward's
                kd = torch.where(weights["distils"], kd, 0.0)
        else:
            kd = torch.zeros_like(ce)
        total = weights["ce"] * ce + weights["kd"] * kd
        return PackLosses(self.scale * total, ce, kd, [{} for _ in alphas])

    def _pack_term(self, logits: torch.Tensor, teachers: list[Optional[torch.Tensor]]) -> torch.Tensor:
        """T^2 * KL(p_t || p_s) per student; one teacher's softmax where they share one view (its tensor)."""
        given = [t for t in teachers if t is not None]
        if all(t is given[0] for t in given):
            teacher = given[0]
        else:
            teacher = torch.stack([t if t is not None else given[0] for t in teachers])
        log_p_s = F.log_softmax(self.read(logits).float() / self.temperature, dim=-1)
        log_p_t = F.log_softmax(self.read(teacher).float() / self.temperature, dim=-1)
        return (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1).mean(-1) * self.temperature**2

    def _alpha_weights(self, alphas: tuple[float, ...], device: torch.device) -> dict[str, torch.Tensor]:
        """1 - alpha, alpha and alpha > 0 as device tensors, made once per pack: a tensor built from Python
        numbers every step is a copy from the host, which a captured step cannot hold."""
        cache = self.__dict__.setdefault("_alpha_cache", {})
        key = (alphas, device)
        if key not in cache:
            alpha = torch.tensor(alphas, dtype=torch.float32, device=device)
            cache[key] = {"ce": 1.0 - alpha, "kd": alpha, "distils": alpha > 0}
        return cache[key]
