"""Distill a teacher into a student under one augmentation policy; Hydra picks the cell.

    python kd/train.py                                   # one run with the defaults
    python kd/train.py -m alpha=0,0.25,0.5,0.75,1.0 aug=none,fc,fcra   # the paper's grid
    python kd/train.py -m alpha=0,0.25,0.5,0.75,1.0 aug=none,fc,fcra data=digits   # in minutes, on a CPU
    python kd/train.py stage=teacher                     # only train (or verify) the cached teacher
"""
from __future__ import annotations

import logging
import os
import random
import sys
import time
import traceback
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python kd/train.py`: make the package importable without installing it
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hydra
import numpy as np
import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from kd.config import Stage, register_schemas
from kd.engine import fit
from kd.losses import check_kd_params
from kd.results import RESULTS_FILE, read_results, write_results
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
        "temperature": float(cfg.loss.temperature),
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


def seed_everything(seed: int, deterministic: bool, cudnn_benchmark: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds CUDA too
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.benchmark = cudnn_benchmark and not deterministic


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
    if previous.get("config") != OmegaConf.to_container(cfg, resolve=True, enum_to_str=True):
        raise ValueError(
            f"{path} holds the completed results of a different config. Use a new hydra.sweep.dir "
            f"(or hydra.run.dir) for a changed config; kd will not overwrite finished results."
        )
    return previous


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run one job (a grid cell, or the teacher) and return what it writes to results.json."""
    check_kd_params(cfg.alpha, cfg.loss.temperature)
    out_dir = prepare_out_dir(cfg.out_dir)
    previous = completed_results(out_dir, cfg)
    if previous is not None:
        log.info("%s already completed: final top-1 %.2f%% (skipped)", out_dir, previous["final_top1"])
        return previous
    results = {**describe(cfg), "config": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)}
    started = time.time()
    try:
        results.update(_train(cfg, out_dir), status="completed")
    except BaseException as err:
        results.update(status="failed", error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc())
        raise
    finally:
        results["wall_time_s"] = time.time() - started
        write_results(out_dir, results)
    return results


def _train(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    t = cfg.trainer
    device = resolve_device(t.device)
    seed_everything(cfg.seed, t.deterministic, t.cudnn_benchmark)
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


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> dict[str, Any]:
    return train(cfg)


if __name__ == "__main__":
    main()
