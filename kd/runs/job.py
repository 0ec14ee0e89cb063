"""A job: one pack of cells (a single run is a pack of one) checked, locked, trained and recorded.

kd/train.py is the command; this is the work it starts, kept apart so that `--help` and a typo are
answered before torch loads.
"""
from __future__ import annotations

import contextlib
import itertools
import logging
import os
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Union

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from kd.data.augment import aug_name
from kd.runs.checks import check_cell
from kd.config import Stage, TeacherView, defining_config
from kd.training.cpu import warn_if_busy
from kd.data.datasets import ImageSplits, on_disk
from kd.data.image_files import ImageFiles
from kd.data.stream import check_streamable
from kd.training.device import resolve_device, speed_switches
from kd.training.distributed import SINGLE, World, process_group, provenance, quiet_other_ranks, world_from_env
from kd.training.engine import Cell, fit, test_top1
from kd.runs.locking import exclusive_job_dir
from kd.models.summary import network_size
from kd.runs.provenance import environment, now
from kd.runs.overrides import TABLE_KEYS, cell_overrides, swept_keys
from kd.runs.results import (RESULTS_FILE, CorruptResultsError, read_results, set_aside_corrupt_results,
                             write_results)
from kd.training.teacher import (arch_name, check_teacher_accuracy, ensure_teacher, load_teacher, sha256_of, teacher_recipe,
                        teacher_work_dir, uses_teacher)

log = logging.getLogger("kd.train")


def describe(cfg: DictConfig) -> dict[str, Any]:
    """The job's place in the grid, as stored in results.json and used for run names."""
    return {
        "stage": Stage(cfg.stage).value,
        "data": data_name(cfg.data),
        "model": arch_name(cfg.model),
        "teacher": arch_name(cfg.teacher.arch),
        "aug": aug_name(cfg.aug._target_),
        "alpha": float(cfg.alpha),
        "loss": cfg.loss._target_.rsplit(".", 1)[-1],
        # None for a loss of one's own without one, and for a learned one (CTKD: its history's train/temperature)
        "temperature": None if cfg.loss.get("learned_temperature") is True else cfg.loss.get("temperature"),
        "seed": int(cfg.seed),
        "epochs": int(cfg.trainer.epochs),
        "teacher_epochs": int(cfg.teacher.epochs),
        "teacher_view": TeacherView(cfg.trainer.teacher_view).value,
    }


def data_name(data_cfg: DictConfig) -> str:
    """`cifar100`, `digits`; a folder by its own name (`folder:shapes`), so that two folders never read alike."""
    kind = data_cfg._target_.rsplit(".", 1)[-1]
    if kind == "folder" and not OmegaConf.is_missing(data_cfg, "root"):
        return f"folder:{Path(os.path.expanduser(str(data_cfg.root))).resolve().name}"
    return kind


def run_name(cfg: DictConfig) -> str:
    """`aug=fc alpha=0.5 seed=0`, then the job's other swept keys as typed (`loss.beta=0.1 pair=vgg13-vgg8`), so
    that the cells of a pack and their W&B runs never share a name."""
    d = describe(cfg)
    if d["stage"] == Stage.teacher.value:
        return f"teacher {d['teacher']} {d['data']} seed={d['seed']}"
    swept = swept_keys(Path(cfg.out_dir).parent)
    others = sorted((k, v) for k, v in cell_overrides(Path(cfg.out_dir)).items() if k in swept and k not in TABLE_KEYS)
    return " ".join([f"aug={d['aug']} alpha={d['alpha']:g} seed={d['seed']}", *(f"{k}={v}" for k, v in others)])


def axis_tags(cfg: DictConfig) -> list[str]:
    """The cell's swept overrides as `key=value` tags (`aug=fc`, `alpha=0.5`), to filter runs by any axis."""
    swept = swept_keys(Path(cfg.out_dir).parent)
    return [f"{k}={v}" for k, v in sorted(cell_overrides(Path(cfg.out_dir)).items()) if k in swept]


