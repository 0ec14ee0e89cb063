"""The distiller API: what every loss of kd is, Hinton's KD included (kd/distillers/kd.py).

One meaning of alpha for every distiller:

    L = scale * ((1 - alpha) * CE(student, targets) + alpha * term)

where `term` is the distiller's own, with its own weights (`loss.*` keys: KD's T^2 * KL, DKD's
alpha/beta, FitNet's and AT's feature weights). `scale` (default 1) only exists so that a published
recipe that weights CE and the term independently stays reachable exactly: mdistiller's
`1.0 * CE + term` is alpha=0.5 with loss.scale=2 (both products are exact in floating point).

A distiller declares what it reads: `needs_features` makes the loop call the student and the teacher
with `features=True` (kd/models/features.py); otherwise they return logits only and a plain forward
is all that runs. It may own learned parameters (FitNet's regressor): `setup` builds them from the
networks' shapes before the optimizer is made, they train with the student's optimizer and are saved
in and restored from the cell's checkpoint.

A distiller that keeps per-sample state across epochs (CRD's memory banks) sets `needs_indices`: its `setup`
is also given the training set's labels, one per dataset index (their count is the training set's size),
and its `term` the batch's dataset indices as a last argument. Such state lives in registered buffers and
its random draws in a generator it checkpoints, so that a resumed cell trains as the uninterrupted one.

A distiller may declare a first stage (RepDistiller's `init_epochs`: AB, FSP, FT): `first_stage_epochs` epochs
that a distilling cell (alpha > 0) runs before its main ones, training only `first_stage_modules` (the student
and the teacher in eval mode, those modules in train mode) on `first_term` alone, with their own SGD
(`first_stage_lr` constant, momentum 0.9, weight decay 5e-4, as RepDistiller's init()). The main schedule starts
after it; `main_parameters` are the distiller's parts that train with the student (all of them by default).

A distiller whose reference runs the teacher in train mode (OFD: mdistiller's OFD.train(), the original OFD code)
sets `teacher_batch_stats`: the teacher's BatchNorms then normalize with each batch's own statistics
(kd/training/teacher.py, FrozenTeacher); it still never learns, and its running statistics stay as cached.

A distiller may ask for a second view of each batch (MLKD's strong view): `second_view`, an augmentation
(kd/data/), which the loop draws for the batch's same images from its own generator (kd/training/second_views.py)
and runs the student and the teacher on; their Outputs carry it as `second`, and CE is then the sum of both views'.
Only a distilling cell (alpha > 0) draws it: at alpha = 0 a cell is plain CE on the batch, whatever its loss.
"""
from __future__ import annotations

from typing import Iterator, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from kd.models.features import Features


class Outputs(NamedTuple):
    """What a network computed on the batch: logits, and its features when the distiller needs them."""

    logits: torch.Tensor
    features: Optional[Features] = None
    second: Optional["Outputs"] = None  # on the distiller's second view of the batch, where it asks for one


class LossParts(NamedTuple):
    total: torch.Tensor
    ce: torch.Tensor
    kd: torch.Tensor  # the distiller's term, its own weights applied, before alpha and scale
    extra: dict = {}  # the term's named parts (DKD's tckd, nckd), logged as train/<name>


class PackLosses(NamedTuple):
    """The losses of a pack's students on one step, as LossParts stacked over them (total, ce, kd: one each)."""

    total: torch.Tensor
    ce: torch.Tensor
    kd: torch.Tensor
    extra: list[dict]  # each student's named parts


