"""Distill a teacher into a student under one augmentation policy; Hydra picks the cell.

    python kd/train.py                                   # one run with the defaults
    python kd/train.py -m alpha=0,0.25,0.5,0.75,1.0 aug=none,fc,fcra   # the paper's grid
    python kd/train.py -m alpha=0,0.25,0.5,0.75,1.0 aug=none,fc,fcra data=digits   # in minutes, on a CPU
    python kd/train.py stage=teacher                     # only train (or verify) the cached teacher
    python kd/train.py stage=data data=cifar100          # only download (if allowed) and verify the data
"""
from __future__ import annotations

import contextlib
import itertools
import logging
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Union

if __package__ in (None, ""):  # `python kd/train.py`: make the package importable without installing it
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import kd  # noqa: F401,E402  (first: it sets OpenMP's wait policy before torch loads OpenMP)
import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from kd.config import Stage, defining_config, register_schemas
from kd.data import ImageSplits, on_disk
from kd.device import resolve_device, speed_switches
from kd.engine import Cell, fit, test_top1
from kd.locking import LOCK_FILE, JobDirBusyError, exclusive_job_dir
from kd.models.summary import network_size
from kd.paths import CONF_DIR
from kd.provenance import environment, now
from kd.augment import aug_name
from kd.checks import check_cell
from kd.report.axes import TABLE_KEYS, cell_overrides, swept_keys
from kd.results import RESULTS_FILE, read_results, write_results
from kd.sweep_dir import register_resolvers
from kd.teacher import (arch_name, check_teacher_accuracy, ensure_teacher, load_teacher, sha256_of, teacher_recipe,
                        teacher_work_dir)

log = logging.getLogger("kd.train")
register_schemas()
register_resolvers()


def describe(cfg: DictConfig) -> dict[str, Any]:
    """The job's place in the grid, as stored in results.json and used for run names."""
    return {
        "stage": Stage(cfg.stage).value,
        "data": cfg.data._target_.rsplit(".", 1)[-1],
        "model": arch_name(cfg.model),
        "teacher": arch_name(cfg.teacher.arch),
        "aug": aug_name(cfg.aug._target_),
        "alpha": float(cfg.alpha),
        "loss": cfg.loss._target_.rsplit(".", 1)[-1],
        "temperature": cfg.loss.get("temperature"),  # None for a loss of one's own without one
        "seed": int(cfg.seed),
        "epochs": int(cfg.trainer.epochs),
        "teacher_epochs": int(cfg.teacher.epochs),
    }


def run_name(cfg: DictConfig) -> str:
    """`aug=fc alpha=0.5 seed=0`, then the job's other swept keys as typed (`loss.beta=0.1 pair=vgg13-vgg8`), so
    that the cells of a pack and their W&B runs never share a name."""
    d = describe(cfg)
    if d["stage"] == Stage.teacher.value:
        return f"teacher {d['teacher']} {d['data']} seed={d['seed']}"
    swept = swept_keys(Path(cfg.out_dir).parent)
    others = sorted((k, v) for k, v in cell_overrides(Path(cfg.out_dir)).items() if k in swept and k not in TABLE_KEYS)
    return " ".join([f"aug={d['aug']} alpha={d['alpha']:g} seed={d['seed']}", *(f"{k}={v}" for k, v in others)])


def unwritable_reason(path: Path) -> str | None:
    """Why no files can be created at `path` (probed with a temp dir, removed again); None if they can."""
    existing = path.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file"
    try:
        os.rmdir(tempfile.mkdtemp(dir=existing))
    except OSError as err:
        return f"cannot create files in {existing}: {err.strerror}"
    return None


