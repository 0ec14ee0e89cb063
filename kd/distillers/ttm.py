"""Transformed teacher matching, TTM (Zheng & Yang, ICLR 2024; zkxufo/TTM distiller_zoo/ttm.py).

KD's temperature on the teacher is a power transform of its probabilities, softmax(z_t / T) = p_t^gamma
renormalised with gamma = 1/T; TTM keeps it there and drops it from the student (T = 1 on its side), which the
paper shows adds a Rényi-entropy regulariser to KD. Per sample, KL(p_t^gamma / sum(p_t^gamma) || p_s), averaged
over the batch; no T^2 (the authors' code has none). term = beta * that.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kd.distillers.base import Outputs
from kd.distillers.common import check_weight
from kd.distillers.logits import LogitDistiller, at_least_float32


def transformed_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                   gamma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample: (KL(q_t || p_s) with q_t = p_t^gamma renormalised, and the power sum sum_c p_t^gamma).
    q_t is softmax(gamma * log p_t) and log sum p_t^gamma a log-sum-exp: no power of a probability underflows."""
    log_p_s = F.log_softmax(at_least_float32(student_logits), 1)
    powered = gamma * F.log_softmax(at_least_float32(teacher_logits), 1)
    log_q_t = F.log_softmax(powered, 1)
    kl = (log_q_t.exp() * (log_q_t - log_p_s)).sum(1)
    return kl, torch.logsumexp(powered, 1).exp()


def check_gamma(gamma: float) -> None:
    if not gamma > 0.0:
        raise ValueError(f"loss.gamma={gamma} must be > 0 (the power of the teacher's probabilities, 1/T; "
                         f"the authors' CIFAR example uses 0.1)")


class TTM(LogitDistiller):
    """term = beta * mean over the batch of KL(p_t^gamma renormalised || p_s). The authors' README recipe
    (`--distill ttm --ttm_l 0.1 -r 1 -b 45 -a 0`: CE + 45 TTM) is alpha=0.5 loss.scale=2 (conf/loss/ttm.yaml)."""

    def __init__(self, gamma: float = 0.1, beta: float = 45.0, scale: float = 1.0, standardize: bool = False) -> None:
        super().__init__(scale, standardize)
        check_gamma(gamma)
        check_weight("beta", beta, "the term's weight; the authors' CIFAR examples use 45 for TTM, 4 for WTTM")
        self.gamma, self.beta = gamma, beta

    def term(self, student: Outputs, teacher: Outputs, targets: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
        kl, _ = transformed_kl(self.read(student.logits), self.read(teacher.logits), self.gamma)
        return {"kd": self.beta * kl.mean()}