def stack_parts(parts: list[LossParts]) -> PackLosses:
    """Students' LossParts, computed one by one, as one PackLosses."""
    return PackLosses(torch.stack([p.total for p in parts]), torch.stack([p.ce for p in parts]),
                      torch.stack([p.kd for p in parts]), [p.extra for p in parts])


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """bf16 autocast's logits widened to float32; float64 kept, so a test can hold a loss to its reference."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def check_alpha(alpha: float) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha} is outside [0, 1]; set alpha=0 (plain CE) .. alpha=1 (pure distillation)")


FIRST_STAGE_MOMENTUM = 0.9  # RepDistiller's init(): its main optimizer's momentum and weight decay
FIRST_STAGE_WEIGHT_DECAY = 5e-4


class Distiller(nn.Module):
    """Subclass it and write `term`; override `cross_entropy` for another CE (label smoothing)."""

    needs_features: bool = False
    needs_indices: bool = False  # setup(..., labels) and term(..., indices): per-sample state (kd/distillers/crd.py)
    first_stage_epochs: int = 0  # a first stage before the main epochs (set_first_stage)
    first_stage_lr: float = 0.0
    teacher_batch_stats: bool = False  # the teacher's BatchNorms on the batch's statistics (train mode), not running
    second_view = None  # an augmentation: the loop also runs the student and the teacher on it (the docstring)

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        if not scale > 0.0:
            raise ValueError(f"loss.scale={scale} must be > 0 (1 keeps (1 - alpha) * CE + alpha * term)")
        self.scale = scale

    def setup(self, student: nn.Module, teacher: Optional[nn.Module], images: torch.Tensor) -> None:
        """Build learned parts from the networks' shapes on a batch like the training ones; none by default."""

    def set_first_stage(self, epochs: int, lr: float) -> None:
        if not epochs >= 0:
            raise ValueError(f"loss.first_stage_epochs={epochs} must be >= 0 (0: no first stage)")
        if epochs > 0 and not lr > 0.0:
            raise ValueError(f"loss.first_stage_lr={lr} must be > 0")
        self.first_stage_epochs, self.first_stage_lr = int(epochs), float(lr)

    def first_stage_modules(self, student: nn.Module) -> list[nn.Module]:
        """What the first stage trains (in train mode, the rest in eval mode); none without a first stage."""
        return []

    def first_term(self, student: Outputs, teacher: Outputs) -> torch.Tensor:
        """The first stage's loss, alone (no CE, no alpha)."""
        raise NotImplementedError

    def first_stage(self, student: Outputs, teacher: Outputs, targets: torch.Tensor) -> LossParts:
        """A first-stage step's loss; its CE is only logged."""
        loss = self.first_term(student, teacher)
        return LossParts(loss, self.cross_entropy(student.logits, targets).detach(), loss)

    def main_parameters(self) -> Iterator[nn.Parameter]:
        """The learned parts that train with the student in the main stage."""
        return self.parameters()

    def cross_entropy(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(at_least_float32(logits), targets)  # hard labels, or Mixup/CutMix's soft ones

    def student_ce(self, student: Outputs, targets: torch.Tensor) -> torch.Tensor:
        """CE on the batch, plus CE on the second view where the student was run on one (MLKD's both views)."""
        ce = self.cross_entropy(student.logits, targets)
        return ce if student.second is None else ce + self.cross_entropy(student.second.logits, targets)

    def term(self, student: Outputs, teacher: Outputs, targets: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
        """{"kd": the distillation term, other names: its parts to log}; `epoch` counts from 0."""
        raise NotImplementedError

    def forward(self, student: Outputs, teacher: Optional[Outputs], targets: torch.Tensor, alpha: float,
                epoch: int = 0, indices: Optional[torch.Tensor] = None) -> LossParts:
        check_alpha(alpha)
        ce = self.student_ce(student, targets)
        if alpha == 0.0:  # the teacher is not run for such a cell: its results are those of plain CE
            return LossParts(self.scale * ce, ce, torch.zeros_like(ce))  # x * 1.0 is x, bit for bit
        if teacher is None:
            raise ValueError("the teacher's outputs are required when alpha > 0")
        if self.needs_indices:
            if indices is None:
                raise ValueError(f"{type(self).__name__} reads the batch's dataset indices: pass indices=")
            parts = dict(self.term(student, teacher, targets, epoch, indices))
        else:
            parts = dict(self.term(student, teacher, targets, epoch))
        kd = parts.pop("kd")
        total = (1.0 - alpha) * ce + alpha * kd
        return LossParts(self.scale * total, ce, kd, parts)

    def weighted(self, parts: LossParts, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The CE's and the term's shares of `parts.total`, alpha and scale applied: what optim=dot
        (kd/training/dot.py) backpropagates apart. At alpha=0 the term's share has no graph."""
        return self.scale * ((1.0 - alpha) * parts.ce), self.scale * (alpha * parts.kd)

    def pack_forward(self, logits: torch.Tensor, teachers: list[Optional[Outputs]], targets: torch.Tensor,
                     alphas: list[float], epoch: int = 0) -> PackLosses:
        """The losses of students whose distillers share this one's settings and differ only in alpha (a stacked
        pack's, kd/training/stacking.py), `logits` stacked over them: each as `forward` gives it alone. This one
        calls `forward` per student; a distiller may compute them at once (kd/distillers/kd.py)."""
        return stack_parts([self(Outputs(student), teacher, targets, alpha, epoch)
                            for student, teacher, alpha in zip(logits, teachers, alphas)])


class CrossEntropy(Distiller):
    """Plain cross-entropy: the teacher's own training loss (it has no teacher, so alpha must be 0)."""

    def term(self, student: Outputs, teacher: Outputs, targets: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
        raise ValueError("the cross-entropy loss has no distillation term, so alpha > 0 would be ignored; use alpha=0")

    def forward(self, student: Outputs, teacher: Optional[Outputs], targets: torch.Tensor, alpha: float,
                epoch: int = 0, indices: Optional[torch.Tensor] = None) -> LossParts:
        if alpha != 0.0:
            self.term(student, teacher, targets, epoch)
        return super().forward(student, None, targets, 0.0, epoch)
