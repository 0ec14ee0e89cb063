"""Weighted transformed teacher matching, WTTM (Zheng & Yang, ICLR 2024; zkxufo/TTM distiller_zoo/wttm.py).

TTM (kd/distillers/ttm.py) with each sample's KL weighted by the power sum of its teacher's probabilities,
U_gamma(p_t) = sum_c p_t^gamma (for gamma < 1 a monotone function of its Rényi entropy of order gamma): a
smoother teacher's sample weighs more, a confident one less. term = beta * mean over the batch of U_gamma * KL.
"""
from __future__ import annotations

import torch

from kd.distillers.base import Outputs
from kd.distillers.ttm import TTM, transformed_kl


class WTTM(TTM):
    """term = beta * mean(U_gamma(p_t) * KL). The authors' README combines it with CRD (`--add wttm --ttm_l 0.2
    -a 4`: 4 WTTM); those are conf/loss/wttm.yaml's gamma and beta, with alpha=0.5 loss.scale=2 for CE weight 1."""

    def __init__(self, gamma: float = 0.2, beta: float = 4.0, scale: float = 1.0, standardize: bool = False) -> None:
        super().__init__(gamma, beta, scale, standardize)

    def term(self, student: Outputs, teacher: Outputs, targets: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
        kl, weight = transformed_kl(self.read(student.logits), self.read(teacher.logits), self.gamma)
        return {"kd": self.beta * (weight * kl).mean(), "weight": weight.mean().detach()}
