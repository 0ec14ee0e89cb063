"""Why the gains are what they are: the diagnostics table (diagnostics.md, diagnostics.csv), the figure of the
students' test loss against the teacher's T. stddev, and the fourth claim of claims.md (Wang et al. 2022: a
good augmentation lowers T. stddev, and T. stddev orders the augmentations as the students' test losses).

The numbers come from each distilling cell's history (kd/training/diagnostics.py defines them). The teacher's are
averaged over the epochs (the teacher is fixed: each epoch is one more sample of its views), the student's
are its final epoch's. Rows are (aug, teacher view, alpha) for alpha > 0 (an alpha=0 cell never runs the
teacher); several seeds read `mean ± half-width of the 95% interval`. The teacher's view is a row, not a
table of its own: comparing views is what the table is for.
"""
from __future__ import annotations

import csv
import itertools
import math
from pathlib import Path
from typing import Any, Optional

from matplotlib.figure import Figure
from scipy import stats as scipy_stats

from kd.report.axes import row_axis, row_value, split_by_axes, typed_order
from kd.report.stats import Estimate, estimate, paired
from kd.report.table import AUG_ORDER

VIEW_KEY = "trainer.teacher_view"
TEACHER_SIDE = ("diag/t_stddev", "diag/teacher_top1", "diag/teacher_p_true")  # averaged over the epochs
# (results key, column, decimals): the teacher's side, then the student's against it and on its own
COLUMNS = [
    ("diag/t_stddev", "T. stddev", 5),
    ("diag/teacher_top1", "T. top-1 on its views (%)", 2),
    ("diag/teacher_p_true", "T. p(target) on its views", 3),
    ("diag/test_agreement", "S-T agreement, test (%)", 2),
    ("diag/test_kl", "KL(T‖S), test", 3),
    ("test/loss", "S. test loss", 3),
]
SIGNIFICANCE = 0.05
SUPPORTED, CONTRADICTED, INCONCLUSIVE, NOT_APPLICABLE = "supported", "contradicted", "inconclusive", "not applicable"


def cell_value(result: dict[str, Any], key: str) -> Optional[float]:
    """A distilling job's number for `key`: the teacher's averaged over epochs, the student's at its final epoch."""
    history = result.get("history") or []
    if key in TEACHER_SIDE:
        values = [row[key] for row in history if key in row and math.isfinite(row[key])]
        return sum(values) / len(values) if values else None
    if history and key in history[-1]:
        return float(history[-1][key])
    return float(result[key]) if key in result else None


def view_of(result: dict[str, Any]) -> str:
    return result.get("teacher_view") or result.get("config", {}).get("trainer", {}).get("teacher_view", "same")


def diagnostic_cells(students: list[dict[str, Any]], metric: str, row: str = "aug"
                     ) -> dict[tuple[str, str, str, float], dict[str, dict]]:
    """{(row value, aug, view, alpha): {key: {seed: value}}} over the completed students, the metric included (alpha=0
    too, for the gains; its diagnostics stay empty); the row value is "" where the table's rows are the augmentations."""
    cells: dict[tuple[str, str, str, float], dict[str, dict]] = {}
    for r in students:
        if r.get("stage") != "student" or r.get("status") != "completed":
            continue
        group = "" if row == "aug" else row_value(r, row)
        cell = cells.setdefault((group, r["aug"], view_of(r), float(r["alpha"])), {})
        for key in [k for k, _, _ in COLUMNS] + [metric]:
            value = cell_value(r, key)
            if value is not None:
                cell.setdefault(key, {})[int(r["seed"])] = value
    return cells


def has_diagnostics(students: list[dict[str, Any]]) -> bool:
    return any("diag/teacher_top1" in (r.get("history") or [{}])[-1] for r in students
               if r.get("status") == "completed")


