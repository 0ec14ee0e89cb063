"""The paper's three claims checked on a sweep (claims.md), each with its numbers and a verdict at 95%.

1. Augmentation improves KD: fcra - none and fc - none at each alpha.
2. Alpha matters little under augmentation: per aug, the spread of the alpha means and the
   largest paired difference between two alphas, against an equivalence margin (points of top-1).
3. Alpha = 1 (pure KD) gains least: the gain fcra - none at alpha = 1 against the other alphas' gains.
4. Not the paper's, Wang et al.'s (NeurIPS 2022): the teacher's T. stddev orders the augmentation levels as
   the students' test losses do (kd/report/diagnostics.py: Spearman's rho, an exact one-sided permutation p).

Every difference is paired by seed (kd/report/stats.py). A one-sided claim is *supported* when the whole
95% interval lies on the claimed side, *contradicted* when it lies wholly on the other side, and
*inconclusive* otherwise, or with one seed (no interval). "Matters little" is supported when every
interval lies inside (-margin, +margin) and contradicted when one lies wholly outside it. A claim that the sweep's
grid cannot test (no aug=none row, one alpha, fewer than three augmentations) is *not applicable*, with the reason.
"""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Optional

from kd.report.axes import other_axes, split_by_axes
from kd.report.diagnostics import SIGNIFICANCE, tstddev_orders_augmentations
from kd.report.stats import Estimate, estimate, paired
from kd.report.table import METRICS, grid_cells

SUPPORTED, CONTRADICTED, INCONCLUSIVE, NOT_APPLICABLE = "supported", "contradicted", "inconclusive", "not applicable"


def seed_values(students: list[dict[str, Any]], metric: str) -> dict[tuple[str, float], dict[int, float]]:
    """{(aug, alpha): {seed: value}} over the completed student jobs (two of one seed are refused: grid_cells)."""
    return {key: cell["by_seed"] for key, cell in grid_cells(students, metric).items() if cell["by_seed"]}


def greater_than_zero(e: Optional[Estimate]) -> str:
    if e is None or e.half_width is None:
        return INCONCLUSIVE
    return SUPPORTED if e.low > 0 else CONTRADICTED if e.high < 0 else INCONCLUSIVE


def within(e: Optional[Estimate], margin: float) -> str:
    if e is None or e.half_width is None:
        return INCONCLUSIVE
    if -margin < e.low and e.high < margin:
        return SUPPORTED
    return CONTRADICTED if e.low >= margin or e.high <= -margin else INCONCLUSIVE


def overall(verdicts: list[str]) -> str:
    if verdicts and all(v == SUPPORTED for v in verdicts):
        return SUPPORTED
    return CONTRADICTED if CONTRADICTED in verdicts else INCONCLUSIVE


def _fmt(e: Optional[Estimate]) -> str:
    if e is None:
        return "no seed with both results"
    return e.format(signed=True) + ("" if e.half_width is not None else " (one seed: no interval)")


def missing_rows(cells: dict, needed: tuple[str, ...]) -> list[str]:
    """Why a claim that compares the augmentations `needed` with none cannot be tested on these cells: [] if it can."""
    augs = sorted({aug for aug, _ in cells})
    if "none" not in augs:
        return [f"no aug=none row: the sweep trains aug={', '.join(augs)} only, and this claim compares an "
                f"augmentation with none; add aug=none to the grid to test it"]
    if not any(aug in augs for aug in needed):
        return [f"no aug={' or '.join(needed)} row beside none: the sweep trains aug={', '.join(augs)}"]
    return []


def augmentation_helps(cells: dict, alphas: list[float]) -> tuple[str, list[str]]:
    reason = missing_rows(cells, ("fc", "fcra"))
    if reason:
        return NOT_APPLICABLE, reason
    lines, verdicts = [], []
    for aug in ("fc", "fcra"):
        for alpha in alphas:
            if (aug, alpha) in cells and ("none", alpha) in cells:
                e = paired(cells[aug, alpha], cells["none", alpha])
                verdicts.append(greater_than_zero(e))
                lines.append(f"{aug} − none at α={alpha:g}: {_fmt(e)}: {verdicts[-1]}")
    return overall(verdicts), lines


