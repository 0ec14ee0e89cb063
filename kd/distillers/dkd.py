"""Decoupled knowledge distillation (Zhao et al., CVPR 2022), mdistiller's CIFAR loss.

The paper splits Hinton's KL into TCKD, a binary KL on (target, all non-target) probabilities, and
NCKD, a KL between the non-target classes' renormalised distributions: per sample,
KD = TCKD + (1 - p_t^gt) * NCKD (its reformulation of KD). DKD weights the two freely, alpha * TCKD +
beta * NCKD, both with T^2 and averaged over the batch, ramped up linearly over the first `warmup` epochs.
"""
from __future__ import annotations

from typing import Sequence, Union

import torch
import torch.nn.functional as F

from kd.distillers.base import Outputs
from kd.distillers.common import linear_warmup
from kd.distillers.logits import LogitDistiller, at_least_float32
from kd.distillers.temperature import CTKD_RANGE, CTKD_REVERSAL, CTKD_REVERSAL_EPOCHS


def target_mask(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """True at each row's target class; soft targets (Mixup/CutMix, shape (N, C)) count their argmax."""
    hard = targets.argmax(1) if targets.ndim == 2 else targets
    return torch.zeros_like(logits, dtype=torch.bool).scatter_(1, hard.reshape(-1, 1), True)


def binary_log_probs(z: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """log [p^gt, 1 - p^gt] of softmax(z), from log-sum-exps rather than log(1 - p): exact when p^gt -> 1."""
    lse = torch.logsumexp(z, 1, keepdim=True)
    log_gt = z.masked_fill(~gt, 0.0).sum(1, keepdim=True) - lse
    log_rest = torch.logsumexp(z.masked_fill(gt, float("-inf")), 1, keepdim=True) - lse
    return torch.cat([log_gt, log_rest], 1)


def tckd_nckd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
              temperature: Union[float, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(TCKD, NCKD), each T^2 * KL(teacher || student) summed over its classes and averaged over the batch."""
    z_s, z_t = at_least_float32(student_logits) / temperature, at_least_float32(teacher_logits) / temperature
    gt = target_mask(z_s, targets)
    t2 = temperature**2
    tckd = F.kl_div(binary_log_probs(z_s, gt), binary_log_probs(z_t, gt), reduction="batchmean", log_target=True)
    # The target class is left out of the softmax exactly (mdistiller subtracts 1000 from its logit); its
    # log-probabilities, -inf, are then set to 0 in both, so its KL entry is 1 * (0 - 0) and no NaN arises.
    log_q_s = F.log_softmax(z_s.masked_fill(gt, float("-inf")), 1).masked_fill(gt, 0.0)
    log_q_t = F.log_softmax(z_t.masked_fill(gt, float("-inf")), 1).masked_fill(gt, 0.0)
    nckd = F.kl_div(log_q_s, log_q_t, reduction="batchmean", log_target=True)
    return t2 * tckd, t2 * nckd


class DKD(LogitDistiller):
    """term = min((epoch + 1) / warmup, 1) * (alpha * TCKD + beta * NCKD); mdistiller's epochs count from 1.
    Both at `temperature`, or at a learned one (CTKD) when `learned_temperature`: kd/distillers/temperature.py."""

    def __init__(self, alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0, warmup: int = 20,
                 scale: float = 1.0, standardize: bool = False, learned_temperature: bool = False,
                 temperature_range: Sequence[float] = CTKD_RANGE, reversal_lambda: Sequence[float] = CTKD_REVERSAL,
                 reversal_epochs: int = CTKD_REVERSAL_EPOCHS) -> None:
        super().__init__(scale, standardize, learned_temperature, temperature_range, reversal_lambda, reversal_epochs)
        for key, value, part in (("alpha", alpha, "TCKD"), ("beta", beta, "NCKD")):
            if not value >= 0.0:
                raise ValueError(f"loss.{key}={value} must be >= 0 (DKD's weight of {part}; the paper uses "
                                 f"alpha=1, beta=8 on CIFAR-100)")
        if not temperature > 0.0:
            raise ValueError(f"loss.temperature={temperature} must be > 0 (the paper uses 4)")
        if not warmup >= 0:
            raise ValueError(f"loss.warmup={warmup} must be >= 0 epochs (0: no warmup; the paper uses 20)")
        self.alpha, self.beta, self.temperature, self.warmup = alpha, beta, temperature, warmup

    def warmup_factor(self, epoch: int) -> float:
        return linear_warmup(epoch, self.warmup)

    def term(self, student: Outputs, teacher: Outputs, targets: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
        temperature, logged = self.temperature_at(epoch, self.temperature)
        tckd, nckd = tckd_nckd(self.read(student.logits), self.read(teacher.logits), targets, temperature)
        return {"kd": self.warmup_factor(epoch) * (self.alpha * tckd + self.beta * nckd), "tckd": tckd, "nckd": nckd,
                **logged}
