"""Experiment trackers: `logger=none` here; `logger=wandb` in kd/tracking/wandb_tracker.py.

A tracker opens one run per job (`run(...)`, a context manager, with the job's tags) whose `log`
takes a metrics dict and an epoch, whose `summary` takes the final numbers, whose `record` adds
to the run's config (the environment it ran in), and whose `log_teacher` / `use_teacher` record
the teacher checkpoint a teacher run made and a student run learned from.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator, Sequence

from omegaconf import DictConfig


class NullRun:
    def log(self, metrics: dict[str, Any], step: int) -> None:
        pass

    def summary(self, values: dict[str, Any]) -> None:
        pass

    def record(self, config: dict[str, Any]) -> None:
        pass

    def log_teacher(self, path: Path, sha256: str, top1: float) -> None:
        pass

    def use_teacher(self, path: Path, sha256: str, top1: float) -> None:
        pass


class NullTracker:
    """`logger=none`: track nothing; results.json is written regardless."""

    @contextlib.contextmanager
    def run(self, cfg: DictConfig, out_dir: Path, job_type: str, name: str,
            tags: Sequence[str] = ()) -> Iterator[NullRun]:
        yield NullRun()
