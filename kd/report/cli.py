"""Turn a finished sweep into the paper's comparison: the Table 1 gains and the Figure 3 curves.

    python -m kd.report multirun/2025-01-01/12-00-00              # or: kd-report <sweep dir>
    python -m kd.report <sweep dir> --alpha 0.5 --metric test_top1_at_best_val   # needs data.val_size
    python -m kd.report <sweep dir> --wandb                        # also publish a W&B Report

Reads the jobs' results.json files and writes into the sweep dir: gains.md, gains.csv, claims.md
(the paper's claims with verdicts at 95%), top1_by_alpha.png, gains_by_alpha.png and
test_top1_curves_alpha<α>.png (0.25 written 0p25). A search's sweep dir (its optuna.db) gets its trials instead:
trials.md, trials.csv, optimization_history.png and param_importances.png (kd/report/search.py).
"""
from __future__ import annotations

import argparse
import csv
import re
import sys
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf

from kd.report.claims import write_claims
from kd.report.diagnostics import format_diagnostics, has_diagnostics, write_diagnostics
from kd.report.figures import plot_curves, plot_gains, plot_top1_by_alpha, test_images
from kd.report.axes import other_axes, row_axis, split_by_axes
from kd.report.epochs import epochs_of, uniform
from kd.runs.overrides import cell_overrides, parse_overrides
from kd.report.provenance import sweep_provenance
from kd.report.published import format_published, published_rows
from kd.report.search import is_search_dir, report_search
from kd.runs.results import RESULTS_FILE, collect_sweep
from kd.runs.sweep_dir import cell_dir_name
from kd.report.table import (GAINS_LEGEND, METRICS, MetricUnavailableError, PooledCellsError, check_metric,
                             csv_records, format_table, format_tables, teacher_accuracy)


class NotASweepError(ValueError):
    """The directory holds no kd student jobs."""


