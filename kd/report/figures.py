"""The report's figures: top-1 by alpha per augmentation level, and test top-1 per epoch (the paper's Figure 3).

Several seeds are drawn as mean ± the half-width of the 95% interval (error bars, shaded bands;
none with one seed, nor their legend symbols); a cell without a result is listed under the plot,
never drawn as a point. Each plot returns its Figure; kd/report/cli.py saves it.

Y ranges: a test top-1 moves in steps of one test image (100 / n points), so an axis fitted tightly to
close values would blow a one-image difference up to its full height. Every top-1 axis spans at least
MIN_SPAN_IMAGES images' worth; the curves add a panel on the last epochs, where the full run's range
(from chance upwards) would hide the final gap.
"""
from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure  # not pyplot: no global backend or figure state, PNGs via Agg
from matplotlib.ticker import MaxNLocator

from kd.report.axes import row_value
from kd.report.stats import estimate, paired
from kd.report.table import grid_axes, grid_cells, row_order, teacher_accuracy

AUG_STYLE = {  # one color and label per augmentation level, the same in every figure
    "none": ("tab:gray", "none"),
    "fc": ("tab:blue", "fc (flip + crop)"),
    "fcra": ("tab:green", "fcra (fc + RandAugment)"),
    "fcta": ("tab:olive", "fcta (fc + TrivialAugmentWide)"),
    "fcaa": ("tab:cyan", "fcaa (fc + AutoAugment)"),
    "fccutout": ("tab:brown", "fccutout (fc + Cutout)"),
    "fcmixup": ("tab:pink", "fcmixup (fc + Mixup)"),
    "fccutmix": ("tab:red", "fccutmix (fc + CutMix)"),
    "fccutmixpick": ("darkred", "fccutmixpick (fc + CutMixPick)"),
}
MIN_SPAN_IMAGES = 20  # a top-1 axis spans at least this many test images' worth: one image <= 1/20 of its height
ZOOM_EPOCHS = 0.25  # the curves' second panel: the last quarter of the epochs
MIN_ZOOM_EPOCHS = 8  # fewer epochs than this: one panel (the last quarter would hold an epoch or two)
DODGE_SPREAD = 0.4  # top1_by_alpha: a column's points span at most this fraction of the narrowest gap between alphas
DODGE_STEP = 0.08  # ... and two rows' points stand at most this fraction of it apart (±0.01 for two rows, gap 0.25)
METRIC_LABEL = {"final_top1": "test top-1 (%), final epoch", "test_top1_at_best_val": "test top-1 (%), best-val epoch",
                "best_top1": "test top-1 (%), epoch picked on test"}


def _style(aug: str) -> tuple[str, str]:
    return AUG_STYLE.get(aug, ("tab:purple", aug))


def _row_styles(values: list[str], row: str) -> dict[str, tuple[str, str]]:
    """Each row's (color, label): an augmentation's own everywhere; another key's values (losses, pairs) in
    matplotlib's default cycle, in the table's order."""
    if row == "aug":
        return {v: _style(v) for v in values}
    return {v: (f"C{i % 10}", v) for i, v in enumerate(values)}


def alpha_label(students: list[dict[str, Any]]) -> str:
    """The α axis in the words of the losses the figure shows (results.json's `loss`: the distiller's class)."""
    names = sorted({r["loss"] for r in students if r.get("loss")}) or ["KD"]
    terms = ["T²·KL" if n == "KD" else f"{n}'s term" for n in names]
    if len(names) == 1:
        return f"α, weight of the {names[0]} term: (1 − α)·CE + α·{terms[0]}"
    return f"α, weight of each loss's term: (1 − α)·CE + α·term ({', '.join(f'{n}: {t}' for n, t in zip(names, terms))})"


def _mean_ci(values: list[float]) -> tuple[float, float]:
    e = estimate(values)
    return e.mean, e.half_width or 0.0


def test_images(students: list[dict[str, Any]]) -> int | None:
    """The test split's size (one image = 100 / n points); None for results written before kd recorded it."""
    sizes = {r["test_images"] for r in students if "test_images" in r}
    return sizes.pop() if len(sizes) == 1 else None


def y_range(values: list[float], n_test: int | None, floor: float = 0.0, ceiling: float = 100.0
            ) -> tuple[float, float]:
    """Limits around `values` (with a 10% margin) spanning at least MIN_SPAN_IMAGES test images' worth."""
    finite = [v for v in values if math.isfinite(v)]
    low, high = min(finite), max(finite)
    span = max(high - low, MIN_SPAN_IMAGES * 100.0 / n_test if n_test else 0.0) * 1.2
    middle = (low + high) / 2
    low, high = middle - span / 2, middle + span / 2
    if low < floor:  # shift, not clip: the span is kept
        low, high = floor, min(ceiling, floor + span)
    if high > ceiling:
        low, high = max(floor, ceiling - span), ceiling
    return low, high


