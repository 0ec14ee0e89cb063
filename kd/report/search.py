"""kd-report on a search's sweep dir (docs/search.md): the study's trials beside their cells' results, the best
trial with its test top-1 reported once beside the val top-1 it was chosen on, and Optuna's own figures.

The study (optuna.db, written by the sweeper) says what was asked and how each trial ended; each trial's cell dir
(named by its overrides) says what it trained to, test top-1 included.
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Any, Optional

from kd.config import Objective
from kd.runs.results import collect_sweep

STUDY_FILE = "optuna.db"  # conf/hparams_search/: hydra.sweeper.storage=sqlite:///${hydra.sweep.dir}/optuna.db
TEST_AT = {Objective.best_val_top1.value: "test_top1_at_best_val", Objective.final_val_top1.value: "final_top1"}


def is_search_dir(sweep_dir: Path) -> bool:
    return (Path(sweep_dir) / STUDY_FILE).is_file()


def load_study(sweep_dir: Path) -> Any:
    """The sweep dir's one study (a search config names one: hydra.sweeper.study_name)."""
    import optuna

    storage = f"sqlite:///{Path(sweep_dir).absolute() / STUDY_FILE}"
    (summary,) = optuna.get_all_study_summaries(storage)
    return optuna.load_study(study_name=summary.study_name, storage=storage)


def cell_of(params: dict[str, Any], results: list[dict[str, Any]]) -> Optional[dict[str, Any]]:
    """The results of the cell a trial ran in: the sweeper writes each param as `key=value`, which names the cell."""
    found = [r for r in results if all(r["overrides"].get(k) == str(v) for k, v in params.items())]
    return found[0] if found else None


def trial_rows(study: Any, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per trial: its number, params, state, objective (val top-1) and its cell's test top-1 at the epoch
    the objective read."""
    rows = []
    for trial in study.trials:
        cell = cell_of(trial.params, results)
        # A cut-short trial asked again on resume shares its cell with the new one: the cell's numbers are the new's.
        completed = trial.state.name == "COMPLETE" and cell is not None and cell.get("status") == "completed"
        test_key = TEST_AT[cell["config"]["objective"]] if completed else None
        rows.append({"trial": trial.number, **trial.params, "state": trial.state.name.lower(),
                     "val_top1": trial.value, "test_top1": cell.get(test_key) if test_key else None,
                     "job_dir": cell["job_dir"] if cell else None})
    return rows


def format_rows(rows: list[dict[str, Any]]) -> str:
    """A markdown table of the trials, numbers to 2 decimals (params to 4 significant digits)."""
    keys = list(dict.fromkeys(k for row in rows for k in row if k != "job_dir"))

    def cell(value: Any, key: str) -> str:
        if value is None:
            return ""
        if isinstance(value, float):
            return f"{value:.2f}" if key.endswith("top1") else f"{value:.4g}"
        return str(value)

    lines = ["| " + " | ".join(keys) + " |", "|" + "|".join("---" for _ in keys) + "|"]
    lines += ["| " + " | ".join(cell(row.get(k), k) for k in keys) + " |" for row in rows]
    return "\n".join(lines)


def best_line(study: Any, rows: list[dict[str, Any]]) -> str:
    """The chosen trial: its val top-1 (what the search maximized) and, once, its test top-1 (never searched on)."""
    best = study.best_trial
    (row,) = [r for r in rows if r["trial"] == best.number]
    params = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in best.params.items())
    test = f"; its test top-1 {row['test_top1']:.2f}%" if row["test_top1"] is not None else ""
    return (f"best trial #{best.number} of {len(rows)}: {params}: val top-1 {best.value:.2f}% (the objective){test} "
            f"(reported, never searched on); {row['job_dir']}")


def write_figures(study: Any, sweep_dir: Path) -> list[Path]:
    """Optuna's optimisation history and, with 2+ completed trials, its parameter importances."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    import optuna.visualization.matplotlib as ovm

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # Optuna 2's plots are marked so
    axes = ovm.plot_optimization_history(study)
    figures = {"optimization_history.png": axes.figure}
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    if len(complete) >= 2 and len(study.best_trial.params) >= 2:
        # Optuna 2's importance plot calls matplotlib's removed cm.get_cmap, and its default evaluator (fANOVA) fails
        # on today's numpy: Optuna's numbers from another of its evaluators, drawn here.
        importances = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.MeanDecreaseImpurityImportanceEvaluator(seed=0))
        fig, ax = plt.subplots(figsize=(6, 1 + 0.5 * len(importances)))
        ax.barh(list(importances)[::-1], list(importances.values())[::-1])
        ax.set(xlabel="importance for the objective (Optuna, mean decrease in impurity)",
               title=f"Parameter importances, {len(complete)} completed trials")
        figures["param_importances.png"] = fig
    written = []
    for name, fig in figures.items():
        fig.tight_layout()
        fig.savefig(sweep_dir / name, dpi=150)
        plt.close(fig)
        written.append(sweep_dir / name)
    return written


def trials_summary(sweep_dir: Path) -> Optional[tuple[Any, list[dict[str, Any]], str, str]]:
    """The study, its trial rows, their table and the best trial's line; None before any trial completed."""
    study = load_study(sweep_dir)
    rows = trial_rows(study, collect_sweep(sweep_dir))
    if not any(row["state"] == "complete" for row in rows):
        return None
    return study, rows, format_rows(rows), best_line(study, rows)


def print_trials(sweep_dir: Path) -> None:
    """What a search's multirun ends with (kd/report/grid_table.py): its trials and the best one."""
    summary = trials_summary(sweep_dir)
    if summary is not None:
        study, _, table, best = summary
        print(f"\nTrials of search {study.study_name}, sweep {sweep_dir} (val top-1: the objective):\n{table}\n{best}")


def report_search(sweep_dir: Path) -> tuple[int, list[dict[str, Any]], list[Path]]:
    """kd-report's answer for a search: print the trials and the best one; write trials.md, trials.csv, figures.
    Returns the exit code, the trials' rows and the files written."""
    summary = trials_summary(sweep_dir)
    if summary is None:
        print(f"kd-report: error: the study in {sweep_dir / STUDY_FILE} has no completed trial yet", file=sys.stderr)
        return 2, [], []
    study, rows, table, best = summary
    (sweep_dir / "trials.md").write_text(f"# Search {study.study_name}: {len(rows)} trials\n\n{table}\n\n{best}\n")
    with (sweep_dir / "trials.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for row in rows for k in row)))
        writer.writeheader()
        writer.writerows(rows)
    written = [sweep_dir / "trials.md", sweep_dir / "trials.csv", *write_figures(study, sweep_dir)]
    print(f"Trials of search {study.study_name} (val top-1: the objective; test top-1 at the same epoch):")
    print(table)
    print(best)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0, rows, written
