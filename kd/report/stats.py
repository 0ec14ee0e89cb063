"""Confidence intervals over seeds: which differences in a grid are real.

Cells with the same seed share the student's initial weights and data stream across alpha (the
packing guarantee, kd/training/engine.py) and the initial weights across augmentations, so comparisons are
paired by seed: the interval of a difference comes from the per-seed differences, which cancels the
seed's own luck. Intervals are Student t at 95% (scipy.stats); one value has no interval.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Optional

from scipy import stats

LEVEL = 0.95


@dataclass(frozen=True)
class Estimate:
    """A mean over n seeds and the half-width of its 95% interval (None with one seed)."""

    mean: float
    half_width: Optional[float]
    n: int

    @property
    def low(self) -> float:
        return self.mean - (self.half_width or 0.0)

    @property
    def high(self) -> float:
        return self.mean + (self.half_width or 0.0)

    def format(self, signed: bool = False) -> str:
        sign = "+" if signed else ""
        if self.half_width is None:
            return f"{self.mean:{sign}.2f}"
        return f"{self.mean:{sign}.2f} ± {self.half_width:.2f} (n={self.n})"


def estimate(values: list[float]) -> Estimate:
    """Mean and the t interval's half-width: t(0.975, n - 1) * s / sqrt(n)."""
    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return Estimate(mean, None, n)
    sem = statistics.stdev(values) / math.sqrt(n)
    return Estimate(mean, float(stats.t.ppf(0.5 + LEVEL / 2, n - 1)) * sem, n)


def paired(a: dict[int, float], b: dict[int, float]) -> Optional[Estimate]:
    """a - b over the seeds both have (None if they share none)."""
    seeds = sorted(a.keys() & b.keys())
    return estimate([a[s] - b[s] for s in seeds]) if seeds else None
