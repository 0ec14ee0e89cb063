"""The paper's Table 1 from a sweep's results: rows = aug level, columns = alpha, plus a Gains row per
augmentation against none (the paper's is fcra - none).

With several seeds a cell reads `mean ± half-width of its 95% interval (n=seeds)`, and the Gains
row is computed from the per-seed differences (paired: kd/report/stats.py); one seed shows no interval.
"""
from __future__ import annotations

from typing import Any

from kd.report.axes import axis_values, other_axes, split_by_axes
from kd.report.stats import Estimate, estimate, paired
from kd.runs.sweep_dir import flat_keys

# The ladder, weakest first
AUG_ORDER = ["none", "fc", "fcra", "fcta", "fcaa", "fccutout", "fcmixup", "fccutmix", "fccutmixpick"]
# The metrics a table can show (results.json keys), in words. Only a validation split can pick an epoch
# honestly; best_top1 picks it on the test set, as the public KD code bases do, and flatters every cell.
METRICS = {
    "final_top1": "test top-1 at the final epoch",
    "test_top1_at_best_val": "test top-1 at the epoch with the best val top-1",
    "best_top1": "best test top-1 over the epochs (picked on the test set itself: optimistic, not a result)",
}
VAL_METRICS = ("test_top1_at_best_val",)
# What the tables' Gains rows and intervals mean: gains.md and the W&B report say it in these words.
GAINS_LEGEND = ("Gains (aug − none): each augmentation's gain over none at each α, paired by seed. Several seeds: "
                "mean ± half-width of the 95% Student-t interval (n = seeds); one seed: no interval.")


class PooledCellsError(ValueError):
    """Two results share a table cell and a seed: something unswept differs between them, and kd will not pool it."""


class MetricUnavailableError(ValueError):
    """The sweep's jobs did not record the asked-for metric."""


def check_metric(results: list[dict[str, Any]], metric: str, sweep: str) -> None:
    """Refuse a metric that a completed student job lacks (an epoch picked on val needs a val split)."""
    lacking = [r for r in results if r.get("stage") == "student" and r.get("status") == "completed" and metric not in r]
    if not lacking:
        return
    if metric in VAL_METRICS:
        raise MetricUnavailableError(
            f"--metric {metric} needs a validation split, and {len(lacking)} job(s) of {sweep} ran without one "
            f"(e.g. {lacking[0]['job_dir']}). Rerun the grid with data.val_size=N (or a folder with a val/ split), "
            f"or use --metric final_top1.")
    raise MetricUnavailableError(f"{len(lacking)} job(s) of {sweep} have no {metric} (e.g. {lacking[0]['job_dir']}).")


def grid_cells(results: list[dict[str, Any]], metric: str = "final_top1") -> dict[tuple[str, float], dict]:
    """{(aug, alpha): {"values": [...], "by_seed": {seed: value}, "failed": n, "missing": n}} over the student jobs.

    A job whose status is "missing" (started, but it never wrote results) counts as missing, one stopped by a
    signal (preemption, Ctrl-C: resumable) as interrupted; any other status that is not "completed" as failed.
    """
    cells: dict[tuple[str, float], dict] = {}
    for r in results:
        if r.get("stage") != "student":
            continue
        cell = cells.setdefault((r["aug"], float(r["alpha"])),
                                {"values": [], "by_seed": {}, "failed": 0, "missing": 0, "interrupted": 0})
        if r.get("status") == "completed":
            if int(r["seed"]) in cell["by_seed"]:
                raise PooledCellsError(_collision([o for o in results if o is not r and _same_cell(o, r)][0], r))
            cell["values"].append(float(r[metric]))
            cell["by_seed"][int(r["seed"])] = float(r[metric])
        elif r.get("status") in ("missing", "interrupted"):  # interrupted: stopped by a signal, resumable
            cell[r["status"]] += 1
        else:
            cell["failed"] += 1
    return cells


def _same_cell(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return (a.get("stage") == "student" and a.get("status") == "completed" and a["aug"] == b["aug"]
            and float(a["alpha"]) == float(b["alpha"]) and int(a["seed"]) == int(b["seed"]))


def _collision(a: dict[str, Any], b: dict[str, Any]) -> str:
    fa, fb = flat_keys(a.get("defining_config", {})), flat_keys(b.get("defining_config", {}))
    differ = sorted(k for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k))
    return (f"{a.get('job_dir')} and {b.get('job_dir')} both hold aug={a['aug']} alpha={float(a['alpha']):g} "
            f"seed={a['seed']} but differ in {', '.join(differ) or 'nothing kd records'}; kd will not pool them "
            f"as seeds. Report them from separate sweep dirs, or rerun with the differing key on the command "
            f"line, where it becomes a dimension of the report.")


def grid_axes(cells: dict) -> tuple[list[str], list[float]]:
    """The table's rows (aug levels in the paper's order) and columns (alphas, ascending)."""
    augs = {aug for aug, _ in cells}
    rows = [a for a in AUG_ORDER if a in augs] + sorted(augs - set(AUG_ORDER))
    return rows, sorted({alpha for _, alpha in cells})


