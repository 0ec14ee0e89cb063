"""A pack's students: each cell's network, distiller, optimizer and schedule, built and resumed the same way
whether the cell trains alone or in a pack, and the loop update that steps them one after another.

Why a pack is exact: a student's initial weights come from the global RNG re-seeded right before it is built
(`make_student`), so they never depend on alpha, the loss, or which other cells share the pack.
"""
from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from kd.training.capture import EAGER, CompilePlan, float_lrs
from kd.checkpoint import CheckpointError, CorruptCheckpointError, load_checkpoint, rng_state, save_atomic, set_aside
from kd.config import PackMode, TeacherView
from kd.distillers.base import FIRST_STAGE_MOMENTUM, FIRST_STAGE_WEIGHT_DECAY, Distiller, Outputs, stack_parts
from kd.training.dot import DOT
from kd.training.distributed import SINGLE, World, sync_batchnorm
from kd.training.stacking import StackedUpdate, StepOutputs

log = logging.getLogger("kd.training.engine")  # the loop's log lines, wherever their code lives


@dataclass
class Cell:
    """One job as `fit` trains it: its config, where it writes, how it logs."""

    cfg: DictConfig
    out_dir: Path
    identity: dict  # what out_dir/checkpoint.pt must have been written for to be resumed
    log_metrics: Callable[[dict, int], None]
    name: str  # prefixes its log lines in a pack
    stale_fix: str  # what to do when out_dir holds a checkpoint of something else


@dataclass
class Student:
    """A cell's training state inside a pack."""

    cell: Cell
    model: nn.Module
    forward: Callable  # the model, compiled where that is on
    optimizer: torch.optim.Optimizer
    optimizer_step: Callable[[], None]  # optimizer.step, compiled where graph capture is on
    scheduler: torch.optim.lr_scheduler.LRScheduler
    distiller: Distiller  # its loss, with any learned parts (a FitNet regressor) that train with the student
    alpha: float
    view: TeacherView  # what its teacher sees (kd/training/teacher_views.py)
    first_optimizer: Optional[torch.optim.Optimizer] = None  # its distiller's first stage's, where it runs one
    history: list[dict] = field(default_factory=list)  # the main epochs'
    first_history: list[dict] = field(default_factory=list)  # the first stage's epochs'
    start_epoch: int = 0  # epochs done, the first stage's included
    rng: Optional[dict] = None  # random states of its checkpoint, when resumed
    error: Optional[BaseException] = None

    @property
    def first_stage_epochs(self) -> int:
        """Its distiller's first stage, which only a distilling cell runs."""
        return self.distiller.first_stage_epochs if self.alpha > 0 else 0


def seed_everything(seed: int, deterministic: bool, cudnn_benchmark: bool) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA); `deterministic` turns on PyTorch's deterministic algorithms."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds CUDA too
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.benchmark = cudnn_benchmark and not deterministic


class LoopUpdate:
    """`trainer.pack_mode=loop`: each student its own forward, backward and optimizer step. Exact; the default.
    Data-parallel, each rank steps on its share of the batch with the ranks' mean gradient (kd/training/distributed.py)."""

    def __init__(self, students: list[Student], world: World = SINGLE) -> None:
        self.students = students
        self.world = world

    def step(self, live: list[int], images: torch.Tensor, labels: torch.Tensor, teachers: dict[int, Outputs],
             autocast: Callable, epoch: int, indices: Optional[torch.Tensor] = None,
             first_stage: bool = False, second: Optional[dict[int, torch.Tensor]] = None) -> StepOutputs:
        """One step of the live students; `teachers` holds the teacher's outputs on each distilling one's view,
        `indices` the batch's dataset indices (read only by a distiller that needs_indices), `second` the
        images of its second view for each one whose distiller asks for one. In the first stage, each steps its
        first-stage optimizer on its distiller's first-stage loss."""
        parts, logits = [], []
        scale = self.world.loss_scale(labels.shape[0], images.device)
        for i in live:
            s = self.students[i]
            with autocast():
                student = student_outputs(s.forward, images, s.distiller.needs_features and s.alpha > 0)
                if second and i in second:
                    student = student._replace(second=student_outputs(s.forward, second[i], False))
            if first_stage:
                loss, optimizer, optimizer_step = (s.distiller.first_stage(student, teachers[i], labels),
                                                   s.first_optimizer, s.first_optimizer.step)
            else:
                loss = s.distiller(student, teachers.get(i) if s.alpha > 0 else None, labels, s.alpha, epoch, indices)
                optimizer, optimizer_step = s.optimizer, s.optimizer_step
            optimizer.zero_grad(set_to_none=True)
            if isinstance(optimizer, DOT):  # its two gradients apart (world size 1: check_dot refuses ranks)
                optimizer.backward(*s.distiller.weighted(loss, s.alpha))
            else:
                (loss.total * scale).backward()
                self.world.average_gradients(p for group in optimizer.param_groups for p in group["params"])
            optimizer_step()
            parts.append(loss)
            logits.append(student.logits.detach())
        return StepOutputs(live, stack_parts(parts), torch.stack(logits))

    def end_epoch(self, trained: list[int]) -> None:
        for i in trained:  # a waiting student's schedule waits with it
            self.students[i].scheduler.step()

    def lr(self, i: int) -> float:
        return float(self.students[i].optimizer.param_groups[0]["lr"])  # a tensor under graph capture

    def states(self, i: int) -> tuple[dict, dict]:
        """Student i's optimizer and scheduler states, as its checkpoint keeps them."""
        return float_lrs(self.students[i].optimizer.state_dict()), self.students[i].scheduler.state_dict()