def slices(students: list[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """The sweep split by its other axes, the teacher's view and the gains table's rows (loss=kd,dkd,...) excepted:
    they are columns of the table."""
    return split_by_axes(students, exclude=(VIEW_KEY, row_axis(students)))


def _fmt(e: Optional[Estimate], decimals: int, signed: bool = False) -> str:
    if e is None:
        return "-"
    sign = "+" if signed else ""
    text = f"{e.mean:{sign}.{decimals}f}"
    return text if e.half_width is None else f"{text} ± {e.half_width:.{decimals}f}"


def _rows(part: list[dict[str, Any]], metric: str, row: str = "aug") -> list[dict[str, Any]]:
    cells = diagnostic_cells(part, metric, row)
    augs = {aug for _, aug, _, _ in cells}
    order = {a: i for i, a in enumerate(AUG_ORDER + sorted(augs - set(AUG_ORDER)))}
    typed = typed_order(part).get(row, [])
    groups = {g: typed.index(g) if g in typed else len(typed) for g, _, _, _ in cells}
    rows = []
    for (group, aug, view, alpha), cell in sorted(cells.items(), key=lambda kv: (
            kv[0][3], groups[kv[0][0]], kv[0][0], kv[0][2], order[kv[0][1]])):
        if alpha == 0 or "diag/teacher_top1" not in cell:  # T. stddev alone may be missing: one batch an epoch
            continue
        none = cells.get((group, "none", view, alpha), {}).get(metric)
        rows.append({row: group, "aug": aug, "teacher_view": view, "alpha": alpha,
                     **{key: estimate(list(cell[key].values())) if key in cell else None for key, _, _ in COLUMNS},
                     metric: estimate(list(cell[metric].values())),
                     "gain": paired(cell[metric], none) if none is not None and aug != "none" else None})
    return rows


def format_diagnostics(students: list[dict[str, Any]], metric: str) -> str:
    """One Markdown table per slice of the sweep's other axes; "" when no cell has diagnostics."""
    out = []
    row = row_axis(students)
    lead = [] if row == "aug" else [row]  # the gains table's rows, where they are not the augmentations
    for label, part in slices(students):
        rows = _rows(part, metric, row)
        if not rows:
            continue
        header = [*lead, "aug", "teacher view", "α", *(title for _, title, _ in COLUMNS), "S. top-1 (%)",
                  "gain vs none"]
        body = [[*(r[k] for k in lead), r["aug"], r["teacher_view"], f"{r['alpha']:g}",
                 *(_fmt(r[key], d) for key, _, d in COLUMNS), _fmt(r[metric], 2), _fmt(r["gain"], 2, signed=True)]
                for r in rows]
        widths = [max(len(str(x)) for x in column) for column in zip(header, *body)]
        lines = ["| " + " | ".join(str(x).ljust(w) for x, w in zip(line, widths)) + " |" for line in [header, *body]]
        lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
        out.append((f"{label}:\n" if label else "") + "\n".join(lines))
    return "\n\n".join(out)


def csv_rows(students: list[dict[str, Any]], metric: str) -> tuple[list[str], list[dict[str, Any]]]:
    keys = [k for k, _, _ in COLUMNS] + [metric, "gain"]
    row = row_axis(students)
    lead = [] if row == "aug" else [row]
    columns = ["slice", *lead, "aug", "teacher_view", "alpha"] + [f"{k}{s}" for k in keys for s in ("", "_ci95", "_n")]
    records = []
    for label, part in slices(students):
        for r in _rows(part, metric, row):
            record = {"slice": label, **{k: r[k] for k in lead}, "aug": r["aug"], "teacher_view": r["teacher_view"],
                      "alpha": r["alpha"]}
            for key in keys:
                e = r[key]
                record.update({key: e.mean if e else "", f"{key}_ci95": (e.half_width if e and e.half_width is not None
                                                                          else ""), f"{key}_n": e.n if e else ""})
            records.append(record)
    return columns, records


def rank_correlation(x: list[float], y: list[float]) -> tuple[float, float]:
    """Spearman's rho of x and y and its one-sided p-value for rho > 0, exact over every pairing where there
    are few points (scipy's permutation test; the t approximation of spearmanr is poor below ~10 points)."""
    rho = float(scipy_stats.spearmanr(x, y).statistic)
    # One sample permuted against y: its n! orders are the null's pairings (exact up to 8 points, else sampled)
    test = scipy_stats.permutation_test((x,), lambda a: scipy_stats.spearmanr(a, y).statistic,
                                        permutation_type="pairings", alternative="greater",
                                        n_resamples=math.inf if len(x) <= 8 else 99_999, random_state=0)
    return rho, float(test.pvalue)


def _series(part: list[dict[str, Any]], metric: str) -> dict[tuple[str, float], list[tuple[str, float, float, float]]]:
    """{(view, alpha): [(aug, T. stddev, S. test loss, S. metric)]} from the seeds' means, by aug level order."""
    series: dict[tuple[str, float], list] = {}
    for r in _rows(part, metric):
        if r["diag/t_stddev"] is not None and r["test/loss"] is not None:
            series.setdefault((r["teacher_view"], r["alpha"]), []).append(
                (r["aug"], r["diag/t_stddev"].mean, r["test/loss"].mean, r[metric].mean))
    return series


def tstddev_orders_augmentations(part: list[dict[str, Any]], metric: str) -> tuple[str, list[str]]:
    """Claim 4, within one slice: across the aug levels, rank(T. stddev) against rank(students' test loss)."""
    series = _series(part, metric)
    if not series:
        return INCONCLUSIVE, ["no cell with diagnostics (they need alpha > 0, and results of a kd that records them)"]
    if all(len(points) < 2 for points in series.values()):
        augs = sorted({aug for points in series.values() for aug, *_ in points})
        return NOT_APPLICABLE, [f"one augmentation level (aug={', '.join(augs)}): the claim ranks the augmentations; "
                                f"a rank correlation needs at least 3"]
    lines, verdicts = [], []
    for (view, alpha), points in sorted(series.items()):
        augs = ", ".join(f"{aug} {t:.5f}/{loss:.3f}" for aug, t, loss, _ in points)
        if len(points) < 3:
            verdicts.append(INCONCLUSIVE)
            lines.append(f"teacher view {view}, α={alpha:g}: {len(points)} augmentation levels ({augs}); "
                         f"a rank correlation needs at least 3: {INCONCLUSIVE}")
            continue
        t_stddev, loss, top1 = ([p[i] for p in points] for i in (1, 2, 3))
        rho, p_value = rank_correlation(t_stddev, loss)
        _, p_reverse = rank_correlation(t_stddev, [-v for v in loss])
        verdict = (SUPPORTED if p_value < SIGNIFICANCE else CONTRADICTED if p_reverse < SIGNIFICANCE else INCONCLUSIVE)
        smallest = 1 / math.factorial(len(points))
        floor = (f"; with {len(points)} levels the smallest p an exact test can give is {smallest:.3f}"
                 if smallest >= SIGNIFICANCE else "")
        rho_top1 = float(scipy_stats.spearmanr(t_stddev, top1).statistic)
        verdicts.append(verdict)
        lines.append(f"teacher view {view}, α={alpha:g}: Spearman ρ(T. stddev, S. test loss) = {rho:+.2f}, one-sided "
                     f"p = {p_value:.3f} (exact permutation test), over {len(points)} augmentations "
                     f"(T. stddev/S. test loss: {augs}); ρ(T. stddev, S. top-1) = {rho_top1:+.2f}{floor}: {verdict}")
    overall = (SUPPORTED if verdicts and all(v == SUPPORTED for v in verdicts)
               else CONTRADICTED if CONTRADICTED in verdicts else INCONCLUSIVE)
    return overall, lines


def plot_tstddev(part: list[dict[str, Any]], metric: str, subtitle: str) -> Optional[Figure]:
    """The students' test loss against the teacher's T. stddev, one series per (teacher view, alpha), each
    point an augmentation level, its rank correlation in the legend (Wang et al.'s Figure 1b)."""
    series = _series(part, metric)
    if all(len(points) < 2 for points in series.values()):  # one augmentation: nothing along T. stddev
        return None
    fig = Figure(figsize=(7, 5), layout="constrained")
    ax = fig.add_subplot()
    markers = itertools.cycle("osD^v<>")
    where: dict[str, list[tuple[float, float]]] = {}
    for (view, alpha), points in sorted(series.items()):
        x, y = [p[1] for p in points], [p[2] for p in points]
        label = f"teacher view {view}, α={alpha:g}"
        if len(points) >= 3:
            rho, p_value = rank_correlation(x, y)
            label += f": ρ={rho:+.2f}, p={p_value:.3f}"
        # points (the aug levels have no order on this axis), hollow and larger for each series: aug=none's
        # points of several alphas coincide (its teacher sees the same images), and stay visible so
        ax.plot(x, y, marker=next(markers), linestyle="none", label=label, fillstyle="none", markersize=9,
                markeredgewidth=1.5, alpha=0.8)
        for aug, xi, yi, _ in points:
            where.setdefault(aug, []).append((xi, yi))
    for aug, xy in where.items():  # each aug level named once, beside its points
        ax.annotate(aug, (max(x for x, _ in xy), max(y for _, y in xy)), textcoords="offset points", xytext=(6, 4),
                    fontsize=8)
    ax.set_xlabel("teacher's T. stddev on its training views (mean over epochs)")
    ax.set_ylabel("student's test loss (cross-entropy), final epoch")
    ax.set_title("Students' test loss against the teacher's T. stddev\n" + subtitle, fontsize=9)
    ax.legend(fontsize=8)
    ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 3))
    return fig