def alpha_matters_little(cells: dict, alphas: list[float], margin: float) -> tuple[str, list[str]]:
    if not any((aug, a) in cells for aug in ("fc", "fcra") for a in alphas):
        return NOT_APPLICABLE, [f"no aug=fc or fcra row: the sweep trains aug={', '.join(sorted({a for a, _ in cells}))}"]
    if not any(len([a for a in alphas if (aug, a) in cells]) > 1 for aug in ("fc", "fcra")):
        return NOT_APPLICABLE, [f"one α ({', '.join(f'{a:g}' for a in alphas)}) per augmentation: the claim compares "
                                f"α's; sweep alpha over several values to test it"]
    lines, verdicts = [], []
    for aug in ("fc", "fcra"):
        present = [a for a in alphas if (aug, a) in cells]
        if len(present) < 2:
            continue
        means = {a: sum(cells[aug, a].values()) / len(cells[aug, a]) for a in present}
        pairs = {(a, b): paired(cells[aug, a], cells[aug, b]) for a, b in itertools.combinations(present, 2)}
        pair_verdicts = [within(e, margin) for e in pairs.values()]
        verdicts.append(overall(pair_verdicts))
        (a, b), largest = max(pairs.items(), key=lambda kv: abs(kv[1].mean) if kv[1] is not None else -1.0)
        lines.append(f"{aug}: the α means span {min(means.values()):.2f} .. {max(means.values()):.2f} "
                     f"(spread {max(means.values()) - min(means.values()):.2f}); largest paired difference "
                     f"α={a:g} − α={b:g}: {_fmt(largest)}; over all {len(pairs)} pairs: {verdicts[-1]}")
    return overall(verdicts), lines


def pure_kd_gains_least(cells: dict, alphas: list[float]) -> tuple[str, list[str]]:
    gains = {a: {s: v - cells["none", a][s] for s, v in cells["fcra", a].items() if s in cells["none", a]}
             for a in alphas if ("fcra", a) in cells and ("none", a) in cells}
    reason = missing_rows(cells, ("fcra",))
    if reason or 1.0 not in gains or len(gains) < 2:
        return NOT_APPLICABLE, reason or ["needs aug=fcra and none at α=1 and at another α"]
    lines, verdicts = [f"gain (fcra − none) at α=1: {_fmt(estimate(list(gains[1.0].values())))}"], []
    for alpha in sorted(a for a in gains if a != 1.0):
        e = paired(gains[alpha], gains[1.0])
        verdicts.append(greater_than_zero(e))
        lines.append(f"gain at α={alpha:g} − gain at α=1: {_fmt(e)}: {verdicts[-1]}")
    return overall(verdicts), lines


def claim_sections(students: list[dict[str, Any]], metric: str, margin: float) -> list[tuple[str, tuple[str, list[str]]]]:
    """[(title, (verdict, details))] of the paper's claims on students that differ only in aug, alpha and seed."""
    cells = seed_values(students, metric)
    alphas = sorted({alpha for _, alpha in cells})
    return [
        ("1. Augmentation improves KD (paired over seeds)", augmentation_helps(cells, alphas)),
        (f"2. α matters little under augmentation (every paired difference within ±{margin:g} points)",
         alpha_matters_little(cells, alphas, margin)),
        ("3. α = 1 (pure KD) gains least from augmentation", pure_kd_gains_least(cells, alphas)),
        ("4. The teacher's T. stddev orders the augmentations as the students' test losses do (Wang et al. 2022: "
         f"Spearman ρ > 0, one-sided p < {SIGNIFICANCE:g})", tstddev_orders_augmentations(students, metric)),
    ]


def write_claims(students: list[dict[str, Any]], metric: str, sweep_dir: Path, margin: float = 1.0) -> Path:
    """claims.md: the claims checked once per combination of the sweep's other axes (pair, loss, ...), never pooled;
    a claim that no combination can test is said once, with its reason."""
    slices = split_by_axes(students)
    seeds = sorted({int(r["seed"]) for r in students if r.get("status") == "completed"})
    lines = [f"# The paper's claims, checked on sweep `{sweep_dir}`", "",
             f"Metric: {METRICS[metric]}. Seeds: {', '.join(map(str, seeds))} (n={len(seeds)}). "
             f"Intervals: 95% Student t over seeds, each difference paired by seed. A claim is *supported* when "
             f"its intervals lie wholly on its side, *contradicted* when one lies wholly on the other, "
             f"*inconclusive* otherwise (one seed gives no interval, so it is always inconclusive); *not applicable* "
             f"where the sweep's grid cannot test it.", ""]
    checked = [(label, claim_sections(part, metric, margin)) for label, part in slices]
    untestable = {title for title, _ in checked[0][1]
                  if all(verdict == NOT_APPLICABLE for _, sections in checked for t, (verdict, _) in sections
                         if t == title)}
    for title, (verdict, _) in checked[0][1]:
        if title in untestable:  # said once: the grid's reason, not one slice's (each slice's, if they differ)
            reasons = dict.fromkeys(d for _, sections in checked for t, (_, details) in sections if t == title
                                    for d in details)
            lines += [f"## {title}: **{verdict}**", ""] + [f"- {d}" for d in reasons] + [""]
    if len(slices) > 1 and len(untestable) < len(checked[0][1]):
        lines += [f"Checked separately for each {' and '.join(other_axes(students))} of the sweep (never pooled).", ""]
    for label, sections in checked:
        if len(untestable) == len(sections):
            break
        level = "##"
        if label:
            lines += [f"## {label}", ""]
            level = "###"
        for title, (verdict, details) in sections:
            if title not in untestable:
                lines += [f"{level} {title}: **{verdict}**", ""] + [f"- {d}" for d in details] + [""]
    path = sweep_dir / "claims.md"
    path.write_text("\n".join(lines))
    return path
