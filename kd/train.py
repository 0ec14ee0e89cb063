"""Distill a teacher into a student under one augmentation policy; Hydra picks the cell.

    python kd/train.py                                   # one run with the defaults
    python kd/train.py -m alpha=0,0.25,0.5,0.75,1.0 aug=none,fc,fcra   # the paper's grid
    python kd/train.py -m alpha=0,0.25,0.5,0.75,1.0 aug=none,fc,fcra data=digits   # in minutes, on a CPU
    python kd/train.py stage=teacher                     # only train (or verify) the cached teacher
"""
from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python kd/train.py`: make the package importable without installing it
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from kd.config import Stage, defining_config, register_schemas
from kd.engine import fit
from kd.losses import check_kd_params
from kd.results import RESULTS_FILE, read_results, write_results
from kd.targets import check_targets
from kd.teacher import arch_name, ensure_teacher, load_teacher

log = logging.getLogger("kd.train")
register_schemas()


def describe(cfg: DictConfig) -> dict[str, Any]:
    """The job's place in the grid, as stored in results.json and used for run names."""
    return {
        "stage": Stage(cfg.stage).value,
        "data": cfg.data._target_.rsplit(".", 1)[-1],
        "model": arch_name(cfg.model),
        "teacher": arch_name(cfg.teacher.arch),
        "aug": get_class(cfg.aug._target_).name,
        "alpha": float(cfg.alpha),
        "loss": cfg.loss._target_.rsplit(".", 1)[-1],
        "temperature": cfg.loss.get("temperature"),  # None for a loss of one's own without one
        "seed": int(cfg.seed),
        "epochs": int(cfg.trainer.epochs),
    }


def run_name(cfg: DictConfig) -> str:
    d = describe(cfg)
    if d["stage"] == Stage.teacher.value:
        return f"teacher {d['teacher']} {d['data']} seed={d['seed']}"
    return f"aug={d['aug']} alpha={d['alpha']:g} seed={d['seed']}"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"trainer.device={name} but no CUDA device is visible; use trainer.device=cpu or auto")
    return device


def check_trainer(t: DictConfig) -> None:
    """Counts the schema can only type-check: a 0 would fail late (checkpoint_every=0 after a whole epoch)."""
    for key in ("epochs", "batch_size", "eval_batch_size", "checkpoint_every"):
        if t[key] < 1:
            raise ValueError(f"trainer.{key}={t[key]} must be >= 1")


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

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, "hydra.sweep.dir")

    @staticmethod
    def _check(config: DictConfig, key: str) -> None:
        HydraConfig.instance().set_config(config)  # as Hydra does next: the dir may use ${hydra:job.name}
        path = Path(OmegaConf.select(config, key))
        reason = unwritable_reason(path)
        if reason is not None:
            raise SystemExit(f"Error: {key}={path} is not writable ({reason}). Set {key} to a writable dir.")


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


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run one job (a grid cell, or the teacher) and return what it writes to results.json."""
    check_kd_params(cfg.alpha, cfg.loss.get("temperature"))
    check_trainer(cfg.trainer)
    check_targets(cfg)
    out_dir = prepare_out_dir(cfg.out_dir)
    previous = completed_results(out_dir, cfg)
    if previous is not None:
        log.info("%s already completed with this config (skipped; delete its %s to run it again)",
                 out_dir, RESULTS_FILE)
        return previous
    results = {**describe(cfg), "config": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
               "defining_config": defining_config(cfg)}
    started = time.time()
    try:
        results.update(_train(cfg, out_dir), status="completed")
    except BaseException as err:
        # A signal or Ctrl-C (requeue, preemption) leaves the run resumable; anything else is a failure.
        status = "interrupted" if isinstance(err, (KeyboardInterrupt, SystemExit)) else "failed"
        results.update(status=status, error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc())
        raise
    finally:
        results["wall_time_s"] = time.time() - started
        write_results(out_dir, results)
    return results


def _train(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    t = cfg.trainer
    device = resolve_device(t.device)
    splits = instantiate(cfg.data)
    if t.batch_size > len(splits.train_labels):
        raise ValueError(f"trainer.batch_size={t.batch_size} is larger than the {len(splits.train_labels)} "
                         f"training images of {splits.name}; lower trainer.batch_size")
    tracker = instantiate(cfg.logger)

    def fit_teacher(tcfg: DictConfig) -> dict:
        with tracker.run(tcfg, Path(tcfg.out_dir), job_type="teacher", name=run_name(tcfg)) as run:
            result = fit(tcfg, splits, device, Path(tcfg.out_dir), None, run.log)
            run.summary({"final_top1": result["final_top1"], "best_top1": result["best_top1"]})
            return result

    stage = Stage(cfg.stage)
    needs_teacher = stage == Stage.teacher or cfg.alpha > 0
    teacher, teacher_top1 = None, None
    if needs_teacher:
        path = ensure_teacher(cfg, splits, fit_teacher)
        teacher, teacher_top1 = load_teacher(path, cfg, splits)
        log.info("teacher %s: test top-1 %.2f%% (%s)", arch_name(cfg.teacher.arch), teacher_top1, path)
    if stage == Stage.teacher:
        return {"teacher_top1": teacher_top1, "teacher_checkpoint": str(path)}

    with tracker.run(cfg, out_dir, job_type="student", name=run_name(cfg)) as run:
        result = fit(cfg, splits, device, out_dir, teacher, run.log)
        summary = {"final_top1": result["final_top1"], "best_top1": result["best_top1"], "teacher_top1": teacher_top1}
        run.summary(summary)
    return {**result, "teacher_top1": teacher_top1}


# An absolute config dir: relative to a module Hydra would look for a `conf` package instead.
@hydra.main(version_base="1.3", config_path=str(Path(__file__).resolve().parents[1] / "conf"), config_name="config")
def main(cfg: DictConfig) -> dict[str, Any]:
    return train(cfg)


if __name__ == "__main__":
    # Run the importable kd.train.main, not this __main__ copy: submitit launchers pickle the task
    # function, and only an importable one pickles by reference (by value it drags in torch's modules).
    from kd.train import main as importable_main

    importable_main()