def prepare_out_dir(path: str) -> Path:
    """Create the job's output dir and prove it writable before any work is done. The probe is a file of this
    call's own: two copies of a sweep on one dir create and remove theirs side by side (a shared name made one
    remove the other's and fail)."""
    out_dir = Path(path)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir):
            pass
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
    try:
        previous = read_results(path)
    except CorruptResultsError:  # no finished work can be read from it: the cell has work to do (train_pack)
        return None
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
    input, a NaN loss); the others train on. An error that stops the whole pack is raised. A data-parallel
    job's ranks each run this; rank 0 alone locks the output dirs and writes in them.
    """
    outcomes: list[Any] = [None] * len(cfgs)
    todo = []
    world = world_from_env(cfgs[0].trainer)  # the pack shares its trainer settings
    quiet_other_ranks(world)
    # In a multirun another copy of the sweep may hold a cell: wait for it (then skip or resume). A
    # single run stops at once instead.
    wait = in_multirun()
    with contextlib.ExitStack() as locks:
        for i, cfg in enumerate(cfgs):
            try:
                check_cell(cfg)
                out_dir = prepare_out_dir(cfg.out_dir)
                if world.writer:
                    locks.enter_context(exclusive_job_dir(out_dir, wait))
                    kept = set_aside_corrupt_results(out_dir)
                    if kept is not None:
                        log.warning("%s", kept)
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
            for i, outcome in zip(todo, _run_recorded([cfgs[i] for i in todo], world)):
                outcomes[i] = outcome
    return outcomes


def _run_recorded(cfgs: list[DictConfig], world: World = SINGLE) -> list[Union[dict[str, Any], BaseException]]:
    """Train the pack, writing every job's results.json however it ends (rank 0 alone, data-parallel)."""
    t = cfgs[0].trainer  # the pack shares its trainer settings
    device, device_choice = resolve_device(t.device)
    device = world.device(device)
    if device.type == "cpu":
        warn_if_busy(torch.get_num_threads())
    with process_group(world, device, [str(cfg.out_dir) for cfg in cfgs]):
        return _run_on_ranks(cfgs, world, device, device_choice)