def unfinished_jobs(sweep_dir: Path, results: list[dict[str, Any]],
                    corrupt: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Student jobs Hydra started that never wrote results.json (killed, or still running), as 'missing'; and
    those whose results.json kd cannot read (`corrupt`: collect_sweep's records), as 'corrupt', with the error."""
    from kd.data.augment import aug_name  # imports torch: only for a sweep with unfinished jobs

    aug_names = {r["config"]["aug"]["_target_"]: r["aug"] for r in results if "config" in r}
    unreadable = {r["job_dir"]: r["error"] for r in corrupt}
    found = []
    for path in sorted(sweep_dir.glob("*/.hydra/config.yaml")):
        job_dir = path.parent.parent
        cfg = OmegaConf.load(path)
        if ((job_dir / RESULTS_FILE).exists() and str(job_dir) not in unreadable) or cfg.stage != "student":
            continue
        target = cfg.aug._target_
        aug = aug_names[target] if target in aug_names else aug_name(target)  # imports torch: only if needed
        status = {"status": "corrupt", "error": unreadable[str(job_dir)]} if str(job_dir) in unreadable else {
            "status": "missing"}
        found.append({"stage": "student", **status, "aug": aug, "alpha": float(cfg.alpha),
                      "seed": cfg.seed, "job_dir": str(job_dir), "overrides": cell_overrides(job_dir)})
    return found + not_started_jobs(sweep_dir, aug_names)


def not_started_jobs(sweep_dir: Path, aug_names: dict[str, str]) -> list[dict[str, Any]]:
    """Student jobs of the sweep's grid (its multirun.yaml) that have no dir yet: queued on SLURM, or never reached."""
    saved = sweep_dir / "multirun.yaml"
    if not saved.is_file():
        return []
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from kd.data.augment import aug_name  # imports torch

    master = OmegaConf.load(saved)
    parsed = OverridesParser.create().parse_overrides(list(master.hydra.overrides.task))
    (cells,) = BasicSweeper.split_arguments(parsed, None)  # Hydra's own expansion of the grid, in job order
    target = master.aug._target_
    default_aug = aug_names[target] if target in aug_names else aug_name(target)
    found = []
    for num, overrides in enumerate(cells):
        job_dir = sweep_dir / cell_dir_name(overrides, num, str(sweep_dir))
        if job_dir.exists():
            continue
        cell = {**{"stage": master.stage, "alpha": master.alpha, "seed": master.seed, "aug": default_aug},
                **dict(o.split("=", 1) for o in overrides if o.split("=", 1)[0] in ("stage", "alpha", "seed", "aug"))}
        if cell["stage"] == "student":  # a swept aug is named by its option, which is kd's aug name
            found.append({"stage": "student", "status": "missing", "aug": cell["aug"], "alpha": float(cell["alpha"]),
                          "seed": int(cell["seed"]), "job_dir": str(job_dir),
                          "overrides": parse_overrides(list(overrides))})
    return found


def single_runs(sweep_dir: Path, students: list[dict[str, Any]]) -> list[str]:
    """The job dirs, when every one of them is a single run (Hydra's RUN mode) and there is no multirun.yaml."""
    if (sweep_dir / "multirun.yaml").is_file() or not students:
        return []
    modes = {}
    for r in students:
        saved = Path(r["job_dir"]) / ".hydra" / "hydra.yaml"
        if not saved.is_file():
            return []  # results without Hydra's record: nothing says how they were made
        modes[r["job_dir"]] = OmegaConf.load(saved).hydra.mode
    return sorted(modes) if all(str(m) == "RUN" for m in modes.values()) else []


def load_sweep(sweep_dir: Path) -> list[dict[str, Any]]:
    """The student jobs of a sweep dir, finished or not; a clear error for anything that is not a sweep."""
    if not sweep_dir.is_dir():
        raise NotASweepError(f"{sweep_dir} is not a directory; pass a sweep dir (e.g. multirun/<date>/<time>)")
    results = collect_sweep(sweep_dir)
    students = [r for r in results if r.get("stage") == "student"]
    singles = single_runs(sweep_dir, students)
    if singles:
        raise NotASweepError(
            f"{sweep_dir} holds {len(singles)} separate single runs (e.g. {singles[0]}), not one multirun: their cells "
            f"were never meant as one grid. Run the grid with -m (python kd/train.py -m ...) and pass its sweep dir.")
    students += unfinished_jobs(sweep_dir, students, [r for r in results if r.get("status") == "corrupt"])
    if not students:
        sweeps = [str(p.parent) for depth in ("*/", "*/*/", "*/*/*/") for p in sweep_dir.glob(depth + "multirun.yaml")]
        hint = (" It holds a single job's results; pass the multirun dir above its job dirs."
                if (sweep_dir / RESULTS_FILE).is_file() else
                f" Sweeps under it: {', '.join(sweeps[:3])}{' ...' if len(sweeps) > 3 else ''}." if sweeps else "")
        raise NotASweepError(f"{sweep_dir} is not a kd sweep: no student job dir (*/{RESULTS_FILE}) under it.{hint}")
    return students


def describe_sweep(students: list[dict[str, Any]]) -> str:
    """'resnet8x4 student, resnet32x4 teacher (79.42%), cifar100 (10000 test images), 240 epochs; 3 seeds' for titles
    and captions."""
    r = next((s for s in students if "model" in s), None)  # a 'missing' job has only its grid position
    seeds = len({s["seed"] for s in students})
    if r is None:
        return f"{seeds} seed(s)"
    teacher = teacher_accuracy(students)
    teacher_top1 = f" ({teacher})" if teacher is not None else ""
    spread = f"mean ± 95% interval over {seeds} seeds" if seeds > 1 else "1 seed"
    epochs = ("epochs as the table's epochs column says" if not uniform(students) else
              epochs_of(students, unit=True) or f"{r['epochs']} epoch" + ("s" if r["epochs"] != 1 else ""))
    n_test = test_images(students)
    data = f"{r['data']} ({n_test} test images)" if n_test is not None else r["data"]
    return f"{r['model']} student, {r['teacher']} teacher{teacher_top1}, {data}, {epochs}; {spread}"


def write_tables(students: list[dict[str, Any]], metric: str, sweep_dir: Path, figures: list[Path]) -> list[Path]:
    """gains.csv (the table's numbers, one row per cell and per gain) and gains.md (the tables, a legend, the figures)."""
    csv_path = sweep_dir / "gains.csv"
    columns, rows = csv_records(students, metric)
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)
    row = row_axis(students)
    rows = ("the augmentation of the student's training data" if row == "aug" else
            f"{row}, each value as typed (the sweep keeps one augmentation: aug={students[0]['aug']})")
    lines = [
        f"# Knowledge distillation x augmentation: sweep `{sweep_dir}`",
        "",
        f"Students' {METRICS[metric]} (%, `{metric}`); rows: {rows}; columns: α in (1 − α)·CE + α·(the distiller's "
        f"term).",
        "",
    ]
    slices = split_by_axes(students, exclude=(row,))
    for label, part in slices:
        if label:
            lines += [f"## {label}", ""]
        lines += [describe_sweep(part) + ".", "", format_table(part, metric, row), ""]
    lines += [f"`*` best cell of its table (every one of a tie), where it has several. "
              + (GAINS_LEGEND + " " if row == "aug" else "")
              + "`epochs`: the main epochs, and a first stage's (AB, FSP, FT) where one ran before them. "
              "`failed` / `missing`: no result (never counted as 0). The paper's claims, checked: "
              "[claims.md](claims.md)." + (" Why the gains are what they are (the teacher's T. stddev, fidelity): "
                                           "[diagnostics.md](diagnostics.md)." if has_diagnostics(students) else ""),
              ""]
    if len(slices) > 1:
        lines.insert(4, f"One table per {' and '.join(a for a in other_axes(students) if a != row)}: cells that "
                        f"differ in them are never pooled.\n")
    provenance, warnings = report_provenance(students)
    lines += [f"- {line}" for line in provenance] + [f"- **warning:** {w}" for w in warnings] + [""]
    lines += [f"![{p.stem}]({p.name})" for p in figures]
    md_path = sweep_dir / "gains.md"
    md_path.write_text("\n".join(lines) + "\n")
    return [md_path, csv_path]


def report_provenance(students: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """sweep_provenance's lines and warnings, and a warning per cell whose results.json kd cannot read: kd-report
    only reads, so the file stays where it is and the cell counts as failed."""
    lines, warnings = sweep_provenance(students)
    return lines, warnings + [f"{r['error']}: its cell counts as failed here; rerun the sweep's command to train it "
                              f"again (kd then keeps the file aside as {RESULTS_FILE}.corrupt-<time>)"
                              for r in students if r.get("status") == "corrupt"]


def file_safe(text: str) -> str:
    """A name that needs no quoting in a shell or a viewer: `loss=dkd data.train_size=0.5` ->
    `loss-dkd_data_train_size-0p5` (a decimal point is a p, `=` a dash, anything else outside [A-Za-z0-9_-] a _)."""
    text = re.sub(r"(?<=\d)\.(?=\d)", "p", text).replace("=", "-")
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text)


def slice_suffix(label: str) -> str:
    """A figure's file-name suffix for a slice of the sweep's other axes (`_loss-dkd_pair-vgg13-vgg8`)."""
    return "" if not label else "_" + file_safe(label)


def gain_points(part: list[dict[str, Any]]) -> int:
    """How many (augmentation, alpha) gains over none the gains figure would draw."""
    done = {(r["aug"], float(r["alpha"])) for r in part if r["status"] == "completed"}
    return sum(1 for aug, alpha in done if aug != "none" and ("none", alpha) in done)


def write_figures(students: list[dict[str, Any]], metric: str, alpha: float, sweep_dir: Path) -> list[Path]:
    """The figures that the sweep has data for, per table (file names suffixed by its other axes): each only
    where its x axis has more than one point (alphas, gains, epochs); says so when the curves' alpha is not in it."""
    written = []
    row = row_axis(students)
    for label, part in split_by_axes(students, exclude=(row,)):
        completed = [r for r in part if r["status"] == "completed"]
        if not completed:
            continue
        suffix = slice_suffix(label)
        subtitle = describe_sweep(part) + (f"; {label}" if label else "")
        alphas = sorted({float(r["alpha"]) for r in completed})
        figures = {}
        if len(alphas) > 1:
            figures[f"top1_by_alpha{suffix}.png"] = plot_top1_by_alpha(part, metric, subtitle, row)
        if row == "aug" and gain_points(part) > 1:
            figures[f"gains_by_alpha{suffix}.png"] = plot_gains(part, metric, subtitle)
        if alpha not in alphas:
            print(f"no curves figure{' for ' + label if label else ''}: no completed job at alpha={alpha:g} "
                  f"(completed alphas: {', '.join(f'{a:g}' for a in alphas)}); pick one with --alpha")
        elif max(len(r.get("history") or []) for r in completed) > 1:
            figures[f"test_top1_curves_alpha{file_safe(f'{alpha:g}')}{suffix}.png"] = plot_curves(part, alpha,
                                                                                                    subtitle, row)
        for name, fig in figures.items():
            fig.savefig(sweep_dir / name, dpi=150)
        written += [sweep_dir / name for name in figures]
    return written


def curves_alpha(students: list[dict[str, Any]]) -> float:
    """The curves' alpha when --alpha is not given: the sweep's only alpha, else 0.25."""
    alphas = {float(r["alpha"]) for r in students}
    return alphas.pop() if len(alphas) == 1 else 0.25


def write_report(students: list[dict[str, Any]], sweep_dir: Path, alpha: float, metric: str) -> list[Path]:
    """Write the figures and tables into the sweep dir; return the files written."""
    figures = write_figures(students, metric, alpha, sweep_dir)
    diagnostics = write_diagnostics(students, metric, sweep_dir, slice_suffix)
    return (write_tables(students, metric, sweep_dir, figures) + [write_claims(students, metric, sweep_dir)] + figures
            + diagnostics)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kd-report", description=__doc__.split("\n")[0],
                                     epilog="Offline W&B runs (the teachers' too) upload with: kd-sync <sweep dir>")
    parser.add_argument("sweep_dir", type=Path, help="a multirun dir: one job dir per grid cell")
    parser.add_argument("--alpha", type=float, help="alpha of the per-epoch curves (default: the sweep's only alpha, "
                                                    "else 0.25)")
    parser.add_argument("--metric", choices=list(METRICS), default="final_top1",
                        help="final_top1 (default); test_top1_at_best_val (the epoch picked on val: needs a sweep "
                             "with data.val_size or a folder's val/); best_top1 (picked on test: optimistic)")
    parser.add_argument("--wandb", action="store_true", help="also publish a W&B Report over the sweep's runs")
    parser.add_argument("--entity", help="W&B entity of the report (default: the runs', else your default)")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if is_search_dir(args.sweep_dir):  # a search's trials, not a grid (docs/search.md)
        code, rows, written = report_search(args.sweep_dir)
        return log_search_run(args.sweep_dir, rows, written) if args.wandb and code == 0 else code
    if args.wandb and args.metric == "best_top1":  # W&B summaries leave it out (kd/runs/job.py: SUMMARY_KEYS)
        print("kd-report: error: --wandb --metric best_top1: the runs' W&B summaries do not hold best_top1, the "
              "epoch picked on the test set, which kd does not report as a result; use --metric final_top1 or "
              "test_top1_at_best_val", file=sys.stderr)
        return 2
    try:
        students = load_sweep(args.sweep_dir)
        check_metric(students, args.metric, str(args.sweep_dir))
    except (NotASweepError, MetricUnavailableError) as err:
        print(f"kd-report: error: {err}", file=sys.stderr)
        return 2
    alpha = args.alpha if args.alpha is not None else curves_alpha(students)
    try:
        written = write_report(students, args.sweep_dir, alpha, args.metric)
    except PooledCellsError as err:
        print(f"kd-report: error: {err}", file=sys.stderr)
        return 2
    print(f"Students' {METRICS[args.metric]} (%):")
    print(format_tables(students, args.metric))
    published = published_rows(students)
    if published:  # beside each figure kd's of the statistic it is, whatever --metric says (kd/report/published.py)
        print("\nPublished top-1 (%) beside kd's, each kd value the statistic its figure is:")
        print(format_published(published))
    if has_diagnostics(students):
        print("\nDiagnostics (diagnostics.md says what each column is):")
        print(format_diagnostics(students, args.metric))
    lines, warnings = report_provenance(students)
    print("\n".join(lines))
    for warning in warnings:
        print(f"kd-report: warning: {warning}", file=sys.stderr)
    print("wrote " + ", ".join(str(p) for p in written))
    if args.wandb:
        from kd.report.wandb_report import ReportError, publish, sweep_runs  # wandb-workspaces only when asked for
        from kd.report.wandb_run import grid_tables, log_report_run

        try:
            offline = log_report_run(grid_tables(students, args.metric), args.sweep_dir, written, args.metric,
                                     sweep_runs(students))
            if offline is not None:
                print(f"W&B report run (the grid table, figures, claims.md) logged offline in {offline}; upload it "
                      f"with the sweep's runs: kd-sync {args.sweep_dir}")
            claims = next(p for p in written if p.name == "claims.md").read_text()
            print(f"W&B report: {publish(students, args.sweep_dir, alpha, args.metric, args.entity, claims)}")
        except ReportError as err:
            print(f"kd-report: error: {err}; the local files were written: {', '.join(p.name for p in written)}",
                  file=sys.stderr)
            return 1
    return 0


def log_search_run(sweep_dir: Path, rows: list[dict[str, Any]], written: list[Path]) -> int:
    """`kd-report --wandb` on a search: its trials table, figures and files in a report run of the trials' group
    (each trial is already a run there). No W&B Report page: its panels are a grid's."""
    from kd.report.wandb_report import ReportError, sweep_runs  # wandb only when asked for
    from kd.report.wandb_run import log_report_run

    columns = list(dict.fromkeys(k for row in rows for k in row))
    trials = [{c: row.get(c, "") for c in columns} for row in rows]
    try:
        offline = log_report_run({"trials": (columns, trials)}, sweep_dir, written, "objective",
                                 sweep_runs([r for r in collect_sweep(sweep_dir) if r.get("stage") != "teacher"]))
    except ReportError as err:
        print(f"kd-report: error: {err}; the local files were written: {', '.join(p.name for p in written)}",
              file=sys.stderr)
        return 1
    where = f"offline in {offline}; upload it with the trials' runs: kd-sync {sweep_dir}" if offline else "to W&B"
    print(f"W&B report run (the trials table, figures, trials.md) logged {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
