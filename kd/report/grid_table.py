"""Hydra callback that prints the Table-1-style grid when a multirun ends: the tables kd-report prints (rows the
augmentations, or the swept key that a one-augmentation grid compares), with what each cell trained for."""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Optional

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from kd.training.progress import duration
from kd.runs.results import collect_sweep
from kd.report.epochs import epochs_of, uniform
from kd.report.search import print_trials
from kd.report.table import METRICS, VAL_METRICS, format_tables
from kd.runs.rank import is_writer
from kd.runs.search import is_search


class PrintGridTable(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.started = time.monotonic()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not is_writer():  # `-m` under torchrun: every rank ends the multirun, rank 0 prints
            return
        if is_search(config.hydra):  # a search's cells are its trials, not a grid
            print_trials(Path(config.hydra.sweep.dir))
            return
        print_grid_table(Path(config.hydra.sweep.dir), time.monotonic() - self.started)


def print_grid_table(sweep_dir: Path, wall_s: Optional[float] = None) -> None:
    """Print the students' grid of a sweep dir (and the multirun's wall time); also used by kd's launchers when
    cells failed."""
    results = collect_sweep(sweep_dir)
    students = [r for r in results if r.get("stage") == "student"]
    for r in results:
        if r.get("status") == "corrupt":  # a cell that kd cannot place in the grid: named, never passed over
            print(f"kd: {r['error']}; rerun this sweep's command to train its cell again", file=sys.stderr)
    if not students:
        return
    teachers = sorted({f"{r['teacher']} {r['teacher_top1']:.2f}%" for r in students
                       if r.get("teacher_top1") is not None})
    took = f"; this multirun took {duration(wall_s)}" if wall_s is not None else ""
    print(f"\nTest top-1 (%) of the students, final epoch; sweep {sweep_dir}{took}")
    if teachers:
        print(f"teacher: {', '.join(teachers)}")
    if uniform(students) and epochs_of(students) is not None:  # otherwise each table has an epochs column
        print(f"epochs: {epochs_of(students)}")
    print(format_tables(students))
    completed = [r for r in students if r.get("status") == "completed"]
    for metric in VAL_METRICS:  # with a val split, also the epoch picked honestly
        if completed and all(metric in r for r in completed):
            print(f"\nStudents' {METRICS[metric]} (%)")
            print(format_tables(students, metric))
