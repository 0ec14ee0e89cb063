"""The teacher: its own recipe, trained once per recipe, cached, checked, frozen.

Every grid cell asks `ensure_teacher`; the first trains it under a file lock and
publishes it by atomic rename, the others wait on the lock and reuse the file.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Callable, Optional

import torch
from filelock import FileLock
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from kd.checkpoint import CheckpointError, load_checkpoint, save_atomic, set_aside
from kd.config import AugmentScope, Stage, as_recorded, without_old_added
from kd.training import published_teachers as published
from kd.training import torchvision_teachers
from kd.data.augment_ladder import picks_with_teacher
from kd.data.datasets import ImageSplits
from kd.distillers.base import Outputs

log = logging.getLogger(__name__)


def arch_name(model_cfg: DictConfig) -> str:
    """`kd.models.resnet.resnet32x4` -> `resnet32x4`: the factory's name is the architecture's name."""
    return model_cfg._target_.rsplit(".", 1)[-1]


def teacher_recipe(cfg: DictConfig, data_content: Optional[str]) -> dict:
    """Everything that defines the trained teacher, and nothing else (not paths, device, speed switches,
    nor any student setting): the cache name hashes it and the work dir resumes under it.

    `data_content` is the digest of data the config only points at (ImageSplits.content_digest: a
    folder's files), so a teacher is never reused for another folder, wherever either lies."""
    data = without_old_added({k: v for k, v in OmegaConf.to_container(cfg.data, resolve=True).items()
                              if k not in ("root", "download", "cache_dir")}, "data")
    if data_content is not None:
        data["content"] = data_content
    t = cfg.teacher
    return as_recorded({
        "data": data,
        "arch": OmegaConf.to_container(t.arch, resolve=True),
        "aug": without_old_added(OmegaConf.to_container(t.aug, resolve=True), "aug"),
        "loss": OmegaConf.to_container(t.loss, resolve=True),
        "optim": OmegaConf.to_container(t.optim, resolve=True),
        "epochs": t.epochs,
        "batch_size": t.batch_size,
        "seed": t.seed,
    })


def recipe_digest(cfg: DictConfig, data_content: Optional[str]) -> str:
    return hashlib.sha256(json.dumps(teacher_recipe(cfg, data_content), sort_keys=True).encode()).hexdigest()[:10]


def uses_teacher(cfg: DictConfig) -> bool:
    """A cell that distils, or whose augmentation the teacher picks (CutMixPick): even at alpha=0."""
    return cfg.alpha > 0 or picks_with_teacher(cfg.aug._target_)


def check_given_checkpoint(cfg: DictConfig) -> None:
    """A teacher.checkpoint that the job will load must exist, and teacher.weights must be torchvision's for
    the teacher's network: checked before any work (kd/runs/checks.py); a download waits for the job."""
    if cfg.teacher.checkpoint is not None and cfg.teacher.weights is not None:
        raise ValueError(f"teacher.checkpoint={cfg.teacher.checkpoint} and teacher.weights={cfg.teacher.weights} "
                         f"both name the teacher's weights; set one of them to null")
    if Stage(cfg.stage) != Stage.teacher and not uses_teacher(cfg):
        return
    if cfg.teacher.checkpoint is not None:
        given_checkpoint(cfg)
    if cfg.teacher.weights is not None:
        torchvision_teachers.published_weights(arch_name(cfg.teacher.arch), cfg.teacher.weights)


def given_checkpoint(cfg: DictConfig) -> Path:
    """The teacher.checkpoint file, which must exist."""
    path = Path(os.path.expanduser(cfg.teacher.checkpoint))
    if not path.is_file():
        raise CheckpointError(f"teacher.checkpoint={path} does not exist. Fix the path, or set teacher.checkpoint=null "
                              f"to train and cache the teacher under teacher.cache_dir.")
    return path


def teacher_checkpoint_path(cfg: DictConfig, splits: ImageSplits) -> Path:
    """The configured checkpoint, or a cache file named after the recipe."""
    if cfg.teacher.checkpoint is not None:
        return Path(os.path.expanduser(cfg.teacher.checkpoint))
    digest = recipe_digest(cfg, splits.content_digest)
    name = f"{splits.name}-{arch_name(cfg.teacher.arch)}-seed{cfg.teacher.seed}-{digest}.pt"
    return Path(os.path.expanduser(cfg.teacher.cache_dir)) / name


def teacher_training_config(cfg: DictConfig, work_dir: Path) -> DictConfig:
    """The same entry point's config with the teacher's recipe in place of every student setting."""
    t = cfg.teacher
    tcfg = copy.deepcopy(cfg)
    tcfg.model = t.arch
    tcfg.aug = t.aug
    tcfg.loss = t.loss
    tcfg.optim = t.optim
    tcfg.trainer.epochs = t.epochs
    tcfg.trainer.batch_size = t.batch_size
    tcfg.trainer.augment_scope = AugmentScope.batch.value  # the recipe's draws: the cache name knows no other
    tcfg.seed = t.seed
    tcfg.alpha = 0.0
    tcfg.stage = Stage.teacher.value
    tcfg.out_dir = str(work_dir)
    return tcfg


def teacher_work_dir(path: Path) -> Path:
    """Where the teacher cached at `path` trains: its checkpoints, its own log and W&B run (outside any sweep)."""
    return path.with_name(path.stem + ".work")


def ensure_teacher(cfg: DictConfig, splits: ImageSplits,
                   fit_teacher: Callable[[DictConfig, Callable[[dict], Path]], dict]) -> Path:
    """Return the teacher checkpoint, training it first (once, under a lock) if it is not cached.

    `fit_teacher(tcfg, publish)` trains the teacher and calls `publish(result)`, which saves the cache file and
    returns its path, while its run is still open: the teacher's W&B run logs that very file as its artifact."""
    if cfg.teacher.weights is not None:
        return torchvision_teachers.weights_file(arch_name(cfg.teacher.arch), cfg.teacher.weights)
    path = teacher_checkpoint_path(cfg, splits)
    if cfg.teacher.checkpoint is not None:
        return given_checkpoint(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if path.is_file() and readable_teacher(path):
            log.info("teacher: reusing %s", path)
            return path
        if cfg.teacher.batch_size > len(splits.train_labels):
            raise ValueError(f"teacher.batch_size={cfg.teacher.batch_size} is larger than the "
                             f"{len(splits.train_labels)} training images of {splits.name}; lower teacher.batch_size")
        work_dir = teacher_work_dir(path)
        log.info("teacher: training %s for %d epochs (its own recipe; checkpoints in %s)",
                 path.name, cfg.teacher.epochs, work_dir)

        def publish(result: dict) -> Path:
            model_state = load_checkpoint(work_dir / "checkpoint.pt", "teacher work checkpoint", "")["model"]
            save_atomic(
                {
                    "arch": arch_name(cfg.teacher.arch),
                    "num_classes": splits.num_classes,
                    "data": splits.name,
                    "state_dict": model_state,
                    "test_top1": result["final_top1"],
                    "recipe": json.dumps(teacher_recipe(cfg, splits.content_digest), sort_keys=True),
                },
                path,
            )
            log.info("teacher: saved %s (test top-1 %.2f%%)", path, result["final_top1"])
            return path

        fit_teacher(teacher_training_config(cfg, work_dir), publish)
    return path


def readable_teacher(path: Path) -> bool:
    """Whether a cached teacher file loads; a corrupt one (truncated, empty, not a checkpoint) is moved aside,
    kept as `<name>.corrupt-<time>` (set_aside), so that it is retrained once under the lock instead of failing
    every cell."""
    try:
        ckpt = load_checkpoint(path, "cached teacher", "")
        if all(key in ckpt for key in ("arch", "num_classes", "state_dict")):
            return True
        reason = "it is not a teacher checkpoint kd wrote"
    except CheckpointError as err:
        reason = str(err).strip()
    aside = set_aside(path)
    log.warning("teacher: the cached %s is unreadable (%s); moved it to %s and training the teacher again",
                path, reason, aside)
    return False


def load_teacher(path: Path, cfg: DictConfig, splits: ImageSplits) -> tuple[nn.Module, str]:
    """Build the configured teacher and load `path` into it (kd's own format, RepDistiller's, or a state dict
    as other scripts save it: kd.published_teachers, its hash checked where its name carries one as torchvision's
    do); refuse a checkpoint of another shape. Returns the model and the checkpoint's format."""
    fix = ("Point teacher.checkpoint at a checkpoint of that architecture and dataset, or set "
           "teacher.checkpoint=null to train one.")
    ckpt = load_checkpoint(path, "teacher checkpoint", fix)
    want = arch_name(cfg.teacher.arch)
    if all(key in ckpt for key in ("arch", "num_classes", "state_dict")):
        found, classes, state, fmt = ckpt["arch"], ckpt["num_classes"], ckpt["state_dict"], "kd"
    else:
        state, found, classes, fmt = published.read(ckpt, f"teacher checkpoint {path}", fix)
        fmt = torchvision_teachers.describe(path, fmt, torchvision_teachers.check_hash(path, sha256_of(path)))
    if found != want or classes != splits.num_classes:
        raise CheckpointError(
            f"teacher checkpoint {path} holds {found} with {classes} classes, "
            f"but the config asks for {want} with {splits.num_classes} classes ({splits.name}). {fix}"
        )
    model = instantiate(cfg.teacher.arch, num_classes=splits.num_classes)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(f"teacher checkpoint {path} does not fit {want}: {err}. {fix}") from None
    return model, fmt


class TeacherTooWeakError(RuntimeError):
    """The teacher scores at chance: distilling from it would teach noise."""


def check_teacher_accuracy(top1: float, cfg: DictConfig, num_classes: int, path: Path) -> None:
    """Stop before distilling from a teacher at chance level (a 2-epoch smoke-test leftover, a wrong file)."""
    chance = 100.0 / num_classes
    floor = 2 * chance if cfg.teacher.min_top1 is None else cfg.teacher.min_top1
    if top1 < floor:
        raise TeacherTooWeakError(
            f"teacher {path} scores {top1:.2f}% test top-1, below teacher.min_top1={floor:.2f}% (chance is "
            f"{chance:.2f}%); distilling from it would teach noise. Retrain it (delete the file, or raise "
            f"teacher.epochs), point teacher.checkpoint at a trained one, or, for a smoke test that wants a weak "
            f"teacher, set teacher.min_top1=0."
        )


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def on_batch_statistics(model: nn.Module) -> nn.Module:
    """A copy of `model` in train mode whose BatchNorms normalize with each batch's statistics and track none: the
    teacher as a reference runs it (OFD's), while the cached teacher, whose running statistics the test split's
    logits and other cells read, stays as it is."""
    model = copy.deepcopy(model).train()
    for m in model.modules():
        if isinstance(m, BATCH_NORMS):
            m.track_running_stats = False  # train mode then passes no running buffers to batch_norm: none move
    return model


class FrozenTeacher:
    """The teacher with no grad, run on the student's exact (augmented) batch: in eval mode, or with `batch_stats`
    its BatchNorms on the batch's statistics (Distiller.teacher_batch_stats, kd/distillers/base.py)."""

    def __init__(self, model: nn.Module, autocast: Callable, compile_fn: Callable = lambda model: model,
                 features: bool = False, batch_stats: bool = False) -> None:
        model = model.eval().requires_grad_(False)
        self.model = on_batch_statistics(model) if batch_stats else model
        self.forward = compile_fn(self.model)
        self.autocast = autocast
        self.features = features  # only for a distiller that reads them: the plain forward otherwise

    def __call__(self, images: torch.Tensor, indices: torch.Tensor) -> Outputs:
        with torch.no_grad(), self.autocast():
            return Outputs(*self.forward(images, features=True)) if self.features else Outputs(self.forward(images))


class CachedTeacherLogits:
    """aug=none: the teacher's logits cannot change between epochs, so compute them once."""

    def __init__(self, teacher: FrozenTeacher, batches, num_images: int, num_classes: int) -> None:
        self.table = None
        for images, _, indices in batches:
            logits = teacher(images, indices).logits
            if self.table is None:
                self.table = torch.empty(num_images, num_classes, dtype=logits.dtype, device=logits.device)
            self.table[indices] = logits

    def __call__(self, images: torch.Tensor, indices: torch.Tensor) -> Outputs:
        return Outputs(self.table[indices])
