"""What the teacher sees of each training batch: `trainer.teacher_view` (Beyer et al., CVPR 2022, "Knowledge
distillation: a good teacher is patient and consistent").

- `same` (default): the student's batch exactly, mixed where the augmentation mixes ("consistent").
- `clean`: each image as stored, un-augmented and never mixed; its logits never change, so they are
  computed once (as for aug=none) unless a distiller reads features.
- `independent`: its own draw of the same augmentation of the same images; where the augmentation mixes,
  its own mix too (its own lambda and box, the same partner image). For CutMixPick it is the teacher's own
  fc + CutMix of each picked image's own image, not picked again (the student's pick decides what trains).

A pack draws each kind of view once per step and shares it between its cells of that view. The
independent view comes from its own generator, re-seeded from `seed` and the epoch at each epoch's start:
drawing it leaves the student's stream untouched, and what it draws depends on nothing but seed, epoch
and step, so a cell trains the same alone, in a pack with cells of other views, or resumed. Under
trainer.augment_scope=epoch it augments its own copy of the whole split once per epoch from that generator,
as the student's stream does from its own (kd/data/pipeline.py).
"""
from __future__ import annotations

from typing import Optional

import torch

from kd.config import TeacherView
from kd.training.second_views import SecondViews, aug_key
from kd.data.order import rank_augment_seed
from kd.training.diagnostics import TeacherViewStats

Views = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # images, labels, dataset indices


def independent_seed(seed: int, epoch: int) -> int:
    """The independent view's seed for an epoch: a fixed odd-multiplier mix, never the stream's own seed."""
    return (seed * 0x9E3779B97F4A7C15 + (epoch + 1) * 0xBF58476D1CE4E5B9) % (1 << 63)


class TeacherViews:
    """The teacher's input for each view, from the student's batch and its dataset indices."""

    def __init__(self, batches, seed: int, device: torch.device) -> None:
        self.batches = batches  # a DevicePipeline: the only one with per-index views (kd/runs/checks.py refuses others)
        self.seed = seed
        self.generator = torch.Generator(device=device)
        self.augmented: torch.Tensor | None = None  # augment_scope=epoch: the independent view's own epoch of the split

    def begin_epoch(self, epoch: int) -> None:
        seed = independent_seed(self.seed, epoch)
        if self.batches.world_size > 1:  # a data-parallel rank draws its share's view from its own stream
            seed = rank_augment_seed(seed, epoch, self.batches.rank)
        self.generator.manual_seed(seed)
        self.augmented = None

    def inputs(self, view: TeacherView, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> Views:
        if view == TeacherView.same:
            return images, labels, indices
        if view == TeacherView.clean:
            return (*self.batches.clean(indices), indices)
        if self.batches.epoch_seed is not None and self.augmented is None:  # its epoch's draws, once, when first asked
            self.augmented = self.batches.augment_all(self.generator)
        return (*self.batches.view(indices, self.generator, self.augmented), indices)


class Teaching:
    """The teacher's side of a pack's training: per step, its outputs on each view that the pack's live
    distilling cells ask for; per epoch, the diagnostics of each view (kd/training/diagnostics.py)."""

    def __init__(self, fns: dict, views: TeacherViews, batch_size: int, device: torch.device,
                 live=None, seconds: Optional[SecondViews] = None) -> None:
        self.fns = fns  # {TeacherView: (images, indices) -> Outputs}: the live teacher, or its cached logits
        self.views = views
        self.live = live  # the live teacher, for second views (kd/training/second_views.py)
        self.seconds = seconds
        self.batch_size = batch_size
        self.device = device
        self.stats: dict = {}
        self.ran: set = set()

    def begin_epoch(self, epoch: int) -> None:
        self.views.begin_epoch(epoch)
        if self.seconds is not None:
            self.seconds.begin_epoch(epoch)
        self.stats = {view: TeacherViewStats(self.device, self.batch_size) for view in self.fns}
        self.ran = set()

    def step(self, wanted: set, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> dict:
        """{view: the teacher's Outputs on it} for the views in `wanted`."""
        out = {}
        for view in wanted:  # any order: only the independent view draws, from its own generator
            x, y, i = self.views.inputs(view, images, labels, indices)
            out[view] = self.fns[view](x, i)
            self.stats[view].update(out[view].logits, y)
            self.ran.add(view)
        return out

    def second(self, wanted: dict, indices: torch.Tensor, on_view: dict) -> dict:
        """{student: (its second view's images, the teacher's Outputs on them)} for `wanted`, {student: (its
        distiller's second augmentation, its teacher view)}; `on_view` is `step`'s result on the batch. Students
        with equal augmentations share one draw; the teacher runs once per drawn view (no diagnostics: those are
        the batch's)."""
        drawn: dict = {}
        out = {}
        for i, (aug, view) in wanted.items():
            key = aug_key(aug)
            if key not in drawn:
                drawn[key] = (self.seconds.images(aug, indices), {})
            images, teacher = drawn[key]
            if view not in teacher:  # the clean view's images are the batch's own: its outputs are the same
                teacher[view] = on_view[view] if view == TeacherView.clean else self.live(images, indices)
            out[i] = (images, teacher[view])
        return out

    def read(self) -> dict:
        """{view: its epoch's diagnostics} for the views the teacher ran on this epoch."""
        return {view: self.stats[view].read() for view in self.ran}
