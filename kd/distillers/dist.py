"""DIST (Huang et al., NeurIPS 2022, "Knowledge Distillation from A Stronger Teacher"; hunto/DIST_KD, its CIFAR
code in hunto/image_classification_sota lib/models/losses/dist_kd.py).

KL asks the student to match the teacher's probabilities exactly; DIST asks only that they rise and fall
together, which a much weaker student can do: one minus the Pearson correlation of the softmax probabilities at
temperature tau, between the classes of each sample (inter-class) and between the samples of each class
(intra-class, over the batch), each times tau^2:

    term = beta * tau^2 * (1 - mean_i rho(p_s[i, :], p_t[i, :])) + gamma * tau^2 * (1 - mean_c rho(p_s[:, c], p_t[:, c]))
"""
from __future__ import annotations

import torch

from kd.distillers.base import Outputs
from kd.distillers.common import check_weight
from kd.distillers.logits import LogitDistiller, at_least_float32

PEARSON_EPS = 1e-8  # the authors' guard in the denominator, kept so that kd's term is theirs to float64 rounding


def pearson_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Each row's Pearson correlation of a with b: the cosine of the centred rows, eps-guarded as the authors'."""
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + PEARSON_EPS)


def inter_intra(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(inter-class, intra-class) relation losses, each tau^2 * (1 - mean correlation)."""
    p_s = torch.softmax(at_least_float32(student_logits) / tau, 1)
    p_t = torch.softmax(at_least_float32(teacher_logits) / tau, 1)
    inter = 1.0 - pearson_rows(p_s, p_t).mean()
    intra = 1.0 - pearson_rows(p_s.t(), p_t.t()).mean()
    return tau**2 * inter, tau**2 * intra


class DIST(LogitDistiller):
    """term = beta * inter + gamma * intra. The authors' CIFAR recipe (1.0 CE + 2.0 DIST with beta = gamma = 1,
    tau = 4) is alpha=0.5 loss.scale=2 with beta = gamma = 2 (conf/loss/dist.yaml)."""

    def __init__(self, beta: float = 1.0, gamma: float = 1.0, tau: float = 4.0, scale: float = 1.0,
                 standardize: bool = False) -> None:
        super().__init__(scale, standardize)
        check_weight("beta", beta, "DIST's inter-class weight; its CIFAR recipe is 2")
        check_weight("gamma", gamma, "DIST's intra-class weight; its CIFAR recipe is 2")
        if not tau > 0.0:
            raise ValueError(f"loss.tau={tau} must be > 0 (DIST's temperature; its CIFAR recipe uses 4)")
        self.beta, self.gamma, self.tau = beta, gamma, tau

    def term(self, student: Outputs, teacher: Outputs, targets: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
        inter, intra = inter_intra(self.read(student.logits), self.read(teacher.logits), self.tau)
        return {"kd": self.beta * inter + self.gamma * intra, "inter": inter.detach(), "intra": intra.detach()}