def student_outputs(forward: Callable, images: torch.Tensor, features: bool) -> Outputs:
    """The network's logits, and its features only when its distiller reads them (the plain forward otherwise)."""
    return Outputs(*forward(images, features=True)) if features else Outputs(forward(images))


def make_student(cell: Cell, num_classes: int, device: torch.device, plan: CompilePlan = EAGER,
                 teacher: Optional[nn.Module] = None, example: Optional[torch.Tensor] = None,
                 train_labels: Optional[torch.Tensor] = None, world: World = SINGLE) -> Student:
    """A cell's student, seeded right before it is built: the same initial weights for every cell of a pack.

    Its distiller's learned parts (FitNet's regressor) are built after the student, from the shapes of
    `example` (a batch like the training ones), and train with the student's optimizer; a distiller that
    needs_indices is also given `train_labels` (one per dataset index) to size its per-sample state."""
    cfg, t = cell.cfg, cell.cfg.trainer
    seed_everything(cfg.seed, t.deterministic, t.cudnn_benchmark)
    memory_format = torch.channels_last if t.channels_last else torch.contiguous_format
    model = instantiate(cfg.model, num_classes=num_classes).to(device, memory_format=memory_format)
    if t.sync_bn and world.size > 1:  # one process's BatchNorm is already the global batch's
        model = sync_batchnorm(model, device)
    distiller = instantiate(cfg.loss)
    if float(cfg.alpha) > 0 and example is not None:  # an alpha=0 cell never runs its term (nor the teacher)
        if distiller.needs_indices:
            if train_labels is None:
                raise ValueError(f"{type(distiller).__name__} keeps per-sample state: the training set's labels "
                                 "are required")
            distiller.setup(model, teacher, example, train_labels.to(device))
        else:
            distiller.setup(model, teacher, example)
    distiller = distiller.to(device)
    optimizer = instantiate(cfg.optim.optimizer)([*model.parameters(), *distiller.main_parameters()])
    scheduler = instantiate(cfg.optim.scheduler)(optimizer)
    student = Student(cell, model, plan.model(model), optimizer, optimizer.step, scheduler, distiller,
                      float(cfg.alpha), TeacherView(t.teacher_view))
    if student.first_stage_epochs > 0:  # RepDistiller's init(): its own SGD, over the first stage's parts only
        params = [p for m in distiller.first_stage_modules(model) for p in m.parameters()]
        student.first_optimizer = torch.optim.SGD(params, lr=distiller.first_stage_lr, momentum=FIRST_STAGE_MOMENTUM,
                                                  weight_decay=FIRST_STAGE_WEIGHT_DECAY)
    return student


def save_checkpoint(s: Student, states: tuple[dict, dict], generator: torch.Generator, done: int,
                    first_stage_epochs: int) -> None:
    """The cell's checkpoint.pt after `done` epochs (its first stage's included), with the first stage's
    optimizer and history where it runs one, and which stage comes next. Data-parallel, rank 0 alone calls it."""
    optimizer_state, scheduler_state = states
    # Cloned: in stacked mode the weights are views of the whole stack, which torch.save would write.
    model_state = {k: v.clone() for k, v in s.model.state_dict().items()}
    first = ({"first_optimizer": float_lrs(s.first_optimizer.state_dict()), "first_history": s.first_history,
              "stage": "first" if done < first_stage_epochs else "main"} if s.first_optimizer is not None else {})
    save_atomic({"model": model_state, "distiller": s.distiller.state_dict(),
                 "optimizer": optimizer_state, "scheduler": scheduler_state,
                 "rng": rng_state(generator), "history": s.history, "epoch": done, **first,
                 "config": s.cell.identity}, s.cell.out_dir / "checkpoint.pt")


