"""The training loop: `fit` runs `train_one_epoch` and `evaluate`, checkpointing as it goes.

Metrics accumulate on the device and are read once per epoch (plus a periodic
non-finite check), so the GPU is never stalled by a per-step host sync.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import random
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from kd.augment import NoAugment
from kd.checkpoint import CheckpointError, load_checkpoint, rng_state, save_atomic, set_rng_state
from kd.config import Pipeline, defining_config
from kd.data import ImageSplits
from kd.pipeline import DataLoaderPipeline, DevicePipeline, Normalize
from kd.teacher import CachedTeacherLogits, FrozenTeacher

log = logging.getLogger(__name__)

NONFINITE_CHECK_EVERY = 50  # steps between host reads of the "loss went NaN/inf" flag
TeacherFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or inf: stop instead of training on garbage."""


def seed_everything(seed: int, deterministic: bool, cudnn_benchmark: bool) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA); `deterministic` turns on PyTorch's deterministic algorithms."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds CUDA too
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.benchmark = cudnn_benchmark and not deterministic


def autocast_for(device: torch.device, bf16: bool) -> Callable:
    """bf16 autocast on CUDA when asked; a no-op context elsewhere, so CPU runs the same code."""
    if bf16 and device.type == "cuda":
        return functools.partial(torch.autocast, device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext


def train_one_epoch(student: nn.Module, forward: Callable, batches, teacher_fn: Optional[TeacherFn],
                    loss_fn: Callable, alpha: float, optimizer: torch.optim.Optimizer,
                    autocast: Callable, epoch: int) -> dict[str, float]:
    student.train()
    device = next(student.parameters()).device
    sums = torch.zeros(4, device=device)  # loss, ce, kd, correct (each summed over images)
    first_bad_step = torch.tensor(-1, device=device)
    seen = 0
    for step, (images, labels, indices) in enumerate(batches):
        with autocast():
            logits = forward(images)
        teacher_logits = teacher_fn(images, indices) if teacher_fn is not None else None
        parts = loss_fn(logits, teacher_logits, labels, alpha=alpha)
        optimizer.zero_grad(set_to_none=True)
        parts.total.backward()
        optimizer.step()
        n = labels.shape[0]
        seen += n
        correct = (logits.argmax(1) == labels).sum()
        sums += torch.stack([parts.total.detach() * n, parts.ce.detach() * n, parts.kd.detach() * n, correct])
        bad = ~torch.isfinite(parts.total.detach())
        first_bad_step = torch.where(bad & (first_bad_step < 0), step, first_bad_step)
        if (step + 1) % NONFINITE_CHECK_EVERY == 0:
            _raise_if_nonfinite(first_bad_step, epoch)
    _raise_if_nonfinite(first_bad_step, epoch)
    loss, ce, kd, correct = (sums / seen).tolist()
    return {"train/loss": loss, "train/ce": ce, "train/kd": kd, "train/top1": 100.0 * correct, "images": seen}


def _raise_if_nonfinite(first_bad_step: torch.Tensor, epoch: int) -> None:
    step = int(first_bad_step.item())
    if step >= 0:
        # Counted from 1, as the epoch log lines count. Resuming would restore the old lr from checkpoint.pt.
        raise NonFiniteLossError(
            f"loss is NaN/inf at epoch {epoch + 1} step {step + 1}; training stopped (the last good checkpoint, "
            f"if any, is kept). Lower optim.optimizer.lr or check the data, and start in a new output dir."
        )


@torch.no_grad()
def evaluate(model: nn.Module, batches, autocast: Callable) -> dict[str, float]:
    """Top-1 and top-5 accuracy (%) on the test split, read from the device once."""
    model.eval()
    device = next(model.parameters()).device
    counts = torch.zeros(3, device=device)  # top1, top5, images
    for images, labels, _ in batches:
        with autocast():
            logits = model(images)
        top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits = top5 == labels[:, None]
        counts += torch.stack([hits[:, 0].sum(), hits.any(1).sum(), torch.tensor(labels.shape[0], device=device)])
    top1, top5, n = counts.tolist()
    return {"test/top1": 100.0 * top1 / n, "test/top5": 100.0 * top5 / n}


def make_batches(cfg: DictConfig, splits: ImageSplits, train: bool, aug, device: torch.device,
                 shuffle: bool):
    """Batches of the train or test split from the configured pipeline."""
    t = cfg.trainer
    images, labels = (splits.train_images, splits.train_labels) if train else (splits.test_images, splits.test_labels)
    batch_size = t.batch_size if shuffle else t.eval_batch_size
    channels_last = t.channels_last  # faster on CPUs too (oneDNN convolutions), not only with cuDNN
    if t.pipeline == Pipeline.device:
        generator = torch.Generator(device=device).manual_seed(cfg.seed)
        return DevicePipeline(images, labels, aug, Normalize(splits.mean, splits.std, device, channels_last),
                              batch_size, generator, shuffle)
    return DataLoaderPipeline(images, labels, aug, splits.mean, splits.std, batch_size, device,
                              t.num_workers if shuffle else 0, cfg.seed, shuffle, channels_last)


def make_student(cfg: DictConfig, num_classes: int, device: torch.device) -> tuple[nn.Module, Callable]:
    """The student in the training memory format, and its forward (compiled where that is on)."""
    t = cfg.trainer
    memory_format = torch.channels_last if t.channels_last else torch.contiguous_format
    student = instantiate(cfg.model, num_classes=num_classes).to(device, memory_format=memory_format)
    forward = torch.compile(student) if t.compile and device.type == "cuda" else student
    return student, forward


def make_teacher_fn(cfg: DictConfig, teacher: Optional[nn.Module], splits: ImageSplits, aug,
                    device: torch.device, autocast: Callable) -> Optional[TeacherFn]:
    """None for alpha=0 (the teacher never runs); cached logits for aug=none; else the live teacher."""
    if teacher is None or cfg.alpha == 0:
        return None
    frozen = FrozenTeacher(teacher.to(device), autocast)
    if isinstance(aug, NoAugment) and cfg.trainer.teacher_logit_cache:
        clean = make_batches(cfg, splits, train=True, aug=aug, device=device, shuffle=False)
        return CachedTeacherLogits(frozen, clean, len(splits.train_labels), splits.num_classes)
    return frozen


def fit(cfg: DictConfig, splits: ImageSplits, device: torch.device, out_dir: Path,
        teacher: Optional[nn.Module], log_metrics: Callable[[dict, int], None]) -> dict:
    """Train `cfg.model` on `splits`, resuming from `out_dir/checkpoint.pt` if present."""
    t = cfg.trainer
    # Seeded here rather than once per process, so that a student's initial weights do not depend on
    # whether its teacher was just trained in this process or read from the cache (nor a resumed run's).
    seed_everything(cfg.seed, t.deterministic, t.cudnn_benchmark)
    student, forward = make_student(cfg, splits.num_classes, device)
    aug = instantiate(cfg.aug)
    autocast = autocast_for(device, t.bf16)
    train_batches = make_batches(cfg, splits, train=True, aug=aug, device=device, shuffle=True)
    test_batches = make_batches(cfg, splits, train=False, aug=NoAugment(), device=device, shuffle=False)
    optimizer = instantiate(cfg.optim.optimizer)(student.parameters())
    scheduler = instantiate(cfg.optim.scheduler)(optimizer)
    loss_fn = instantiate(cfg.loss)
    teacher_fn = make_teacher_fn(cfg, teacher, splits, aug, device, autocast)

    ckpt_path = out_dir / "checkpoint.pt"
    history: list[dict] = []
    start_epoch = 0
    if ckpt_path.exists():
        state = load_checkpoint(ckpt_path, "run checkpoint", f"Delete {ckpt_path} to start this run afresh.")
        if state.get("config") != defining_config(cfg):
            raise CheckpointError(
                f"{ckpt_path} was written by a run with a different config; resuming would mix the two. "
                f"Rerun with the same overrides, or use a new hydra.run.dir / hydra.sweep.dir."
            )
        student.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"], train_batches.generator)
        history, start_epoch = state["history"], state["epoch"]
        log.info("resumed from %s at epoch %d/%d", ckpt_path, start_epoch, t.epochs)

    for epoch in range(start_epoch, t.epochs):
        started = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        stats = train_one_epoch(student, forward, train_batches, teacher_fn, loss_fn, cfg.alpha,
                                optimizer, autocast, epoch)
        scheduler.step()
        images_per_s = stats.pop("images") / (time.perf_counter() - started)
        row = {"epoch": epoch + 1, "lr": lr, **stats, **evaluate(student, test_batches, autocast),
               "epoch_time_s": time.perf_counter() - started, "images_per_s": images_per_s}
        history.append(row)
        log.info("epoch %d/%d  loss %.4f (ce %.4f kd %.4f)  test top-1 %.2f%% top-5 %.2f%%  lr %.4g  %.1fs",
                 epoch + 1, t.epochs, row["train/loss"], row["train/ce"], row["train/kd"],
                 row["test/top1"], row["test/top5"], lr, row["epoch_time_s"])
        log_metrics(row, epoch + 1)
        if (epoch + 1) % t.checkpoint_every == 0 or epoch + 1 == t.epochs:
            save_atomic({"model": student.state_dict(), "optimizer": optimizer.state_dict(),
                         "scheduler": scheduler.state_dict(), "rng": rng_state(train_batches.generator),
                         "history": history, "epoch": epoch + 1, "config": defining_config(cfg)}, ckpt_path)
    if not history:
        raise ValueError(f"trainer.epochs={t.epochs}: nothing to train; set trainer.epochs >= 1")
    return {
        "final_top1": history[-1]["test/top1"],
        "final_top5": history[-1]["test/top5"],
        "best_top1": max(row["test/top1"] for row in history),
        "history": history,
    }
