"""kd's default launcher: the sweep's cells in packs, one pack at a time, in this process.

A pack is the cells that differ only in the loss's settings (kd/runs/packs.py): they train together,
sharing each augmented batch and the teacher's forward. Every cell still gets what Hydra gives a
job (its own dir, named by its overrides, with .hydra/, its log file, its JobReturn) and kd's per-cell outputs
(results.json, checkpoint.pt, W&B run). `hydra/launcher=basic` runs one cell at a time instead.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Optional, Sequence

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.errors import CompactHydraException
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from kd.training import progress
from kd.runs.packs import group_packs
from kd.runs.results import RESULTS_FILE
from kd.runs.search import as_trial, is_search

log = logging.getLogger(__name__)


class SweepFailedError(CompactHydraException):
    """Cells of a sweep failed. Hydra prints just this message and exits with status 1."""


def with_output_dir(task_cfg: DictConfig) -> DictConfig:
    """The job's config with `out_dir` fixed to its dir (it interpolates Hydra's per-job runtime)."""
    with open_dict(task_cfg):
        task_cfg.out_dir = str(task_cfg.out_dir)
    return task_cfg


def finished_job(config: DictConfig) -> Optional[JobReturn]:
    """The JobReturn of a cell whose results.json says it completed with this config (or that it holds another
    config's results), without touching its dir; None for a cell that has work to do.

    Hydra's run_job would rewrite the finished cell's .hydra/ files and log before kd saw it was done.
    """
    from kd.runs.job import completed_results

    HydraConfig.instance().set_config(config)  # the subdir interpolates the job's overrides and number
    out_dir = Path(str(config.hydra.sweep.dir)) / str(config.hydra.sweep.subdir)
    if not (out_dir / RESULTS_FILE).is_file():
        return None
    with read_write(config.hydra.runtime), open_dict(config.hydra.runtime):
        config.hydra.runtime.output_dir = str(out_dir.absolute())
    HydraConfig.instance().set_config(config)
    cfg = with_output_dir(OmegaConf.masked_copy(config, [k for k in config if k != "hydra"]))
    try:
        previous = completed_results(out_dir, cfg)
    except ValueError as err:  # another config's results: the cell fails, its results stay as they are
        previous = err
    if previous is None:
        return None
    ret = JobReturn(overrides=list(config.hydra.overrides.task), cfg=cfg, hydra_cfg=config, working_dir=os.getcwd())
    ret.status = JobStatus.FAILED if isinstance(previous, ValueError) else JobStatus.COMPLETED
    ret.return_value = previous
    if ret.status == JobStatus.COMPLETED:
        log.info("%s already completed with this config (skipped; delete its %s to run it again)", out_dir,
                 RESULTS_FILE)
    return ret


def prepare_jobs(hydra_context: HydraContext, sweep_configs: list[DictConfig]) -> list[JobReturn]:
    """Hydra's per-job setup (dir, .hydra/ files, callbacks) for every cell; each JobReturn holds its config.

    Hydra points the log at one job's file at a time; the pack logs into every cell's file.
    """
    prepared, log_files = [], []
    for config in sweep_configs:
        ret = run_job(hydra_context=hydra_context, task_function=with_output_dir, config=config,
                      job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
        prepared.append(ret)
        log_files += [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    root = logging.getLogger()
    for handler in log_files[:-1]:  # the last job's handler is the one Hydra left in place
        extra = logging.FileHandler(handler.baseFilename)
        extra.setFormatter(handler.formatter)
        root.addHandler(extra)
    return prepared


def run_pack(hydra_context: HydraContext, sweep_configs: list[DictConfig]) -> list[JobReturn]:
    """Train one pack's cells together; one JobReturn per cell, FAILED with its own error where it failed. Under a
    search each completed cell returns its objective (kd/runs/search.py), the one number the sweeper takes."""
    returns = _run_pack(hydra_context, sweep_configs)
    return [as_trial(ret) for ret in returns] if is_search(sweep_configs[0].hydra) else returns


def _run_pack(hydra_context: HydraContext, sweep_configs: list[DictConfig]) -> list[JobReturn]:
    from kd.runs.job import train_pack  # lazy: Hydra imports launchers while scanning plugins

    returns = [finished_job(config) for config in sweep_configs]
    todo = [i for i, ret in enumerate(returns) if ret is None]
    if not todo:
        return returns  # type: ignore[return-value]
    prepared = prepare_jobs(hydra_context, [sweep_configs[i] for i in todo])
    try:
        outcomes = train_pack([ret.return_value for ret in prepared])
    except Exception as err:  # the whole pack stopped (data, teacher): every cell failed with it
        outcomes = [err] * len(prepared)
    for i, ret, outcome in zip(todo, prepared, outcomes):
        ret.return_value = outcome
        ret.status = JobStatus.FAILED if isinstance(outcome, BaseException) else JobStatus.COMPLETED
        returns[i] = ret
    return returns  # type: ignore[return-value]


class KdPackedLauncher(Launcher):
    def __init__(self) -> None:
        self.config: Optional[DictConfig] = None
        self.hydra_context: Optional[HydraContext] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None and self.hydra_context is not None
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        configs = []
        for i, overrides in enumerate(job_overrides):
            config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(config):
                config.hydra.job.id = config.hydra.job.num = initial_job_idx + i
            configs.append(config)
        packs = group_packs([config for config in configs])
        log.info("Launching %d jobs locally in %d pack(s) (cells that differ only in the loss train together)",
                 len(configs), len(packs))
        for n, pack in enumerate(packs, 1):  # the whole grid up front, each cell with its pack
            for i in pack:
                log.info("\t#%d : %s  (pack %d/%d)", initial_job_idx + i, " ".join(filter_overrides(job_overrides[i])),
                         n, len(packs))
        returns: list[Optional[JobReturn]] = [None] * len(configs)
        progress.start_grid(len(packs))
        for n, pack in enumerate(packs, 1):
            log.info("pack %d/%d starts: #%s", n, len(packs), ", #".join(str(initial_job_idx + i) for i in pack))
            started = time.monotonic()
            for i, ret in zip(pack, run_pack(self.hydra_context, [configs[i] for i in pack])):
                returns[i] = ret
            progress.pack_done(time.monotonic() - started)
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        failed = [(i, ret) for i, ret in enumerate(returns) if ret is not None and ret.status == JobStatus.FAILED]
        if is_search(self.config.hydra):  # each failed trial is the sweeper's to mark failed; the others count
            for i, ret in failed:
                log.warning("trial #%d %s failed: %s: %s", initial_job_idx + i,
                            " ".join(filter_overrides(job_overrides[i])), type(ret._return_value).__name__,
                            ret._return_value)
            return returns  # type: ignore[return-value]
        if failed:  # Hydra would re-raise the first error and skip on_multirun_end: the table would never print
            from kd.report.grid_table import print_grid_table

            sweep_dir = Path(str(self.config.hydra.sweep.dir))
            print_grid_table(sweep_dir, progress.grid_elapsed())
            raise SweepFailedError(
                f"{len(failed)} of {len(returns)} cells failed (sweep {sweep_dir}):\n" + "\n".join(
                    f"  #{initial_job_idx + i} {' '.join(filter_overrides(job_overrides[i]))}: "
                    f"{type(ret._return_value).__name__}: {ret._return_value}" for i, ret in failed) +
                "\nEach cell's results.json says whether it completed or failed, with the traceback. Fix, then rerun "
                "the same command with hydra.sweep.dir set to this sweep: completed cells are skipped.")
        return returns  # type: ignore[return-value]