class CheckOutputDir(Callback):
    """Refuse an unwritable hydra.run.dir / hydra.sweep.dir up front, naming the key to change.

    Otherwise Hydra's own mkdir fails with a bare OSError. Hydra turns a callback's exceptions
    into warnings, so a callback stops the run with SystemExit.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, "hydra.run.dir")
        refuse_taken_run_dir(config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, "hydra.sweep.dir")

    @staticmethod
    def _check(config: DictConfig, key: str) -> None:
        HydraConfig.instance().set_config(config)  # as Hydra does next: the dir may use ${hydra:job.name}
        path = Path(OmegaConf.select(config, key))
        reason = unwritable_reason(path)
        if reason is not None:
            raise SystemExit(f"Error: {key}={path} is not writable ({reason}). Set {key} to a writable dir.")


def refuse_taken_run_dir(config: DictConfig) -> None:
    """A single run into a dir that holds another config's finished results, or that another run is training in,
    is refused here, before Hydra rewrites the dir's .hydra/ files (they would then describe the refused run)."""
    run_dir = Path(OmegaConf.select(config, "hydra.run.dir"))
    if not run_dir.is_dir():
        return
    cfg = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
    try:
        check_cell(cfg)  # a bad value is named as such, not as "another config"
    except Exception as err:  # every kind of bad input check_cell raises
        raise SystemExit(f"Error: {type(err).__name__}: {err}") from None
    try:
        completed_results(run_dir, cfg)
        if (run_dir / LOCK_FILE).exists():
            with exclusive_job_dir(run_dir, wait=False):
                pass
    except (ValueError, JobDirBusyError) as err:
        raise SystemExit(f"Error: {err} Nothing was written.") from None


def prepare_out_dir(path: str) -> Path:
    """Create the job's output dir and prove it writable before any work is done."""
    out_dir = Path(path)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".write_test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise PermissionError(
            f"output dir {out_dir} is not writable ({err.strerror}). Set hydra.run.dir / hydra.sweep.dir "
            f"(or out_dir) to a writable place."
        ) from None
    return out_dir


