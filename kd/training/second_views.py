"""A distiller's second view of each batch (`Distiller.second_view`: MLKD's strong view): the same images as the
student's batch, augmented by the distiller's own augmentation, and what the teacher sees of them.

Each second augmentation draws from its own generator, re-seeded from `seed` and the epoch at each epoch's start
(as the teacher's independent view, kd/training/teacher_views.py, with other constants): drawing it leaves the
student's stream untouched, and its draws depend on nothing but seed, epoch, step and the augmentation, so a cell
trains the same alone, in a pack with cells of other losses or other second views, or resumed. Cells of a pack with
equal second augmentations share one draw per step. Under trainer.augment_scope=epoch each augments its own copy of
the whole split once per epoch, as the student's stream does.

The teacher sees the second view as `trainer.teacher_view` says it sees the batch: the very images (`same`, the
authors' way), or the clean images (`clean`: the same outputs as on the batch). `independent` has no second
counterpart and is refused (`check_second_view`), as are a mixing or picking second augmentation (Mixup, CutMix:
CE on the second view reads the batch's hard labels) and the DataLoader pipeline (no per-index views).
"""
from __future__ import annotations

from typing import Optional

import torch
from omegaconf import DictConfig

from kd.config import Pipeline, TeacherView
from kd.data.order import rank_augment_seed


def second_seed(seed: int, epoch: int) -> int:
    """A second view's seed for an epoch: a fixed odd-multiplier mix, never the stream's nor the independent view's."""
    return (seed * 0xC2B2AE3D27D4EB4F + (epoch + 1) * 0x165667B19E3779F9) % (1 << 63)


def aug_key(aug) -> tuple:
    """What makes two second augmentations draw alike: their class and settings."""
    return type(aug).__module__, type(aug).__qualname__, tuple(sorted((k, repr(v)) for k, v in vars(aug).items()))


class SecondViews:
    """Each second augmentation's images of the batch's indices, from its own generator."""

    def __init__(self, batches, seed: int, device: torch.device) -> None:
        self.batches = batches  # a DevicePipeline (check_second_view refuses the DataLoader one)
        self.seed = seed
        self.device = device
        self.epoch = 0
        self.generators: dict[tuple, torch.Generator] = {}
        self.augmented: dict[tuple, Optional[torch.Tensor]] = {}  # augment_scope=epoch: its epoch of the split

    def begin_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.generators, self.augmented = {}, {}

    def images(self, aug, indices: torch.Tensor) -> torch.Tensor:
        key = aug_key(aug)
        if key not in self.generators:  # first asked this epoch: seeded, and its epoch's split drawn once
            if not hasattr(self.batches, "images"):  # data.stream=auto chose to stream: no split to draw from
                raise ValueError(f"a second view ({getattr(aug, 'name', type(aug).__name__)}) is drawn from the split "
                                 "held in memory, and this data streams from its files (data.stream); set "
                                 "data.stream=false if it fits, or choose a loss without a second view")
            seed = second_seed(self.seed, self.epoch)
            if self.batches.world_size > 1:  # a data-parallel rank draws its share's view from its own stream
                seed = rank_augment_seed(seed, self.epoch, self.batches.rank)
            generator = torch.Generator(device=self.device).manual_seed(seed)
            self.generators[key] = generator
            self.augmented[key] = aug(self.batches.images, generator) if self.batches.epoch_seed is not None else None
        return self.batches.view(indices, self.generators[key], self.augmented[key], aug=aug)[0]


def check_second_view(cfg: DictConfig, distiller) -> None:
    """Refuse, before any work, what a second view cannot be drawn or shown to the teacher with."""
    aug = distiller.second_view
    if aug is None or float(cfg.alpha) == 0.0:
        return
    name = type(distiller).__name__
    if cfg.trainer.pipeline != Pipeline.device:
        raise ValueError(f"loss={name} draws a second view of each batch on the device, which "
                         f"trainer.pipeline=dataloader does not; use trainer.pipeline=device")
    if str(cfg.data.get("stream", "false")).lower() == "true":  # only file-backed datasets stream
        raise ValueError(f"loss={name} draws a second view from the split held in memory, and data.stream=true "
                         f"decodes each batch from its files; set data.stream=false (or auto, where it fits)")
    if TeacherView(cfg.trainer.teacher_view) == TeacherView.independent:
        raise ValueError(f"loss={name} shows the teacher its second view as it shows it the batch, and "
                         f"trainer.teacher_view=independent has no second counterpart; use same or clean")
    if hasattr(aug, "mix") or hasattr(aug, "pick"):
        raise ValueError(f"loss={name}'s second view {getattr(aug, 'name', type(aug).__name__)} mixes or picks "
                         f"images, and CE on it reads the batch's hard labels; choose a per-image augmentation "
                         f"(fc, fcra, fcta, fcaa, fccutout)")

