"""A search: a multirun whose sweeper (Optuna's, conf/hparams_search/) picks each trial's values from the trials
before it. Each trial then returns one number, its objective: the val split's top-1, never the test set's, so the
values a search picks are not fitted to the test images it is later reported on (docs/search.md)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.types import RunMode
from omegaconf import DictConfig

from kd.config import Objective

BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"  # a grid: each job returns its results


class NoValSplitError(ValueError):
    """A search without a val split would have nothing honest to maximize."""


def is_search(hydra_cfg: DictConfig) -> bool:
    """A multirun under any sweeper but Hydra's grid (BasicSweeper): its jobs must return a float."""
    mode = RunMode[hydra_cfg.mode] if isinstance(hydra_cfg.mode, str) else hydra_cfg.mode  # a saved multirun.yaml's
    return mode == RunMode.MULTIRUN and hydra_cfg.sweeper._target_ != BASIC_SWEEPER


def has_val_split(data_cfg: DictConfig) -> bool:
    """data.val_size holds one out of the training split; a folder may bring its own val/. A dataset of one's own
    without the key has no val split that kd knows of."""
    if "val_size" in data_cfg and data_cfg.val_size is not None:
        return True
    return data_cfg._target_ == "kd.data.folder" and (Path(os.path.expanduser(str(data_cfg.root))) / "val").is_dir()


def check_search(cfg: DictConfig) -> None:
    """Refuse a search whose data has no val split, before any trial trains."""
    if not has_val_split(cfg.data):
        raise NoValSplitError(
            f"a search maximizes objective={Objective(cfg.objective).value}, the val split's top-1 (never the test "
            f"set's), but this data has no val split: add data.val_size=N to hold N training images out "
            f"(e.g. data.val_size=200 on digits, 5000 on CIFAR), or give a folder a val/ split")


def objective(result: dict[str, Any], cfg: DictConfig) -> float:
    """The trial's objective, read from its results (kd/training/engine.py: summarize)."""
    check_search(cfg)
    if Objective(cfg.objective) == Objective.best_val_top1:
        return float(result["best_val_top1"])
    return float(result["history"][-1]["val/top1"])


def as_trial(ret: JobReturn) -> JobReturn:
    """A finished job's return as a search's sweeper takes it: its objective in place of its results; a job whose
    objective cannot be read fails (the sweeper marks its trial failed), as a job that raised does."""
    if ret.status != JobStatus.COMPLETED or not isinstance(ret.return_value, dict):
        return ret
    try:
        ret.return_value = objective(ret.return_value, ret.cfg)
    except NoValSplitError as err:
        ret.return_value, ret.status = err, JobStatus.FAILED
    return ret
