"""`kd-report --wandb`'s own W&B run (job_type `report`): the grid (and its diagnostics) as tables, the figures,
claims.md.

The Report's panels recompute means from the cells' runs; this run keeps what kd-report computed (the
gains and their intervals, one row each as in gains.csv) so that the UI can sort and group them, beside
the figures and the claims. It opens like a cell's run (kd/tracking/wandb_tracker.py), in the sweep's
project and group, offline without credentials.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional

import wandb
from omegaconf import OmegaConf

from kd.report.diagnostics import csv_rows as diagnostic_rows, has_diagnostics
from kd.report.table import csv_records
from kd.tracking.wandb_tracker import RUN_FILE, WandbRun, WandbTracker, read_run_file

REPORT_RUN_DIR = "wandb_report_run"  # in the sweep dir; kd-sync finds it as it finds a job's run
FINISH_TIMEOUT_S = 300


def log_report_run(students: list[dict[str, Any]], sweep_dir: Path, written: list[Path], metric: str,
                   runs: dict[str, Any]) -> Optional[Path]:
    """Log the run; return its offline dir (to upload), None when it went online or W&B failed (warned).

    `runs` is kd.report.wandb_report.sweep_runs's: the project, entity and group of the cells' runs."""
    out_dir = sweep_dir / REPORT_RUN_DIR
    (out_dir / RUN_FILE).unlink(missing_ok=True)  # a new run for each report: each holds one table, not a history
    group = runs["groups"][0] if len(runs["groups"]) == 1 else None
    tracker = WandbTracker(runs["project"], runs["entity"], group, [], "auto", None, FINISH_TIMEOUT_S)
    cfg = OmegaConf.create({"sweep_dir": str(sweep_dir.resolve()), "metric": metric})
    columns, rows = csv_records(students, metric)
    with tracker.run(cfg, out_dir, job_type="report", name=f"report {'/'.join(sweep_dir.resolve().parts[-2:])}") as run:
        if not isinstance(run, WandbRun):
            return None
        figures = [p for p in written if p.suffix == ".png"]
        tables = {"gains": (columns, rows)}
        if has_diagnostics(students):  # why the gains are what they are, as diagnostics.csv has it
            tables["diagnostics"] = diagnostic_rows(students, metric)
        run.log_values({**{key: wandb.Table(columns=c, data=[[row[k] for k in c] for row in r])
                           for key, (c, r) in tables.items()},
                        **{f"figures/{p.stem}": wandb.Image(str(p), caption=p.name) for p in figures}})
        name = re.sub(r"[^A-Za-z0-9._-]+", "-", f"report-{'-'.join(sweep_dir.resolve().parts[-2:])}")[:128]
        run.log_files(name, "report", [p for p in written if p.suffix in (".md", ".csv")])
        offline = run.offline
    return Path(read_run_file(out_dir)["sync_dir"]) if offline else None
