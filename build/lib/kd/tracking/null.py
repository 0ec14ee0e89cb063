"""Experiment trackers: `logger=none` here; `logger=wandb` in kd/tracking/wandb_tracker.py.

A tracker opens one run per job (`run(...)`, a context manager) whose `log` takes a
metrics dict and an epoch, whose `summary` takes the final numbers and whose `record` adds
to the run's config (the environment it ran in).
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

from omegaconf import DictConfig


class NullRun:
    def log(self, metrics: dict[str, Any], step: int) -> None:
        pass

    def summary(self, values: dict[str, Any]) -> None:
        pass

    def record(self, config: dict[str, Any]) -> None:
        pass


class NullTracker:
    """`logger=none`: track nothing; results.json is written regardless."""

    @contextlib.contextmanager
    def run(self, cfg: DictConfig, out_dir: Path, job_type: str, name: str) -> Iterator[NullRun]:
        yield NullRun()
