"""The paper's Table 1 from a sweep's results: rows = aug level, columns = alpha, plus a Gains row per
augmentation against none (the paper's is fcra - none). A sweep that keeps one aug has another swept key's values
as its rows (kd/report/axes.py: row_axis), e.g. one table comparing losses.

With several seeds a cell reads `mean ± half-width of its 95% interval (n=seeds)`, and the Gains
row is computed from the per-seed differences (paired: kd/report/stats.py); one seed shows no interval.
"""
from __future__ import annotations

from typing import Any, Sequence

from kd.report.axes import axis_values, other_axes, row_axis, row_value, split_by_axes, typed_order
from kd.report.epochs import epochs_of, trained, uniform
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


def grid_cells(results: list[dict[str, Any]], metric: str = "final_top1", row: str = "aug"
               ) -> dict[tuple[str, float], dict]:
    """{(row value, alpha): {"values": [...], "by_seed": {seed: value}, "failed": n, "missing": n, "results": [...]}}
    over the student jobs, the rows being the values of `row` (kd/report/axes.py: row_axis).

    A job whose status is "missing" (started, but it never wrote results) counts as missing, one stopped by a
    signal (preemption, Ctrl-C: resumable) as interrupted; any other status that is not "completed" as failed.
    """
    cells: dict[tuple[str, float], dict] = {}
    for r in results:
        if r.get("stage") != "student":
            continue
        cell = cells.setdefault((row_value(r, row), float(r["alpha"])), {"values": [], "by_seed": {}, "failed": 0,
                                                                        "missing": 0, "interrupted": 0, "results": []})
        cell["results"].append(r)
        if r.get("status") == "completed":
            if int(r["seed"]) in cell["by_seed"]:
                raise PooledCellsError(_collision([o for o in results if o is not r and _same_cell(o, r, row)][0], r,
                                                  row))
            cell["values"].append(float(r[metric]))
            cell["by_seed"][int(r["seed"])] = float(r[metric])
        elif r.get("status") in ("missing", "interrupted"):  # interrupted: stopped by a signal, resumable
            cell[r["status"]] += 1
        else:
            cell["failed"] += 1
    return cells


def _same_cell(a: dict[str, Any], b: dict[str, Any], row: str) -> bool:
    return (a.get("stage") == "student" and a.get("status") == "completed" and row_value(a, row) == row_value(b, row)
            and float(a["alpha"]) == float(b["alpha"]) and int(a["seed"]) == int(b["seed"]))


def _collision(a: dict[str, Any], b: dict[str, Any], row: str) -> str:
    fa, fb = flat_keys(a.get("defining_config", {})), flat_keys(b.get("defining_config", {}))
    differ = sorted(k for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k))
    return (f"{a.get('job_dir')} and {b.get('job_dir')} both hold {row}={row_value(a, row)} "
            f"alpha={float(a['alpha']):g} seed={a['seed']} but differ in {', '.join(differ) or 'nothing kd records'}; "
            f"kd will not pool them as seeds. Report them from separate sweep dirs, or rerun with the differing key on "
            f"the command line, where it becomes a dimension of the report.")


def grid_axes(cells: dict, typed: Sequence[str] = AUG_ORDER) -> tuple[list[str], list[float]]:
    """The table's rows (in `typed`'s order: the aug ladder, or a swept key's values as typed; others after,
    sorted) and columns (alphas, ascending)."""
    values = {value for value, _ in cells}
    rows = [v for v in typed if v in values] + sorted(values - set(typed))
    return rows, sorted({alpha for _, alpha in cells})


def row_order(students: list[dict[str, Any]], row: str) -> list[str]:
    """The order of a table's rows: the aug ladder, or the values of `row` as the sweep's command typed them."""
    return AUG_ORDER if row == "aug" else typed_order(students).get(row, [])


def table_rows(results: list[dict[str, Any]], metric: str = "final_top1", row: str = "aug"
               ) -> tuple[list[str], list[list[str]]]:
    """Header and rows as strings, from table_records; a missing cell reads 'missing', a failed one 'failed'
    (never 0), '*' marks the best cell where there are several; an epochs column where the cells trained for
    different lengths (a first stage: kd/report/epochs.py)."""
    records = table_records(results, metric, row)
    alphas = sorted({r["alpha"] for r in records})
    header = [f"{row} \\ alpha"] + [f"{a:g}" for a in alphas]
    lines: dict[str, list[str]] = {}
    for r in records:
        gain = r["quantity"] != metric
        label = f"Gains ({r[row]} - none)" if gain else r[row]
        if r["mean"] is None:
            text = "n/a" if gain else next((k for k in ("failed", "interrupted") if r[k] > 0), "missing")
        else:
            lost = [] if gain else [f"{r[k]} {k}" for k in ("failed", "interrupted", "missing")
                                    if r[k] > 0]  # left out of the mean
            text = (Estimate(r["mean"], r["ci95_half_width"], r["n"]).format(signed=gain) + (" *" if r["best"] else "")
                    + (f" ({', '.join(lost)})" if lost else ""))
        lines.setdefault(label, [label]).append(text)
    if not uniform(results):
        header.append("epochs")
        for label, line in lines.items():
            line.append(epochs_of([r for r in results if r.get("stage") == "student" and row_value(r, row) == label])
                        or "")
    return header, list(lines.values())