def completed_results(out_dir: Path, cfg: DictConfig) -> dict | None:
    """A finished job's results, so rerunning a sweep skips its completed cells."""
    path = out_dir / RESULTS_FILE
    if not path.is_file():
        return None
    previous = read_results(path)
    if previous.get("status") != "completed":
        return None
    if previous.get("defining_config") != defining_config(cfg):
        raise ValueError(
            f"{path} holds the completed results of a different config. Use a new hydra.sweep.dir "
            f"(or hydra.run.dir) for a changed config; kd will not overwrite finished results."
        )
    return previous


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run one job (a grid cell, or the teacher) and return what it writes to results.json: a pack of one."""
    (outcome,) = train_pack([cfg])
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


def train_pack(cfgs: list[DictConfig]) -> list[Union[dict[str, Any], BaseException]]:
    """Run the jobs of one pack (cells that differ only in the loss's settings) in this process.

    Each job gets its results (also in its results.json), or the error that stopped it alone (bad
    input, a NaN loss); the others train on. An error that stops the whole pack is raised.
    """
    outcomes: list[Any] = [None] * len(cfgs)
    todo = []
    # In a multirun another copy of the sweep may hold a cell: wait for it (then skip or resume). A
    # single run stops at once instead.
    wait = in_multirun()
    with contextlib.ExitStack() as locks:
        for i, cfg in enumerate(cfgs):
            try:
                check_cell(cfg)
                out_dir = prepare_out_dir(cfg.out_dir)
                locks.enter_context(exclusive_job_dir(out_dir, wait))
                previous = completed_results(out_dir, cfg)
            except Exception as err:
                outcomes[i] = err
                continue
            if previous is not None:
                log.info("%s already completed with this config (skipped; delete its %s to run it again)",
                         out_dir, RESULTS_FILE)
                outcomes[i] = previous
            else:
                todo.append(i)
        if todo:
            for i, outcome in zip(todo, _run_recorded([cfgs[i] for i in todo])):
                outcomes[i] = outcome
    return outcomes


def _run_recorded(cfgs: list[DictConfig]) -> list[Union[dict[str, Any], BaseException]]:
    """Train the pack, writing every job's results.json however it ends."""
    device, device_choice = resolve_device(cfgs[0].trainer.device)  # the pack shares its trainer settings
    env = environment(device)
    # What ran, beside what was asked for (config.trainer): bf16 and compile are CUDA-only.
    ran_with = {"device_choice": device_choice, "speed": speed_switches(cfgs[0].trainer, device)}
    results = [{**describe(cfg), "config": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
                "defining_config": defining_config(cfg), "environment": env, **ran_with, "started_at": now()}
               for cfg in cfgs]
    outcomes: list[Union[dict[str, Any], BaseException]] = []
    started = time.time()
    try:
        outcomes = _train(cfgs, device, {"environment": env, **ran_with})
    except BaseException as err:
        # A signal or Ctrl-C (requeue, preemption) leaves the runs resumable; anything else is a failure.
        status = "interrupted" if isinstance(err, (KeyboardInterrupt, SystemExit)) else "failed"
        for result in results:
            result.update(status=status, error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc())
        raise
    finally:
        for cfg, result, outcome in itertools.zip_longest(cfgs, results, outcomes):
            if isinstance(outcome, BaseException):
                result.update(status="failed", error=f"{type(outcome).__name__}: {outcome}",
                              traceback="".join(traceback.format_exception(outcome)))
            elif outcome is not None:
                result.update(outcome, status="completed")
            result["wall_time_s"] = time.time() - started
            result["ended_at"] = now()
            write_results(Path(cfg.out_dir), result)
    return [outcome if isinstance(outcome, BaseException) else result for outcome, result in zip(outcomes, results)]


def _train(cfgs: list[DictConfig], device: torch.device, ran_with: dict[str, Any]
           ) -> list[Union[dict[str, Any], BaseException]]:
    """Train the pack on `device`; `ran_with` (environment, device choice, speed switches) goes to each W&B run."""
    cfg = cfgs[0]  # what the pack shares: data, models, aug, optim, trainer, seed
    t = cfg.trainer
    splits = instantiate(cfg.data)  # downloads if allowed; torchvision checks every file's md5
    stage = Stage(cfg.stage)
    if stage == Stage.data:
        found = on_disk(splits)
        log.info("data %s ready: %d training and %d test images, %d classes, in %s (%d files, %.1f MB)",
                 splits.name, found["train_images"], found["test_images"], found["num_classes"],
                 found["data_location"], found["data_files"], found["data_bytes"] / 1e6)
        return [dict(found) for _ in cfgs]
    image_shape = tuple(splits.split("train")[0].shape[1:])
    networks = ([] if stage == Stage.teacher else [("model", cfg.model)]) + (
        [("teacher.arch", cfg.teacher.arch)] if stage == Stage.teacher or any(c.alpha > 0 for c in cfgs) else [])
    for key, node in networks:  # before any training: a network that cannot take these images stops here
        size = network_size(node, splits.num_classes, image_shape, key)
        log.info("%s %s: %s (%s images)", key, arch_name(node), size.format(), "x".join(map(str, image_shape[1:])))
    if t.batch_size > len(splits.train_labels):
        raise ValueError(f"trainer.batch_size={t.batch_size} is larger than the {len(splits.train_labels)} "
                         f"training images of {splits.name}; lower trainer.batch_size")
    distils = [c.alpha > 0 for c in cfgs]
    teacher, teacher_info = None, {}
    if stage == Stage.teacher or any(distils):
        teacher, teacher_info = prepare_teacher(cfg, splits, device, ran_with)
    if stage == Stage.teacher:
        return [dict(teacher_info) for _ in cfgs]

    with contextlib.ExitStack() as stack:
        runs, cells = [], []
        for c in cfgs:
            run = stack.enter_context(instantiate(c.logger).run(c, Path(c.out_dir), job_type="student",
                                                                name=run_name(c)))
            run.record({**describe(c), **ran_with})  # flat keys (aug: fcra, alpha, seed, ...) the UI groups by
            runs.append(run)
            cells.append(Cell(c, Path(c.out_dir), defining_config(c), run.log,
                              name=run_name(c) if in_multirun() else "",
                              stale_fix="Rerun with the same overrides, or use a new hydra.run.dir / hydra.sweep.dir."))
        outcomes = fit(cells, splits, device, teacher)
        finished: list[Union[dict[str, Any], BaseException]] = []
        for run, outcome, distilled in zip(runs, outcomes, distils):
            if isinstance(outcome, BaseException):
                finished.append(outcome)
                continue
            # An alpha=0 cell never uses the teacher: its results are those of the same cell run alone.
            result = {**outcome, "test_images": len(splits.test_labels),  # one image is 100 / test_images points
                      **(teacher_info if distilled else {"teacher_top1": None})}
            run.summary({**summary_metrics(result), "teacher_top1": result["teacher_top1"],
                         "teacher_sha256": result.get("teacher_sha256")})
            finished.append(result)
    return finished


# What a run's W&B summary shows: the final epoch's test top-1 and, with a val split, the epoch picked on val.
# Never best_top1: an epoch picked on the test set is no result (it stays in results.json, named as such).
SUMMARY_KEYS = ("final_top1", "best_val_top1", "test_top1_at_best_val", "best_epoch")


def summary_metrics(outcome: dict[str, Any]) -> dict[str, Any]:
    return {key: outcome[key] for key in SUMMARY_KEYS if key in outcome}


def prepare_teacher(cfg: DictConfig, splits: ImageSplits, device: torch.device, ran_with: dict[str, Any]
                    ) -> tuple[Any, dict[str, Any]]:
    """The teacher (trained first if it is not cached), measured on the test split and refused at chance."""
    path = ensure_teacher(cfg, splits, lambda tcfg: fit_teacher(tcfg, splits, device, ran_with))
    teacher, fmt = load_teacher(path, cfg, splits)
    top1 = test_top1(teacher, cfg, splits, device)
    digest = sha256_of(path)
    log.info("teacher %s: test top-1 %.2f%% (%s, %s format, sha256 %s)", arch_name(cfg.teacher.arch), top1, path,
             fmt, digest[:12])
    check_teacher_accuracy(top1, cfg, splits.num_classes, path)
    work_dir = teacher_work_dir(path)  # kd-sync finds the teacher's W&B run there; none for a given checkpoint
    return teacher, {"teacher_top1": top1, "teacher_checkpoint": str(path), "teacher_sha256": digest,
                     "teacher_format": fmt, "teacher_work_dir": str(work_dir) if work_dir.is_dir() else None}


def fit_teacher(tcfg: DictConfig, splits: ImageSplits, device: torch.device, ran_with: dict[str, Any]
                ) -> dict[str, Any]:
    """Train the teacher from its own recipe (`tcfg`), resuming its work dir whatever the student asks."""
    work_dir = Path(tcfg.out_dir)
    with instantiate(tcfg.logger).run(tcfg, work_dir, job_type="teacher", name=run_name(tcfg)) as run:
        run.record({**describe(tcfg), **ran_with})
        cell = Cell(tcfg, work_dir, teacher_recipe(tcfg, splits.content_digest), run.log, name="",
                    stale_fix=f"{work_dir} holds the work of another teacher recipe (an older kd?); delete "
                              f"{work_dir} to train this teacher afresh.")
        (outcome,) = fit([cell], splits, device, None)
        if isinstance(outcome, BaseException):
            raise outcome
        run.summary(summary_metrics(outcome))
        return outcome


# An absolute config dir: relative to a module Hydra would look for a `conf` package instead.
@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> dict[str, Any]:
    return train(cfg)


if __name__ == "__main__":
    # Run the importable kd.train.main, not this __main__ copy: submitit launchers pickle the task
    # function, and only an importable one pickles by reference (by value it drags in torch's modules).
    from kd.train import main as importable_main

    importable_main()
