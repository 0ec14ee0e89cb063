"""A learned distillation temperature: CTKD (Li et al., AAAI 2023, "Curriculum Temperature for Knowledge
Distillation"; zhengli97/CTKD), the modifier `loss.learned_temperature=true` of KD and DKD (kd/distillers/logits.py).

One scalar parameter `raw` (CTKD's Global_T, initialised to 1) sets the temperature
T = low + (high - low) * sigmoid(raw), which stays inside `loss.temperature_range` (the authors' t_start=1 and
t_end=20: (1, 21)). It trains with the student, in the student's optimizer (lr, momentum, weight decay and
schedule: the authors put it in the same SGD), but through a gradient-reversal layer: its gradient is multiplied by
-lambda, so it ascends the distillation loss the student descends (an adversarial, harder temperature). lambda
grows along a cosine from `loss.reversal_lambda[0]` to `[1]` over `loss.reversal_epochs` epochs, then stays
(the authors' CosineDecay from 0 to -1 over 10 epochs, their sign folded into the layer; their epochs count from
1, kd's from 0, so kd's epoch 0 is their epoch 1, lambda = (1 - cos(pi/10)) / 2 there).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

CTKD_RANGE = (1.0, 21.0)  # zhengli97/CTKD train_student.py: --t_start 1, --t_end 20 (T = 1 + 20 * sigmoid)
CTKD_REVERSAL = (0.0, 1.0)  # scripts/run_cifar_distill.sh: --decay_max 0 --decay_min -1, sign folded in
CTKD_REVERSAL_EPOCHS = 10  # scripts/run_cifar_distill.sh: --decay_loops 10


class _ReverseGradient(torch.autograd.Function):
    """The identity forward; backward, the gradient times -lambda (Ganin and Lempitsky's layer)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, lam: float) -> torch.Tensor:
        ctx.lam = lam
        return x.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * -ctx.lam, None


def reverse_gradient(x: torch.Tensor, lam: float) -> torch.Tensor:
    """`x`, whose gradient is multiplied by -lam on the way back."""
    return _ReverseGradient.apply(x, lam)


def reversal_weight(epoch: int, start: float, end: float, epochs: int) -> float:
    """lambda at main epoch `epoch` (from 0): a cosine from `start` to `end` reached at epoch `epochs` - 1, then
    `end` (CTKD's CosineDecay.get_value(epoch + 1), in its form); `epochs` = 0: `end` from the first epoch."""
    if epochs == 0:
        return end
    i = min(epoch + 1, epochs)
    return (math.cos(i * math.pi / epochs) + 1.0) * 0.5 * (start - end) + end


def pair(key: str, value: Sequence[float], meaning: str) -> tuple[float, float]:
    values = tuple(float(v) for v in value)
    if len(values) != 2 or not all(math.isfinite(v) for v in values):
        raise ValueError(f"loss.{key}={list(value)} must be two finite numbers, {meaning}")
    return values


def check_curriculum(temperature_range: Sequence[float], reversal_lambda: Sequence[float],
                     reversal_epochs: int) -> tuple[tuple[float, float], tuple[float, float]]:
    """The curriculum's settings as floats, or a ValueError naming the key that is wrong."""
    low, high = pair("temperature_range", temperature_range, "[lowest, highest] temperature (CTKD's: [1, 21])")
    if not 0.0 < low < high:
        raise ValueError(f"loss.temperature_range={[low, high]} must have 0 < lowest < highest (CTKD's: [1, 21])")
    lam = pair("reversal_lambda", reversal_lambda, "lambda at the first epoch and from loss.reversal_epochs on "
                                                   "(CTKD's: [0, 1])")
    if not min(lam) >= 0.0:
        raise ValueError(f"loss.reversal_lambda={list(lam)} must be >= 0: the layer reverses the temperature's "
                         "gradient, scaled by lambda (0: the temperature does not learn; CTKD's: [0, 1])")
    if not (isinstance(reversal_epochs, int) and reversal_epochs >= 0):
        raise ValueError(f"loss.reversal_epochs={reversal_epochs} must be an integer >= 0 (epochs of the cosine "
                         "ramp of lambda; 0: none; CTKD's: 10)")
    return (low, high), lam


class LearnedTemperature(nn.Module):
    """T = low + (high - low) * sigmoid(raw), raw's gradient reversed and scaled by lambda(epoch)."""

    def __init__(self, temperature_range: Sequence[float] = CTKD_RANGE, reversal_lambda: Sequence[float] = CTKD_REVERSAL,
                 reversal_epochs: int = CTKD_REVERSAL_EPOCHS) -> None:
        super().__init__()
        (self.low, self.high), self.reversal = check_curriculum(temperature_range, reversal_lambda, reversal_epochs)
        self.reversal_epochs = reversal_epochs
        self.raw = nn.Parameter(torch.tensor(1.0))  # CTKD's Global_T: torch.ones(1)

    def forward(self, epoch: int) -> torch.Tensor:
        lam = reversal_weight(epoch, *self.reversal, self.reversal_epochs)
        return self.low + (self.high - self.low) * torch.sigmoid(reverse_gradient(self.raw, lam))