CSV_COLUMNS = ["quantity", "aug", "alpha", "mean", "ci95_half_width", "n", "failed", "interrupted", "missing", "best",
               "epochs", "first_stage_epochs"]


def table_records(results: list[dict[str, Any]], metric: str = "final_top1", row: str = "aug"
                  ) -> list[dict[str, Any]]:
    """The table as numbers, one record per cell (quantity `metric`) and, in a table whose rows are the augmentations,
    per gain over none (quantity `<metric> gain over none`, paired by seed): gains.csv. No number where there is none:
    an empty mean for a cell without a result, an empty half-width with one seed; `best` marks the best cell of
    several; `epochs` and `first_stage_epochs` what the cell's completed jobs trained."""
    cells = grid_cells(results, metric, row)
    rows, alphas = grid_axes(cells, row_order(results, row))
    means = {k: estimate(c["values"]).mean for k, c in cells.items() if c["values"]}
    best = {k for k, m in means.items() if m == max(means.values())} if len(means) > 1 else set()  # a tie: each
    one_aug = next((r["aug"] for r in results if r.get("stage") == "student"), None)  # rows of another key: its aug
    records = []
    for value in rows:
        for alpha in alphas:
            cell = cells.get((value, alpha), {"values": [], "failed": 0, "interrupted": 0, "missing": 1, "results": []})
            e = estimate(cell["values"]) if cell["values"] else None
            done = {trained(r) for r in cell["results"] if r.get("status") == "completed" and "epochs" in r}
            main, first = done.pop() if len(done) == 1 else (None, None)
            records.append({"quantity": metric, "aug": value if row == "aug" else one_aug, row: value, "alpha": alpha,
                            "mean": None if e is None else e.mean,
                            "ci95_half_width": None if e is None else e.half_width, "n": len(cell["values"]),
                            "failed": cell["failed"], "interrupted": cell["interrupted"], "missing": cell["missing"],
                            "best": (value, alpha) in best, "epochs": main, "first_stage_epochs": first})
    for aug in (r for r in rows if row == "aug" and r != "none" and "none" in rows):
        for alpha in alphas:
            none, other = cells.get(("none", alpha)), cells.get((aug, alpha))
            gain = paired(other["by_seed"], none["by_seed"]) if none is not None and other is not None else None
            records.append({"quantity": f"{metric} gain over none", "aug": aug, "alpha": alpha,
                            "mean": None if gain is None else gain.mean,
                            "ci95_half_width": None if gain is None else gain.half_width,
                            "n": 0 if gain is None else gain.n, "failed": None, "interrupted": None, "missing": None,
                            "best": False, "epochs": None, "first_stage_epochs": None})
    return records


def format_table(results: list[dict[str, Any]], metric: str = "final_top1", row: str = "aug") -> str:
    """A plain-text, Markdown-compatible table; '*' marks the best cell."""
    header, body = table_rows(results, metric, row)
    widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in [header] + body]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def format_tables(results: list[dict[str, Any]], metric: str = "final_top1") -> str:
    """format_table once per combination of the sweep's other axes (pair, loss.beta, ...) but its rows', each
    headed by its values; one table when there is none."""
    students = [r for r in results if r.get("stage") == "student"]
    row = row_axis(students)
    slices = split_by_axes(students, exclude=(row,))
    if len(slices) == 1:
        return format_table(slices[0][1], metric, row)
    return "\n\n".join(f"{label}:\n{format_table(part, metric, row)}" for label, part in slices)


def csv_records(results: list[dict[str, Any]], metric: str = "final_top1") -> tuple[list[str], list[dict[str, Any]]]:
    """gains.csv's columns and rows: table_records per table, each axis (the rows' too) a column."""
    students = [r for r in results if r.get("stage") == "student"]
    axes, row = other_axes(students), row_axis(students)
    rows = [{**axis_values(part[0], axes), **record} for _, part in split_by_axes(students, exclude=(row,))
            for record in table_records(part, metric, row)]
    return axes + CSV_COLUMNS, rows


def teacher_accuracy(results: list[dict[str, Any]]) -> str | None:
    """'96.11%', or with one teacher per seed 'mean 96.85% over 3 seeds' (each seed's teacher counted once)."""
    per_seed = {int(r["seed"]): float(r["teacher_top1"]) for r in results if r.get("teacher_top1") is not None}
    if not per_seed:
        return None
    if len(set(per_seed.values())) == 1:  # one teacher (a published one for every seed, say)
        return f"{next(iter(per_seed.values())):.2f}%"
    return f"mean {sum(per_seed.values()) / len(per_seed):.2f}% over {len(per_seed)} seeds"