def resume(student: Student) -> None:
    """Continue from the cell's own checkpoint.pt, if it has one written for this very config."""
    path = student.cell.out_dir / "checkpoint.pt"
    if not path.exists():
        return
    fix = f"Delete {path} to start this run afresh."
    try:
        state = load_checkpoint(path, "run checkpoint", fix)
    except CorruptCheckpointError as err:  # nothing to resume from: keep the file, train from the first epoch
        log.warning("%s%s; kept as %s, and this cell trains from its first epoch", _prefix(student),
                    str(err).removesuffix(fix).rstrip(" ."), set_aside(path))
        return
    if state.get("config") != student.cell.identity:
        raise CheckpointError(f"{path} was written by a run with a different config; resuming would mix the "
                              f"two. {student.cell.stale_fix}")
    student.model.load_state_dict(state["model"])
    if "distiller" in state:  # checkpoints of kd before distillers had learned parts hold none
        student.distiller.load_state_dict(state["distiller"])
    student.optimizer.load_state_dict(state["optimizer"])
    student.scheduler.load_state_dict(state["scheduler"])
    if student.first_optimizer is not None:  # its config, checked above, gives it a first stage: saved with it
        student.first_optimizer.load_state_dict(state["first_optimizer"])
        student.first_history = state["first_history"]
    student.history, student.start_epoch, student.rng = state["history"], state["epoch"], state["rng"]
    # A resumed W&B offline run is a new file, and a killed attempt's may hold nothing (SIGKILL flushes
    # nothing): log the checkpointed epochs again, so that the run shows its whole history.
    first = student.first_stage_epochs
    for row in student.first_history:
        student.cell.log_metrics(row, row["first_stage/epoch"])
    for row in student.history:
        student.cell.log_metrics(row, first + row["epoch"])
    log.info("%sresumed from %s at epoch %d/%d%s", _prefix(student), path, student.start_epoch,
             first + student.cell.cfg.trainer.epochs, f" ({first} of them the first stage's)" if first else "")


def make_pack(cells: list[Cell], num_classes: int, device: torch.device, plan: CompilePlan,
              teacher: Optional[nn.Module] = None, example: Optional[torch.Tensor] = None,
              train_labels: Optional[torch.Tensor] = None,
              world: World = SINGLE) -> Union[LoopUpdate, StackedUpdate]:
    """A pack's students, each resumed from its own checkpoint (every rank from rank 0's), in the update that
    trains them."""
    students = [make_student(cell, num_classes, device, plan, teacher, example, train_labels, world)
                for cell in cells]
    for s in students:
        resume(s)
        s.optimizer_step = plan.optimizer_step(s.optimizer)  # after resume, which restores the lr's type
    stacked = cells[0].cfg.trainer.pack_mode == PackMode.stacked and len(students) > 1
    unstackable = [s.cell.name or type(s.distiller).__name__ for s in students
                   if s.distiller.needs_features or s.distiller.needs_indices or s.first_stage_epochs > 0
                   or s.distiller.second_view is not None or any(True for _ in s.distiller.parameters())]
    if stacked and unstackable:
        log.info("trainer.pack_mode=stacked: training this pack in loop mode instead, as its distillers read "
                 "features or a second view, own parameters or keep per-sample state (%s), which the stacked "
                 "forward does not carry",
                 ", ".join(unstackable))
        stacked = False
    return StackedUpdate(students, cells[0].cfg.optim, example, plan, world) if stacked else LoopUpdate(students, world)


def pack_first_stage(students: list[Student]) -> int:
    """The first stage's epochs of the pack's cells, all equal (kd/runs/packs.py packs no others together)."""
    lengths = {s.first_stage_epochs for s in students}
    if len(lengths) > 1:
        raise ValueError(f"a pack's cells must run equal first stages, not {sorted(lengths)} epochs: "
                         "kd.runs.packs.pack_key keeps them apart")
    return lengths.pop()


def pack_teacher_batch_stats(students: list[Student]) -> bool:
    """Whether the pack's distilling cells run the teacher on batch statistics, all alike (kd/runs/packs.py packs
    no others together)."""
    modes = {s.distiller.teacher_batch_stats for s in students if s.alpha > 0}
    if len(modes) > 1:
        raise ValueError("a pack's distilling cells must run the teacher alike, on batch statistics or in eval mode: "
                         "kd.runs.packs.pack_key keeps them apart")
    return modes.pop() if modes else False


def _prefix(student: Student) -> str:
    return f"[{student.cell.name}] " if student.cell.name else ""