def table_rows(results: list[dict[str, Any]], metric: str = "final_top1") -> tuple[list[str], list[list[str]]]:
    """Header and rows as strings, from table_records; a missing cell reads 'missing', a failed one 'failed'
    (never 0), '*' marks the best cell."""
    records = table_records(results, metric)
    alphas = sorted({r["alpha"] for r in records})
    header = ["aug \\ alpha"] + [f"{a:g}" for a in alphas]
    lines: dict[str, list[str]] = {}
    for r in records:
        gain = r["quantity"] != metric
        label = f"Gains ({r['aug']} - none)" if gain else r["aug"]
        if r["mean"] is None:
            text = "n/a" if gain else next((k for k in ("failed", "interrupted") if r[k] > 0), "missing")
        else:
            lost = [] if gain else [f"{r[k]} {k}" for k in ("failed", "interrupted", "missing")
                                    if r[k] > 0]  # left out of the mean
            text = (Estimate(r["mean"], r["ci95_half_width"], r["n"]).format(signed=gain) + (" *" if r["best"] else "")
                    + (f" ({', '.join(lost)})" if lost else ""))
        lines.setdefault(label, [label]).append(text)
    return header, list(lines.values())


CSV_COLUMNS = ["quantity", "aug", "alpha", "mean", "ci95_half_width", "n", "failed", "interrupted", "missing", "best"]


def table_records(results: list[dict[str, Any]], metric: str = "final_top1") -> list[dict[str, Any]]:
    """The table as numbers, one record per cell (quantity `metric`) and per gain over none (quantity
    `<metric> gain over none`, paired by seed): gains.csv. No number where there is none: an empty mean
    for a cell without a result, an empty half-width with one seed; `best` marks the best cell."""
    cells = grid_cells(results, metric)
    rows, alphas = grid_axes(cells)
    means = {k: estimate(c["values"]).mean for k, c in cells.items() if c["values"]}
    best = {k for k, m in means.items() if m == max(means.values())}  # every cell of a tie
    records = []
    for aug in rows:
        for alpha in alphas:
            cell = cells.get((aug, alpha), {"values": [], "failed": 0, "interrupted": 0, "missing": 1})
            e = estimate(cell["values"]) if cell["values"] else None
            records.append({"quantity": metric, "aug": aug, "alpha": alpha, "mean": None if e is None else e.mean,
                            "ci95_half_width": None if e is None else e.half_width, "n": len(cell["values"]),
                            "failed": cell["failed"], "interrupted": cell["interrupted"], "missing": cell["missing"],
                            "best": (aug, alpha) in best})
    for aug in (r for r in rows if r != "none" and "none" in rows):
        for alpha in alphas:
            none, other = cells.get(("none", alpha)), cells.get((aug, alpha))
            gain = paired(other["by_seed"], none["by_seed"]) if none is not None and other is not None else None
            records.append({"quantity": f"{metric} gain over none", "aug": aug, "alpha": alpha,
                            "mean": None if gain is None else gain.mean,
                            "ci95_half_width": None if gain is None else gain.half_width,
                            "n": 0 if gain is None else gain.n, "failed": None, "interrupted": None, "missing": None,
                            "best": False})
    return records


def format_table(results: list[dict[str, Any]], metric: str = "final_top1") -> str:
    """A plain-text, Markdown-compatible table; '*' marks the best cell."""
    header, body = table_rows(results, metric)
    widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in [header] + body]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def format_tables(results: list[dict[str, Any]], metric: str = "final_top1") -> str:
    """format_table once per combination of the sweep's other axes (pair, loss, loss.beta, ...), each headed
    by its values; one table when there is none."""
    slices = split_by_axes([r for r in results if r.get("stage") == "student"])
    if len(slices) == 1:
        return format_table(slices[0][1], metric)
    return "\n\n".join(f"{label}:\n{format_table(part, metric)}" for label, part in slices)


def csv_records(results: list[dict[str, Any]], metric: str = "final_top1") -> tuple[list[str], list[dict[str, Any]]]:
    """gains.csv's columns and rows: table_records per combination of the other axes, each axis a column."""
    students = [r for r in results if r.get("stage") == "student"]
    axes = other_axes(students)
    rows = [{**axis_values(part[0], axes), **record} for _, part in split_by_axes(students)
            for record in table_records(part, metric)]
    return axes + CSV_COLUMNS, rows


def teacher_accuracy(results: list[dict[str, Any]]) -> str | None:
    """'96.11%', or with one teacher per seed 'mean 96.85% over 3 seeds' (each seed's teacher counted once)."""
    per_seed = {int(r["seed"]): float(r["teacher_top1"]) for r in results if r.get("teacher_top1") is not None}
    if not per_seed:
        return None
    if len(set(per_seed.values())) == 1:  # one teacher (a published one for every seed, say)
        return f"{next(iter(per_seed.values())):.2f}%"
    return f"mean {sum(per_seed.values()) / len(per_seed):.2f}% over {len(per_seed)} seeds"