def write_diagnostics(students: list[dict[str, Any]], metric: str, sweep_dir: Path, suffix_of) -> list[Path]:
    """diagnostics.md, diagnostics.csv and one figure per slice; nothing when no cell has diagnostics."""
    if not has_diagnostics(students):
        return []
    written = []
    lines = [f"# Why augmentation helps: diagnostics of sweep `{sweep_dir}`", "",
             "Per (augmentation, teacher view, α > 0). The teacher's numbers are on the views it saw in training, "
             "averaged over the epochs: T. stddev (Wang et al. 2022: the stddev across training batches of its mean "
             "softmax, averaged over classes; lower is a better augmentation for KD), its top-1 and its mean "
             "probability of the target. The student's are at its final epoch, on the test split: its top-1 "
             "agreement with the teacher and KL(teacher ‖ student) (Stanton et al. 2021: fidelity), its test loss, "
             "its top-1 and the gain over none at the same view and α (paired by seed). Several seeds: mean ± "
             "half-width of the 95% interval. The fourth claim of [claims.md](claims.md) checks the T. stddev "
             "ordering.", "", format_diagnostics(students, metric), ""]
    for label, part in slices(students):
        fig = plot_tstddev(part, metric, label or str(sweep_dir))
        if fig is None:
            continue
        path = sweep_dir / f"tstddev_vs_test_loss{suffix_of(label)}.png"
        fig.savefig(path, dpi=150)
        written.append(path)
        lines.append(f"![{path.stem}]({path.name})")
    md = sweep_dir / "diagnostics.md"
    md.write_text("\n".join(lines) + "\n")
    columns, records = csv_rows(students, metric)
    with open(sweep_dir / "diagnostics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(records)
    return [md, sweep_dir / "diagnostics.csv", *written]
