"""`kd-report --wandb`'s own W&B run (job_type `report`): the grid (and its diagnostics) as tables, the figures,
claims.md; for a search, its trials table and Optuna's figures.

The Report's panels recompute means from the cells' runs; this run keeps what kd-report computed (the
gains and their intervals, one row each as in gains.csv) so that the UI can sort and group them, beside
the figures and the claims. It opens like a cell's run (kd/tracking/wandb_tracker.py), in the sweep's
project and group, offline without credentials.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any, Optional

import wandb
from omegaconf import OmegaConf

from kd.report.diagnostics import csv_rows as diagnostic_rows, has_diagnostics
from kd.report.table import csv_records
from kd.tracking.wandb_tracker import RUN_FILE, WandbRun, WandbTracker, is_synced, read_run_file, sync_dir_of

REPORT_RUN_DIR = "wandb_report_run"  # in the sweep dir; kd-sync finds it as it finds a job's run
FINISH_TIMEOUT_S = 300


def grid_tables(students: list[dict[str, Any]], metric: str) -> dict[str, tuple[list[str], list[dict[str, Any]]]]:
    """A grid's tables as gains.csv and diagnostics.csv hold them: {name: (columns, rows)}."""
    tables = {"gains": csv_records(students, metric)}
    if has_diagnostics(students):  # why the gains are what they are, as diagnostics.csv has it
        tables["diagnostics"] = diagnostic_rows(students, metric)
    return tables


def log_report_run(tables: dict[str, tuple[list[str], list[dict[str, Any]]]], sweep_dir: Path, written: list[Path],
                   metric: str, runs: dict[str, Any]) -> Optional[Path]:
    """Log the run; return its offline dir (to upload), None when it went online or W&B failed (warned).

    `tables` are the report's ({name: (columns, rows)}: a grid's grid_tables, a search's trials); `runs` is
    kd.report.wandb_report.sweep_runs's: the project, entity and group of the cells' runs. The tables are
    built before the run opens, and a run that fails midway is removed (the previous report's
    run stays the one kd-sync uploads): a failed report never leaves a half-made run to be synced. A run
    that succeeds replaces the earlier reports' runs that were never uploaded (_drop_replaced_runs)."""
    out_dir = sweep_dir / REPORT_RUN_DIR
    values = {key: wandb_table(columns, rows) for key, (columns, rows) in tables.items()}
    previous = (out_dir / RUN_FILE).read_text() if (out_dir / RUN_FILE).is_file() else None
    (out_dir / RUN_FILE).unlink(missing_ok=True)  # a new run for each report: each holds one table, not a history
    group = runs["groups"][0] if len(runs["groups"]) == 1 else None
    tracker = WandbTracker(runs["project"], runs["entity"], group, [], "auto", None, FINISH_TIMEOUT_S)
    cfg = OmegaConf.create({"sweep_dir": str(sweep_dir.resolve()), "metric": metric})
    try:
        with tracker.run(cfg, out_dir, job_type="report",
                         name=f"report {'/'.join(sweep_dir.resolve().parts[-2:])}") as run:
            offline = isinstance(run, WandbRun) and run.offline
            if isinstance(run, WandbRun):
                figures = [p for p in written if p.suffix == ".png"]
                run.log_values({**values, **{f"figures/{p.stem}": wandb.Image(str(p), caption=p.name)
                                             for p in figures}})
                name = re.sub(r"[^A-Za-z0-9._-]+", "-", f"report-{'-'.join(sweep_dir.resolve().parts[-2:])}")[:128]
                run.log_files(name, "report", [p for p in written if p.suffix in (".md", ".csv")])
    except BaseException:
        _discard_new_run(out_dir, previous)
        raise
    info = read_run_file(out_dir)
    if info is None or "sync_dir" not in info:  # W&B did not start (warned) or is disabled: no run was logged,
        _discard_new_run(out_dir, previous)  # and the previous report's run stays the one to upload
        return None
    new_run = sync_dir_of(out_dir, info)
    _drop_replaced_runs(new_run)
    return new_run if offline else None


def wandb_table(columns: list[str], rows: list[dict[str, Any]]) -> wandb.Table:
    """A W&B table of csv-shaped rows. A CSV writes a missing number as "" (no gain for aug=none), which W&B
    would type as a string column and then refuse the numbers below it; W&B's missing value is None."""
    return wandb.Table(columns=columns, data=[[None if row[c] == "" else row[c] for c in columns] for row in rows])


def _drop_replaced_runs(new_run: Path) -> None:
    """Remove the earlier reports' offline runs beside `new_run` that were never uploaded: each holds an older
    table, and `wandb sync` of the folder would upload them all. Only kd-report writes into REPORT_RUN_DIR, so
    every run there is a report's; one that `wandb sync` marked uploaded (kd-sync runs it) is W&B's and stays."""
    for old in new_run.parent.glob("offline-run-*"):
        if old != new_run and old.is_dir() and not is_synced(old):
            shutil.rmtree(old)


def _discard_new_run(out_dir: Path, previous: Optional[str]) -> None:
    """Remove the run this report opened (its offline dir and record) and put back the previous report's record."""
    info = read_run_file(out_dir)
    if info is not None and "sync_dir" in info and (previous is None or json.loads(previous)["id"] != info["id"]):
        shutil.rmtree(sync_dir_of(out_dir, info), ignore_errors=True)
    (out_dir / RUN_FILE).unlink(missing_ok=True)
    if previous is not None:
        (out_dir / RUN_FILE).write_text(previous)