def _run_on_ranks(cfgs: list[DictConfig], world: World, device: torch.device,
                  device_choice: dict[str, Any]) -> list[Union[dict[str, Any], BaseException]]:
    """The pack's training on this rank, and each job's results.json written (by rank 0) however it ends."""
    t = cfgs[0].trainer
    env = environment(device)
    # What ran, beside what was asked for (config.trainer): bf16 and compile are CUDA-only.
    ran_with = {"device_choice": device_choice, "speed": speed_switches(t, device),
                "distributed": provenance(world, -(-t.batch_size // world.size), t.sync_bn)}
    results = [{**describe(cfg), "config": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
                "defining_config": defining_config(cfg), "environment": env, **ran_with, "started_at": now()}
               for cfg in cfgs]
    outcomes: list[Union[dict[str, Any], BaseException]] = []
    started = time.time()
    try:
        outcomes = _train(cfgs, device, {"environment": env, **ran_with}, world)
    except BaseException as err:
        if world.size > 1:
            log.error("rank %d of %d failed: %s: %s", world.rank, world.size, type(err).__name__, err)
        # A signal or Ctrl-C (requeue, preemption) leaves the runs resumable; anything else is a failure.
        status = "interrupted" if isinstance(err, (KeyboardInterrupt, SystemExit)) else "failed"
        if status == "interrupted":
            log.warning("%s: %d cell(s) stop here; each keeps its last finished epoch (checkpoint.pt) and its "
                        "results.json says interrupted", str(err) or type(err).__name__, len(cfgs))
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
            if world.writer:
                write_results(Path(cfg.out_dir), result)
    return [outcome if isinstance(outcome, BaseException) else result for outcome, result in zip(outcomes, results)]


NO_LOGGER = {"_target_": "kd.tracking.null.NullTracker"}  # logger=none's: a rank but rank 0 opens no W&B run


def _train(cfgs: list[DictConfig], device: torch.device, ran_with: dict[str, Any], world: World = SINGLE
           ) -> list[Union[dict[str, Any], BaseException]]:
    """Train the pack on `device`; `ran_with` (environment, device choice, speed switches) goes to each W&B run,
    which rank 0 alone opens."""
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
    if isinstance(splits.train_images, ImageFiles):  # before the teacher trains: what a stream cannot serve
        for c in cfgs:
            check_streamable(c.trainer, instantiate(c.aug), splits.name)
    image_shape = tuple(splits.split("train")[0].shape[1:])
    networks = ([] if stage == Stage.teacher else [("model", cfg.model)]) + (
        [("teacher.arch", cfg.teacher.arch)] if stage == Stage.teacher or any(map(uses_teacher, cfgs)) else [])
    for key, node in networks:  # before any training: a network that cannot take these images stops here
        size = network_size(node, splits.num_classes, image_shape, key)
        log.info("%s %s: %s (%s images)", key, arch_name(node), size.format(), "x".join(map(str, image_shape[1:])))
    if t.batch_size > len(splits.train_labels):
        raise ValueError(f"trainer.batch_size={t.batch_size} is larger than the {len(splits.train_labels)} "
                         f"training images of {splits.name}; lower trainer.batch_size")
    distils = [uses_teacher(c) for c in cfgs]
    teacher, teacher_info = None, {}
    if stage == Stage.teacher or any(distils):
        teacher, teacher_info = prepare_teacher(cfg, splits, device, ran_with, world)
    if stage == Stage.teacher:
        return [dict(teacher_info) for _ in cfgs]

    with contextlib.ExitStack() as stack:
        runs, cells = [], []
        for c in cfgs:
            tracker = instantiate(c.logger if world.writer else NO_LOGGER)
            run = stack.enter_context(tracker.run(c, Path(c.out_dir), job_type="student", name=run_name(c),
                                                  tags=axis_tags(c)))
            run.record({**describe(c), **ran_with})  # flat keys (aug: fcra, alpha, seed, ...) the UI groups by
            if uses_teacher(c):  # lineage: which teacher (by sha256) taught (or picked the data of) this student
                run.use_teacher(Path(teacher_info["teacher_checkpoint"]), teacher_info["teacher_sha256"],
                                teacher_info["teacher_top1"])
            runs.append(run)
            cells.append(Cell(c, Path(c.out_dir), defining_config(c), run.log,
                              name=run_name(c) if in_multirun() else "",
                              stale_fix="Rerun with the same overrides, or use a new hydra.run.dir / hydra.sweep.dir."))
        outcomes = fit(cells, splits, device, teacher, world)
        finished: list[Union[dict[str, Any], BaseException]] = []
        for run, outcome, distilled in zip(runs, outcomes, distils):
            if isinstance(outcome, BaseException):
                finished.append(outcome)
                continue
            # An alpha=0 cell never uses the teacher (but under CutMixPick): its results are those of the cell alone.
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


def prepare_teacher(cfg: DictConfig, splits: ImageSplits, device: torch.device, ran_with: dict[str, Any],
                    world: World = SINGLE) -> tuple[Any, dict[str, Any]]:
    """The teacher (trained first if it is not cached), measured on the test split and refused at chance."""
    path = ensure_teacher(cfg, splits, lambda tcfg, publish: (
        fit_teacher(tcfg, splits, device, ran_with, publish) if world.size == 1 else refuse_teacher_training(cfg)))
    teacher, fmt = load_teacher(path, cfg, splits)
    top1 = test_top1(teacher, cfg, splits, device, world)
    digest = sha256_of(path)
    log.info("teacher %s: test top-1 %.2f%% (%s, %s format, sha256 %s)", arch_name(cfg.teacher.arch), top1, path,
             fmt, digest[:12])
    check_teacher_accuracy(top1, cfg, splits.num_classes, path)
    work_dir = teacher_work_dir(path)  # kd-sync finds the teacher's W&B run there; none for a given checkpoint
    return teacher, {"teacher_top1": top1, "teacher_checkpoint": str(path), "teacher_sha256": digest,
                     "teacher_format": fmt, "teacher_work_dir": str(work_dir) if work_dir.is_dir() else None}


def refuse_teacher_training(cfg: DictConfig) -> None:
    """A data-parallel job distils from a cached teacher: its ranks would wait on the teacher cache's lock."""
    raise ValueError(f"the teacher {arch_name(cfg.teacher.arch)} of this cell is not cached, and a data-parallel job "
                     f"(trainer.devices x trainer.nodes > 1) does not train it: train it first in one process, "
                     f"`python kd/train.py stage=teacher` with this cell's data, teacher and seed overrides")


def fit_teacher(tcfg: DictConfig, splits: ImageSplits, device: torch.device, ran_with: dict[str, Any],
                publish: Callable[[dict[str, Any]], Path]) -> dict[str, Any]:
    """Train the teacher from its own recipe (`tcfg`), resuming its work dir whatever the student asks; its
    run logs the published cache file as the teacher's artifact, which every student run then uses."""
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
        path = publish(outcome)
        run.log_teacher(path, sha256_of(path), outcome["final_top1"])
        return outcome
