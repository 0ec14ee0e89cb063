"""`trainer.pack_mode=stacked`: a pack's K students as one vmapped model, for accelerators.

One forward computes all K students on the shared batch (torch.func.stack_module_state +
functional_call + vmap), so a step launches the kernels of one model, not K. BatchNorm's
running statistics are stacked with the parameters and updated per student inside vmap
(functorch's replace_all_batch_norm_modules_ would drop them). One optimizer steps the stacked
parameters: SGD (and any elementwise optimizer) updates each student's slice exactly as its
own optimizer would, since the cells of a pack share the optimizer's settings.

Each student's nn.Module keeps working: its parameters and buffers are made views of its
slice of the stack, so evaluation, state_dict and checkpoints read the live values.
"""
from __future__ import annotations

import copy
from typing import Callable

import torch
from hydra.utils import instantiate
from torch.func import functional_call, stack_module_state, vmap

from kd.distillers.base import Outputs


class StackedUpdate:
    """Forward, backward and optimizer step of all of a pack's students at once."""

    def __init__(self, students: list, optim_cfg) -> None:
        self.students = students
        models = [s.model for s in students]
        params, buffers = stack_module_state(models)
        self.params, self.buffers = params, buffers
        for k, model in enumerate(models):  # the modules become windows onto their slice of the stack
            for name, p in model.named_parameters():
                p.data = params[name].data[k]
            for name, _ in model.named_buffers():
                owner, leaf = _owner(model, name)
                owner._buffers[leaf] = buffers[name][k]
        self.base = copy.deepcopy(models[0]).to("meta")
        self._held_indices: dict[tuple[int, ...], torch.Tensor] = {}  # by the students held out of a step
        self.optimizer = instantiate(optim_cfg.optimizer)(list(params.values()))
        self.scheduler = instantiate(optim_cfg.scheduler)(self.optimizer)
        # Resumed students bring their own optimizer and scheduler states: stack them. The pack's lr follows
        # its least advanced student: a student further on waits until the pack reaches its epoch.
        lead = min(range(len(students)), key=lambda i: students[i].start_epoch)
        self.optimizer.load_state_dict(stack_optimizer_states([s.optimizer.state_dict() for s in students],
                                                              list(params.values()), lead))
        self.scheduler.load_state_dict(students[lead].scheduler.state_dict())

    def _forward(self, params: dict, buffers: dict, images: torch.Tensor) -> torch.Tensor:
        return functional_call(self.base, (params, buffers), (images,))

    def step(self, live: list[int], images: torch.Tensor, labels: torch.Tensor, teachers: dict, autocast: Callable,
             epoch: int, indices=None, first_stage: bool = False) -> dict[int, tuple]:
        """As LoopUpdate.step; its distillers never read `indices` nor run a first stage (make_pack loops a pack
        whose do)."""
        held = [i for i in range(len(self.students)) if i not in live]
        kept = self._slices(held)  # before the forward, which moves every student's BatchNorm statistics
        with autocast():
            logits = vmap(self._forward, in_dims=(0, 0, None))(self.params, self.buffers, images)
        out, total = {}, 0.0
        for i in live:
            s = self.students[i]
            parts = s.distiller(Outputs(logits[i]), teachers.get(i) if s.alpha > 0 else None, labels, s.alpha, epoch)
            total = total + parts.total
            out[i] = (parts, logits[i])
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()  # the students share no parameter, so each gets the gradient of its own loss
        self.optimizer.step()
        self._restore(held, kept)
        return out

    def _slices(self, held: list[int]) -> list[torch.Tensor]:
        """Copies of the held students' slices of every stacked tensor (weights, BN stats, optimizer state)."""
        if not held:
            return []
        index = self._held_index(held)
        return [t[index].clone() for t in self._stacked_tensors()]

    @torch.no_grad()
    def _restore(self, held: list[int], kept: list[torch.Tensor]) -> None:
        """Undo the step for students that wait (a resumed pack's cells further on) or failed: weight decay,
        momentum and BatchNorm would otherwise move them even without a loss."""
        if not held:
            return
        index = self._held_index(held)
        for t, saved in zip(self._stacked_tensors(), kept):
            t[index] = saved

    def _held_index(self, held: list[int]) -> torch.Tensor:
        """The held students' places in the stack as a tensor on its device, made once per set of them: a Python
        list as an index is copied from the host for every tensor it indexes, each step."""
        key = tuple(held)
        if key not in self._held_indices:
            self._held_indices[key] = torch.tensor(held, device=next(iter(self.params.values())).device)
        return self._held_indices[key]

    def _stacked_tensors(self) -> list[torch.Tensor]:
        state = [v for entry in self.optimizer.state.values() for v in entry.values()
                 if torch.is_tensor(v) and v.ndim > 0]
        return [p.data for p in self.params.values()] + list(self.buffers.values()) + state

    def end_epoch(self, trained: list[int]) -> None:
        self.scheduler.step()

    def lr(self, i: int) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def states(self, i: int) -> tuple[dict, dict]:
        """Student i's optimizer and scheduler states, in the form of its own optimizer's (as the loop saves them)."""
        return unstack_optimizer_state(self.optimizer.state_dict(), i), self.scheduler.state_dict()


def _owner(model: torch.nn.Module, dotted: str) -> tuple[torch.nn.Module, str]:
    *path, leaf = dotted.split(".")
    return model.get_submodule(".".join(path)) if path else model, leaf


def stack_optimizer_states(states: list[dict], stacked_params: list[torch.Tensor], lead: int) -> dict:
    """K optimizers' state dicts (same settings, same parameter order) as one over the stacked parameters.

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
            shape = stacked_params[index].shape[1:]
            if torch.is_tensor(value) and value.shape == shape:
                merged_entry[key] = torch.stack([e[key] if e is not None else torch.zeros_like(value) for e in entries])
            elif all(e is not None and _same(e[key], value) for e in entries):
                merged_entry[key] = value
            else:
                raise ValueError(f"the students of this pack have different optimizer states ({key}); "
                                 f"resume it with trainer.pack_mode=loop")
        merged["state"][index] = merged_entry
    return merged


def _same(a, b) -> bool:
    return torch.equal(a, b) if torch.is_tensor(a) and torch.is_tensor(b) else a == b


def unstack_optimizer_state(state: dict, k: int) -> dict:
    """Student k's slice of a stacked optimizer's state dict."""
    return {"param_groups": copy.deepcopy(state["param_groups"]),
            "state": {index: {key: value[k].clone() if torch.is_tensor(value) and value.ndim > 0 else value
                              for key, value in entry.items()}
                      for index, entry in state["state"].items()}}
