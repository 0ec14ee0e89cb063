"""Multi-level logit distillation, MLKD (Jin et al., CVPR 2023; Jin-Ying/Multi-Level-Logit-Distillation,
mdistiller/distillers/KD_ours.py; its logit-standardized form in sunshangquan/logit-standardization-KD,
mdistiller/distillers/MLKD.py).

The student matches the teacher at three levels, each summed over several temperatures, on a weak view of the
batch (the pack's augmentation) and a strong one (`strong_view`, an augmentation the loop draws for the same
images: kd/training/second_views.py); both networks run on both views, and CE is taken on both:

- instance: T^2 * KL(p_t || p_s) per sample, averaged over the batch;
- batch: ||P_t P_t^T - P_s P_s^T||_F^2 / B, the B x B similarity of the samples' probabilities;
- class: ||P_t^T P_t - P_s^T P_s||_F^2 / C, the C x C similarity of the classes' probabilities.

Exactly as the authors' code computes it (the numbers it published come from it):
- the weak view's three levels are summed over `temperatures`; the strong view only enters the instance level, at
  `strong_temperatures`, plus `unmasked_temperatures` on the weak view (their strong sum's last two terms read the
  weak logits); their strong batch and class terms are computed but never added to the loss;
- the confidence masks (the teacher's max probability per sample, its summed probability per class, at or below
  their `percentile`-th percentile) are reduced away before they act: each masked term is the batch's term times
  the fraction of samples (classes) kept, `(kd_loss(...) * mask).mean()` of a scalar, about 1/2;
- `loss.standardize` (logit standardization) z-scores the instance level's logits only, as the LS authors' MLKD.

term = instance_weight * instance + batch_weight * batch + class_weight * class; with alpha their CE weight's
complement: theirs is 0.1 * CE + 0.9 * each level (conf/loss/mlkd.yaml).
"""
from __future__ import annotations

import torch

from kd.distillers.base import Outputs
from kd.distillers.common import check_weight
from kd.distillers.kd import kd_term
from kd.distillers.logits import LogitDistiller, at_least_float32


def kept_fraction(scores: torch.Tensor, percentile: float) -> torch.Tensor:
    """The fraction of `scores` at or below their `percentile`-th percentile (linear interpolation, numpy's)."""
    return (scores <= torch.quantile(scores, percentile / 100.0)).float().mean()


def similarity_gap(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
                   over_classes: bool) -> torch.Tensor:
    """||G_t - G_s||_F^2 over G's side: G = P^T P (classes; over_classes) or P P^T (samples), P = softmax(z / T)."""
    p_s = torch.softmax(at_least_float32(student_logits) / temperature, 1)
    p_t = torch.softmax(at_least_float32(teacher_logits) / temperature, 1)
    if over_classes:
        p_s, p_t = p_s.t(), p_t.t()
    return ((p_t @ p_t.t() - p_s @ p_s.t()) ** 2).sum() / p_s.shape[0]


class MLKD(LogitDistiller):
    """The three levels over two views; `strong_view` is the second view's augmentation (kd/data/)."""

    def __init__(self, strong_view, temperatures: list[float], strong_temperatures: list[float],
                 unmasked_temperatures: list[float], percentile: float = 50.0, instance_weight: float = 1.0,
                 batch_weight: float = 1.0, class_weight: float = 1.0, scale: float = 1.0,
                 standardize: bool = False) -> None:
        super().__init__(scale, standardize)
        if not callable(strong_view):
            raise ValueError(f"loss.strong_view={strong_view!r} must be an augmentation (an aug config with its "
                             f"_target_, e.g. the authors' fc + RandAugment: aug@loss.strong_view=fcra)")
        for key, values in (("temperatures", temperatures), ("strong_temperatures", strong_temperatures),
                            ("unmasked_temperatures", unmasked_temperatures)):
            if not all(t > 0.0 for t in values):
                raise ValueError(f"loss.{key}={list(values)} must all be > 0 (MLKD's CIFAR recipe: temperatures "
                                 f"[4, 3, 5, 2, 6], strong_temperatures [4, 3, 5], unmasked_temperatures [2, 6])")
        if not temperatures:
            raise ValueError("loss.temperatures=[] must name at least one temperature (the recipe's: [4, 3, 5, 2, 6])")
        if not 0.0 <= percentile <= 100.0:
            raise ValueError(f"loss.percentile={percentile} must be in [0, 100] (the authors' masks use 50)")
        for key, value in (("instance_weight", instance_weight), ("batch_weight", batch_weight),
                           ("class_weight", class_weight)):
            check_weight(key, value, "MLKD's weight of that level; the authors' is 1 with alpha=0.9")
        self.second_view = strong_view
        self.temperatures = [float(t) for t in temperatures]
        self.strong_temperatures = [float(t) for t in strong_temperatures]
        self.unmasked_temperatures = [float(t) for t in unmasked_temperatures]
        self.percentile = percentile
        self.weights = {"instance": instance_weight, "batch": batch_weight, "class": class_weight}

    def term(self, student: Outputs, teacher: Outputs, targets: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
        if student.second is None or teacher.second is None:
            raise ValueError("MLKD reads the strong view: the loop runs the student and the teacher on its "
                             "second_view (kd/training/second_views.py)")
        s, t = student.logits, teacher.logits
        p_t = torch.softmax(at_least_float32(t).detach(), 1)
        samples = kept_fraction(p_t.max(1).values, self.percentile)
        classes = kept_fraction(p_t.sum(0), self.percentile)
        zs, zt = self.read(s), self.read(t)
        zs_strong, zt_strong = self.read(student.second.logits), self.read(teacher.second.logits)
        instance = (samples * sum(kd_term(zs, zt, T) for T in self.temperatures)
                    + sum(kd_term(zs_strong, zt_strong, T) for T in self.strong_temperatures)
                    + sum(kd_term(zs, zt, T) for T in self.unmasked_temperatures))
        batch = samples * sum(similarity_gap(s, t, T, over_classes=False) for T in self.temperatures)
        klass = classes * sum(similarity_gap(s, t, T, over_classes=True) for T in self.temperatures)
        levels = {"instance": instance, "batch": batch, "class": klass}
        total = sum(self.weights[name] * value for name, value in levels.items())
        return {"kd": total, **{name: value.detach() for name, value in levels.items()}}
