"""`trainer.pack_mode=stacked`: a pack's K students as one model, for accelerators.

One forward computes all K students on the shared batch, so a step launches the kernels of one model, not K:
as one network with K times the channels (kd/training/grouped.py) wherever the network allows it, else as a
vmapped model (torch.func.stack_module_state + functional_call + vmap, BatchNorm's running statistics stacked
with the parameters). Where the students' distillers share their settings, their losses are computed at once
too (Distiller.pack_forward). One optimizer steps the stacked parameters: SGD (and any elementwise optimizer)
updates each student's slice exactly as its own optimizer would, since the cells of a pack share the
optimizer's settings.

Each student's nn.Module keeps working: its parameters and buffers are made views of its slice of the stack
(student k's is `t.view(K, *shape)[k]` in both forms), so evaluation, state_dict and checkpoints read the live
values.
"""
from __future__ import annotations

import copy
import logging
from typing import Callable, NamedTuple, Optional

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch.func import functional_call, stack_module_state, vmap

from kd.distillers.base import Outputs, PackLosses, stack_parts
from kd.training.capture import EAGER, CompilePlan
from kd.training.distributed import SINGLE, World
from kd.training.grouped import group_models

log = logging.getLogger("kd.training.engine")  # the loop's log lines, wherever their code lives


class StepOutputs(NamedTuple):
    """What a step of a pack's update computed for its live students (in `live`'s order)."""

    live: list[int]
    losses: PackLosses
    logits: torch.Tensor  # (live students, batch, classes)


class StudentPlaces:
    """Reads and writes of a pack's per-student rows for the students a step trained: the whole tensor when all
    did, else through their places as a device index, made once per set of them (a Python list as an index is a
    copy from the host, each time)."""

    def __init__(self, n_students: int, device: torch.device) -> None:
        self.n_students, self.device = n_students, device
        self._indices: dict[tuple[int, ...], torch.Tensor] = {}

    def index(self, students: list[int]) -> Optional[torch.Tensor]:
        """None for all of the pack's students; else their places, on the device."""
        if len(students) == self.n_students:
            return None
        key = tuple(students)
        if key not in self._indices:
            self._indices[key] = torch.tensor(students, device=self.device)
        return self._indices[key]

    def add(self, rows: torch.Tensor, students: list[int], values: torch.Tensor) -> None:
        index = self.index(students)
        if index is None:
            rows += values
        else:
            rows.index_add_(0, index, values.to(rows.dtype))

    def take(self, rows: torch.Tensor, students: list[int]) -> torch.Tensor:
        index = self.index(students)
        return rows if index is None else rows.index_select(0, index)

    def put(self, rows: torch.Tensor, students: list[int], values: torch.Tensor) -> None:
        index = self.index(students)
        if index is None:
            rows.copy_(values)
        else:
            rows.index_copy_(0, index, values)


