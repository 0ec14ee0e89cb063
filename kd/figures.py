"""The report's figures: top-1 by alpha per augmentation level, and test top-1 per epoch (the paper's Figure 3).

Several seeds are drawn as mean ± the half-width of the 95% interval (error bars, shaded bands;
none with one seed); a cell without a
result is listed under the plot, never drawn as a point.
"""
from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure  # not pyplot: no global backend or figure state, PNGs via Agg
from matplotlib.ticker import MaxNLocator

from kd.stats import estimate, paired
from kd.table import grid_axes, grid_cells, teacher_accuracy

AUG_STYLE = {  # one color and label per augmentation level, the same in every figure
    "none": ("tab:gray", "none"),
    "fc": ("tab:blue", "fc (flip + crop)"),
    "fcra": ("tab:green", "fcra (fc + RandAugment)"),
    "fcta": ("tab:olive", "fcta (fc + TrivialAugmentWide)"),
    "fcaa": ("tab:cyan", "fcaa (fc + AutoAugment)"),
    "fccutout": ("tab:brown", "fccutout (fc + Cutout)"),
    "fcmixup": ("tab:pink", "fcmixup (fc + Mixup)"),
    "fccutmix": ("tab:red", "fccutmix (fc + CutMix)"),
}
METRIC_LABEL = {"final_top1": "test top-1 (%), final epoch", "test_top1_at_best_val": "test top-1 (%), best-val epoch",
                "best_top1": "test top-1 (%), epoch picked on test"}


def _style(aug: str) -> tuple[str, str]:
    return AUG_STYLE.get(aug, ("tab:purple", aug))


def _mean_ci(values: list[float]) -> tuple[float, float]:
    e = estimate(values)
    return e.mean, e.half_width or 0.0


def _note_missing(fig: Figure, missing: list[str]) -> None:
    if missing:
        fig.text(0.01, 0.01, "no result: " + ", ".join(missing), fontsize=8, color="tab:red", va="bottom")


def plot_top1_by_alpha(students: list[dict[str, Any]], metric: str, subtitle: str, path: Path) -> Path:
    """Figure 1: one line per augmentation level over alpha, with the teacher for reference."""
    cells = grid_cells(students, metric)
    augs, alphas = grid_axes(cells)
    fig = Figure(figsize=(9, 4.8))
    ax = fig.subplots()
    missing = []
    for aug in augs:
        color, label = _style(aug)
        mean, std = [], []  # NaN where a cell has no result: the line breaks there instead of bridging it
        for alpha in alphas:
            cell = cells.get((aug, alpha))
            if cell is None or not cell["values"]:
                status = "failed" if cell is not None and cell["failed"] > 0 else "missing"
                missing.append(f"{aug} α={alpha:g} ({status})")
                mean.append(math.nan)
                std.append(math.nan)
            else:
                m, s = _mean_ci(cell["values"])
                mean.append(m)
                std.append(s)
        several = any(len(c["values"]) > 1 for k, c in cells.items() if k[0] == aug)
        # No error bars (nor their legend symbol) where no cell has an interval.
        ax.errorbar(alphas, mean, yerr=std if several else None, color=color, label=label, marker="o", capsize=4)
    teacher = next((r for r in students if r.get("teacher_top1") is not None), None)
    if teacher is not None:
        per_seed = {r["seed"]: r["teacher_top1"] for r in students if r.get("teacher_top1") is not None}
        ax.axhline(sum(per_seed.values()) / len(per_seed), color="black", linestyle="--", linewidth=1,
                   label=f"teacher {teacher['teacher']} ({teacher_accuracy(students)})")
    ax.set_xticks(alphas, [f"{a:g}" for a in alphas])
    ax.set_xlabel("α, weight of the KD term: (1 − α)·CE + α·T²·KL")
    ax.set_ylabel(METRIC_LABEL[metric])
    ax.set_title("Student top-1 by α per augmentation\n" + textwrap.fill(subtitle, 70), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(title="augmentation", fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    _note_missing(fig, missing)
    fig.tight_layout(rect=(0, 0.04 if missing else 0, 1, 1))
    fig.savefig(path, dpi=150)
    return path


def plot_curves(students: list[dict[str, Any]], alpha: float, augs: list[str], subtitle: str,
                path: Path) -> Path:
    """Figure 3: test top-1 per epoch at one alpha, one line (± 95% interval band over seeds) per augmentation level."""
    fig = Figure(figsize=(9, 4.8))
    ax = fig.subplots()
    missing = []
    for aug in augs:
        runs = [r for r in students if r["aug"] == aug and float(r["alpha"]) == alpha and r["status"] == "completed"]
        if not runs:
            missing.append(f"{aug} α={alpha:g}")
            continue
        epochs = min(len(r["history"]) for r in runs)  # the epochs every seed reached
        x = [row["epoch"] for row in runs[0]["history"][:epochs]]
        stats = [_mean_ci([r["history"][i]["test/top1"] for r in runs]) for i in range(epochs)]
        mean = [m for m, _ in stats]
        color, label = _style(aug)
        ax.plot(x, mean, color=color, label=label, marker="o" if epochs < 30 else None, markersize=3)
        if len(runs) > 1:
            ax.fill_between(x, [m - s for m, s in stats], [m + s for m, s in stats], color=color, alpha=0.2)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(f"Test top-1 per epoch at α={alpha:g}\n" + textwrap.fill(subtitle, 70), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(title="augmentation", fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    _note_missing(fig, missing)
    fig.tight_layout(rect=(0, 0.04 if missing else 0, 1, 1))
    fig.savefig(path, dpi=150)
    return path


def plot_gains(students: list[dict[str, Any]], metric: str, subtitle: str, path: Path) -> Path:
    """The gains of each augmentation over none by alpha, paired by seed, with their 95% intervals (a zero line:
    an interval that crosses it is no evidence of a gain)."""
    cells = grid_cells(students, metric)
    augs, alphas = grid_axes(cells)
    fig = Figure(figsize=(9, 4.8))
    ax = fig.subplots()
    ax.axhline(0.0, color="black", linewidth=1)
    for offset, aug in enumerate(a for a in augs if a != "none"):
        x, mean, half = [], [], []
        for alpha in alphas:
            aug_cell, none_cell = cells.get((aug, alpha)), cells.get(("none", alpha))
            gain = paired(aug_cell["by_seed"], none_cell["by_seed"]) if aug_cell and none_cell else None
            if gain is not None:
                x.append(alpha + 0.01 * (offset - 0.5))  # side by side, not on top of each other
                mean.append(gain.mean)
                half.append(gain.half_width or 0.0)
        color, label = _style(aug)
        several = any(h > 0 for h in half)
        ax.errorbar(x, mean, yerr=half if several else None, color=color, label=f"{label} − none", marker="o",
                    capsize=4, linestyle="none")
    ax.set_xticks(alphas, [f"{a:g}" for a in alphas])
    ax.set_xlabel("α, weight of the KD term: (1 − α)·CE + α·T²·KL")
    ax.set_ylabel("gain over none (points of " + METRIC_LABEL[metric] + ")", fontsize=8)
    ax.set_title("Gain of each augmentation over none, paired by seed (95% intervals)\n" +
                 textwrap.fill(subtitle, 70), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    return path