def dodge(alphas: list[float], rows: int) -> list[float]:
    """Each row's small shift along alpha, centred on the true alpha, so that rows with the same top-1 at an alpha
    stand side by side instead of hiding each other (the ticks stay at the true alphas)."""
    gap = min((b - a for a, b in zip(alphas, alphas[1:])), default=1.0)
    step = gap * min(DODGE_STEP, DODGE_SPREAD / rows)
    return [step * (i - (rows - 1) / 2) for i in range(rows)]


def _caption(fig: Figure, missing: list[str], n_test: int | None) -> None:
    """Under the plot: the test-set size (the step of every top-1), and the cells without a result."""
    lines = []
    if n_test:
        lines.append(f"test set: n = {n_test} images; one image = {100.0 / n_test:.2g} points of top-1")
    if missing:
        lines.append("no result: " + ", ".join(missing))
    fig.text(0.01, 0.01, "\n".join(lines), fontsize=8, va="bottom", color="tab:red" if missing else "black")
    fig.tight_layout(rect=(0, 0.03 * len(lines), 1, 1))


def plot_top1_by_alpha(students: list[dict[str, Any]], metric: str, subtitle: str, row: str = "aug") -> Figure:
    """Figure 1: one line per row of the table (augmentation level, or loss, ...) over alpha, with the teacher
    for reference."""
    cells = grid_cells(students, metric, row)
    augs, alphas = grid_axes(cells, row_order(students, row))
    styles = _row_styles(augs, row)
    fig = Figure(figsize=(9, 4.8))
    ax = fig.subplots()
    missing, drawn = [], []
    for aug, shift in zip(augs, dodge(alphas, len(augs))):
        color, label = styles[aug]
        mean, std = [], []  # NaN where a cell has no result: the line breaks there instead of bridging it
        for alpha in alphas:
            cell = cells.get((aug, alpha))
            if cell is None or not cell["values"]:
                status = next((k for k in ("failed", "interrupted") if cell is not None and cell[k] > 0), "missing")
                missing.append(f"{aug} α={alpha:g} ({status})")
                mean.append(math.nan)
                std.append(math.nan)
            else:
                m, s = _mean_ci(cell["values"])
                mean.append(m)
                std.append(s)
        several = any(len(c["values"]) > 1 for k, c in cells.items() if k[0] == aug)
        # No error bars (nor their legend symbol) where no cell has an interval; none past 0 or 100.
        yerr = [[min(s, m) for m, s in zip(mean, std)], [min(s, 100.0 - m) for m, s in zip(mean, std)]]
        ax.errorbar([a + shift for a in alphas], mean, yerr=yerr if several else None, color=color, label=label,
                    marker="o", capsize=4)
        drawn += [v for m, (lo, hi) in zip(mean, zip(*yerr)) for v in (m - lo, m + hi)] if several else mean
    teacher = next((r for r in students if r.get("teacher_top1") is not None), None)
    if teacher is not None:
        per_seed = {r["seed"]: r["teacher_top1"] for r in students if r.get("teacher_top1") is not None}
        teacher_mean = sum(per_seed.values()) / len(per_seed)
        ax.axhline(teacher_mean, color="black", linestyle="--", linewidth=1,
                   label=f"teacher {teacher['teacher']} ({teacher_accuracy(students)})")
        drawn.append(teacher_mean)
    n_test = test_images(students)
    ax.set_ylim(*y_range(drawn, n_test))
    ax.set_xticks(alphas, [f"{a:g}" for a in alphas])
    if len(alphas) == 1:  # else the axis would span only the rows' small shifts, as if they were alphas apart
        ax.set_xlim(alphas[0] - 0.5, alphas[0] + 0.5)
    ax.set_xlabel(textwrap.fill(alpha_label(students), 90), fontsize=9)
    ax.set_ylabel(METRIC_LABEL[metric])
    ax.set_title(f"Student top-1 by α per {'augmentation' if row == 'aug' else row}\n" + textwrap.fill(subtitle, 70),
                 fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(title="augmentation" if row == "aug" else row, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    _caption(fig, missing, n_test)
    return fig


def plot_curves(students: list[dict[str, Any]], alpha: float, subtitle: str, row: str = "aug") -> Figure:
    """Figure 3: test top-1 per epoch at one alpha, one line (± 95% interval band over seeds) per row of the
    table (augmentation level, or loss, ...); left the whole run, right its last epochs, where the final gap shows.
    A first stage's epochs are not drawn: the main schedule's epoch 1 is the first point of every line."""
    augs, _ = grid_axes(grid_cells(students, row=row), row_order(students, row))
    styles = _row_styles(augs, row)
    epochs_run = max((len(r["history"]) for r in students if r["status"] == "completed"), default=0)
    zoom = epochs_run >= MIN_ZOOM_EPOCHS  # a short run's last quarter is an epoch or two: nothing to zoom into
    fig = Figure(figsize=(11, 4.8) if zoom else (8, 4.8))
    whole, last = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]}) if zoom else (fig.subplots(),) * 2
    missing, tail, tail_start, whole_values, last_epoch = [], [], None, [], 1
    for aug in augs:
        runs = [r for r in students
                if row_value(r, row) == aug and float(r["alpha"]) == alpha and r["status"] == "completed"]
        if not runs:
            missing.append(f"{aug} α={alpha:g}")
            continue
        epochs = min(len(r["history"]) for r in runs)  # the epochs every seed reached
        x = [row["epoch"] for row in runs[0]["history"][:epochs]]
        stats = [_mean_ci([r["history"][i]["test/top1"] for r in runs]) for i in range(epochs)]
        # An interval of a few seeds can reach past 0 or 100; a top-1 cannot.
        low, high = [max(0.0, m - s) for m, s in stats], [min(100.0, m + s) for m, s in stats]
        whole_values += low + high
        last_epoch = max(last_epoch, x[-1])
        start = min(epochs - 1, int(epochs * (1 - ZOOM_EPOCHS)))
        tail_start = start if tail_start is None else min(tail_start, start)
        tail += low[start:] + high[start:]
        color, label = styles[aug]
        first = max(int(r.get("first_stage_epochs", 0)) for r in runs)
        label += f" (after {first} first-stage epochs)" if first else ""
        for ax in dict.fromkeys((whole, last)):
            ax.plot(x, [m for m, _ in stats], color=color, label=label, marker="o" if epochs < 30 else None,
                    markersize=3)
            if len(runs) > 1:
                ax.fill_between(x, low, high, color=color, alpha=0.2)
    n_test = test_images(students)
    if tail and zoom:
        last.set_xlim(tail_start + 0.5, last_epoch + 0.5)
        last.set_ylim(*y_range(tail, n_test))
    if tail:
        whole.set_xlim(0.5, last_epoch + 0.5)
        whole.set_ylim(*y_range(whole_values, n_test))
    panels = ((whole, "all epochs"), (last, f"last {ZOOM_EPOCHS:.0%} of the epochs")) if zoom else ((whole, ""),)
    for ax, title in panels:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    whole.set_ylabel("test top-1 (%)")
    fig.suptitle(f"Test top-1 per epoch at α={alpha:g}\n" + textwrap.fill(subtitle, 90), fontsize=10)
    last.legend(title="augmentation" if row == "aug" else row, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    _caption(fig, missing, n_test)
    return fig


def plot_gains(students: list[dict[str, Any]], metric: str, subtitle: str) -> Figure:
    """The gains of each augmentation over none by alpha, paired by seed, with their 95% intervals (a zero line:
    an interval that crosses it is no evidence of a gain)."""
    cells = grid_cells(students, metric)
    augs, alphas = grid_axes(cells)
    fig = Figure(figsize=(9, 4.8))
    ax = fig.subplots()
    ax.axhline(0.0, color="black", linewidth=1)
    drawn, intervals = [0.0], False
    others = [a for a in augs if a != "none"]
    width = min(0.15, 0.6 / len(others))  # each alpha is one slot; its augmentations side by side within it
    for offset, aug in enumerate(others):
        x, mean, half = [], [], []
        for slot, alpha in enumerate(alphas):
            aug_cell, none_cell = cells.get((aug, alpha)), cells.get(("none", alpha))
            gain = paired(aug_cell["by_seed"], none_cell["by_seed"]) if aug_cell and none_cell else None
            if gain is not None:
                x.append(slot + width * (offset - (len(others) - 1) / 2))
                mean.append(gain.mean)
                half.append(gain.half_width or 0.0)
        color, label = _style(aug)
        several = any(h > 0 for h in half)
        intervals |= several
        ax.errorbar(x, mean, yerr=half if several else None, color=color, label=f"{label} − none", marker="o",
                    capsize=4, linestyle="none")
        drawn += [m + sign * h for m, h in zip(mean, half) for sign in (-1, 1)]
    n_test = test_images(students)
    ax.set_ylim(*y_range(drawn, n_test, floor=-100.0))
    # alphas as slots, not as positions on a number line: with one alpha the augmentations would otherwise
    # spread along an axis that reads as alpha
    ax.set_xticks(range(len(alphas)), [f"{a:g}" for a in alphas])
    ax.set_xlim(-0.5, len(alphas) - 0.5)
    ax.set_xlabel(textwrap.fill(alpha_label(students), 90), fontsize=9)
    ax.set_ylabel("gain over none (points of " + METRIC_LABEL[metric] + ")", fontsize=8)
    ax.set_title("Gain of each augmentation over none, paired by seed" + (" (95% intervals)" if intervals else "")
                 + "\n" + textwrap.fill(subtitle, 70), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    _caption(fig, [], n_test)
    return fig