class StackedUpdate:
    """Forward, backward and optimizer step of all of a pack's students at once."""

    def __init__(self, students: list, optim_cfg, example: Optional[torch.Tensor] = None,
                 plan: CompilePlan = EAGER, world: World = SINGLE) -> None:
        self.students = students
        self.world = world
        models = [s.model for s in students]
        self.k = len(models)
        self.grouped = group_models(models, example) if example is not None else None
        if self.grouped is not None:
            log.info("trainer.pack_mode=stacked: %d students as one grouped network (kd/training/grouped.py)", self.k)
            self.forward = plan.model(self.grouped)
            params, buffers = dict(self.grouped.named_parameters()), dict(self.grouped.named_buffers())
            params, buffers = ({name.removeprefix("net."): t for name, t in d.items()} for d in (params, buffers))
        else:
            params, buffers = stack_module_state(models)
            self.base = copy.deepcopy(models[0]).to("meta")
            if plan.mode is not None:
                log.info("trainer.pack_mode=stacked: the vmapped students run eagerly, not compiled")
        self.params, self.buffers = params, buffers
        self.shapes = {name: p.shape for name, p in models[0].named_parameters()}
        self.shapes.update((name, b.shape) for name, b in models[0].named_buffers())
        for k, model in enumerate(models):  # the modules become windows onto their slice of the stack
            for name, p in model.named_parameters():
                p.data = self.blocks(params[name].data, name)[k]
            for name, _ in model.named_buffers():
                owner, leaf = _owner(model, name)
                owner._buffers[leaf] = self.blocks(buffers[name], name)[k]
        # One pass computes every student's loss where their distillers differ only in alpha.
        losses = [OmegaConf.to_container(s.cell.cfg.loss, resolve=True) for s in students]
        self.shared_loss = all(loss == losses[0] for loss in losses)
        self.places = StudentPlaces(self.k, next(iter(params.values())).device)
        self.optimizer = instantiate(optim_cfg.optimizer)(list(params.values()))
        self.scheduler = instantiate(optim_cfg.scheduler)(self.optimizer)
        # Resumed students bring their own optimizer and scheduler states: stack them. The pack's lr follows
        # its least advanced student: a student further on waits until the pack reaches its epoch.
        lead = min(range(len(students)), key=lambda i: students[i].start_epoch)
        param_shapes = [self.shapes[name] for name in params]
        self.optimizer.load_state_dict(stack_optimizer_states([s.optimizer.state_dict() for s in students],
                                                              list(params.values()), param_shapes, lead))
        self.scheduler.load_state_dict(students[lead].scheduler.state_dict())

    def blocks(self, t: torch.Tensor, name: str) -> torch.Tensor:
        """A stacked tensor as (K, *a student's shape): a view in both forms (the module's docstring)."""
        return t.view(self.k, *self.shapes[name])

    def _forward(self, params: dict, buffers: dict, images: torch.Tensor) -> torch.Tensor:
        return functional_call(self.base, (params, buffers), (images,))

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Every student's logits on the batch, (K, batch, classes)."""
        if self.grouped is not None:
            return self.forward(images)
        return vmap(self._forward, in_dims=(0, 0, None))(self.params, self.buffers, images)

    def step(self, live: list[int], images: torch.Tensor, labels: torch.Tensor, teachers: dict, autocast: Callable,
             epoch: int, indices=None, first_stage: bool = False, second=None) -> StepOutputs:
        """As LoopUpdate.step; its distillers never read `indices` nor a `second` view, nor run a first stage
        (make_pack loops a pack whose do)."""
        held = [i for i in range(self.k) if i not in live]
        kept = self._slices(held)  # before the forward, which moves every student's BatchNorm statistics
        with autocast():
            logits = self.logits(images)
        if held:
            logits = logits.index_select(0, self.places.index(live))
        views = [teachers.get(i) if self.students[i].alpha > 0 else None for i in live]
        alphas = [self.students[i].alpha for i in live]
        if self.shared_loss:
            losses = self.students[live[0]].distiller.pack_forward(logits, views, labels, alphas, epoch)
        else:
            losses = stack_parts([self.students[i].distiller(Outputs(student), view, labels, alpha, epoch)
                                  for i, student, view, alpha in zip(live, logits, views, alphas)])
        self.optimizer.zero_grad(set_to_none=True)
        # The students share no parameter, so each gets the gradient of its own loss (data-parallel: the ranks' mean).
        (losses.total.sum() * self.world.loss_scale(labels.shape[0], images.device)).backward()
        self.world.average_gradients(self.optimizer.param_groups[0]["params"])
        self.optimizer.step()
        self._restore(held, kept)
        return StepOutputs(live, losses, logits)

    def _slices(self, held: list[int]) -> list[torch.Tensor]:
        """Copies of the held students' slices of every stacked tensor (weights, BN stats, optimizer state)."""
        if not held:
            return []
        index = self.places.index(held)
        return [t[index].clone() for t in self._stacked_tensors()]

    @torch.no_grad()
    def _restore(self, held: list[int], kept: list[torch.Tensor]) -> None:
        """Undo the step for students that wait (a resumed pack's cells further on) or failed: weight decay,
        momentum and BatchNorm would otherwise move them even without a loss."""
        if not held:
            return
        index = self.places.index(held)
        for t, saved in zip(self._stacked_tensors(), kept):
            t[index] = saved

    def _stacked_tensors(self) -> list[torch.Tensor]:
        """Every stacked tensor as (K, *a student's shape): weights, buffers, and the optimizer's state."""
        names = {id(p): name for name, p in self.params.items()}
        state = [self.blocks(v, names[id(p)]) for p, entry in self.optimizer.state.items()
                 for v in entry.values() if torch.is_tensor(v) and v.ndim > 0]
        return ([self.blocks(p.data, name) for name, p in self.params.items()]
                + [self.blocks(b, name) for name, b in self.buffers.items()] + state)

    def end_epoch(self, trained: list[int]) -> None:
        self.scheduler.step()

    def lr(self, i: int) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def states(self, i: int) -> tuple[dict, dict]:
        """Student i's optimizer and scheduler states, in the form of its own optimizer's (as the loop saves them)."""
        shapes = [self.shapes[name] for name in self.params]
        return unstack_optimizer_state(self.optimizer.state_dict(), i, shapes), self.scheduler.state_dict()


def _owner(model: torch.nn.Module, dotted: str) -> tuple[torch.nn.Module, str]:
    *path, leaf = dotted.split(".")
    return model.get_submodule(".".join(path)) if path else model, leaf


def stack_optimizer_states(states: list[dict], stacked_params: list[torch.Tensor], shapes: list[torch.Size],
                           lead: int) -> dict:
    """K optimizers' state dicts (same settings, same parameter order) as one over the stacked parameters, each
    student's parameter of `shapes`.

    A student with no state yet (a cell of a resumed pack that starts afresh) gets zeros, which is
    exactly SGD's first step without dampening (kd's default); any other difference is refused.
    The param groups (lr, ...) are those of student `lead`.
    """
    merged = {"param_groups": states[lead]["param_groups"], "state": {}}
    for index in set().union(*(s["state"] for s in states)):
        entries = [s["state"].get(index) for s in states]
        template = next(e for e in entries if e is not None)
        merged_entry = {}
        for key, value in template.items():
            if torch.is_tensor(value) and value.shape == shapes[index]:
                merged_entry[key] = torch.stack([e[key] if e is not None else torch.zeros_like(value)
                                                 for e in entries]).reshape(stacked_params[index].shape)
            elif all(e is not None and _same(e[key], value) for e in entries):
                merged_entry[key] = value
            else:
                raise ValueError(f"the students of this pack have different optimizer states ({key}); "
                                 f"resume it with trainer.pack_mode=loop")
        merged["state"][index] = merged_entry
    return merged


def _same(a, b) -> bool:
    return torch.equal(a, b) if torch.is_tensor(a) and torch.is_tensor(b) else a == b


def unstack_optimizer_state(state: dict, k: int, shapes: list[torch.Size]) -> dict:
    """Student k's slice of a stacked optimizer's state dict, each parameter's of `shapes` (its student's)."""
    def slice_of(value, shape: torch.Size):
        if torch.is_tensor(value) and value.ndim > 0:
            return value.reshape(-1, *shape)[k].clone()
        return value

    return {"param_groups": copy.deepcopy(state["param_groups"]),
            "state": {index: {key: slice_of(value, shapes[index]) for key, value in entry.items()}
                      for index, entry in state["state"].items()}}
