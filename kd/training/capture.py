"""What of the train step is compiled, and whether it is captured as CUDA graphs: decided once, said once.

On a GPU a batch-64 step of a small CIFAR ResNet is launch-bound (about 120 kernels). torch.compile
fuses them; `trainer.graph_capture=true` adds CUDA graphs (torch.compile's mode="reduce-overhead"):
each student's forward and backward and the teacher's forward are recorded once and replayed. The optimizer
step stays eager, right after its student's backward: under CUDA-graph trees every compiled call starts a new
generation that frees the previous graphs' outputs, the gradients among them, so a compiled optimizer step
(itself a compiled call) read freed gradients on an H200 (PyTorch issue 169545; the cudagraph-trees docs'
limitations). On CUDA, SGD's multi-tensor path is a few kernels per student. Not measured on a GPU since.
A stacked pack compiles its grouped network (kd/training/grouped.py), all students' forward and backward as one
graph; a vmapped one runs eagerly. Elsewhere (the CPU) the step runs eagerly and the log says why; a graph that
cannot be captured runs compiled without it, and torch's own warning names the cause.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from omegaconf import DictConfig
from torch import nn


log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CompilePlan:
    """How this job's step runs: mode None is eager, else torch.compile's mode; `why` is for the log. A compiled
    forward is compiled for batches of `batch_size` images only (ShapeStableForward)."""

    mode: Optional[str]
    why: str
    batch_size: Optional[int] = None

    @property
    def captures(self) -> bool:
        return self.mode == "reduce-overhead"

    def model(self, model: nn.Module) -> Callable:
        """The model's forward as the step calls it."""
        return model if self.mode is None else ShapeStableForward(model, self.mode, self.batch_size)

    def optimizer_step(self, optimizer: torch.optim.Optimizer) -> Callable[[], None]:
        """The optimizer's step as the step calls it: eager in every plan, so that it reads its student's gradients
        before the next compiled call's generation frees them (the module's docstring)."""
        return optimizer.step

    def begin_step(self) -> None:
        """Tell the CUDA graph trees that a new iteration starts, so the last one's outputs can be reused."""
        if self.captures:
            torch.compiler.cudagraph_mark_step_begin()


EAGER = CompilePlan(None, "eager")


class ShapeStableForward:
    """A model's forward compiled for the training batch's size alone (static shapes); a batch of another size (an
    epoch's last partial batch: CIFAR's 50,000 = 781 x 64 + 16; a logit cache's evaluation batches) runs the same
    module eagerly. So nothing recompiles mid-run, no dynamic-shape graph replaces the static one, no second CUDA
    graph is recorded per size, and no batch is dropped."""

    def __init__(self, model: nn.Module, mode: str, batch_size: Optional[int]) -> None:
        self.model, self.batch_size = model, batch_size
        self.compiled = torch.compile(model, mode=mode, dynamic=False)

    def __call__(self, images: torch.Tensor, *args, **kwargs):
        run = self.compiled if self.batch_size is None or images.shape[0] == self.batch_size else self.model
        return run(images, *args, **kwargs)


def plan_compile(trainer: DictConfig, device: torch.device) -> CompilePlan:
    """trainer.compile / trainer.graph_capture as they can take effect on `device`."""
    if not trainer.compile:
        return CompilePlan(None, "trainer.compile=false")
    if device.type != "cuda":
        asked = "trainer.compile=true and trainer.graph_capture=true" if trainer.graph_capture else "trainer.compile=true"
        return CompilePlan(None, f"{asked}: used on CUDA only, off on {device.type}, which runs eagerly")
    if trainer.graph_capture:
        return CompilePlan("reduce-overhead", "trainer.graph_capture=true: compiled and captured as CUDA graphs",
                           trainer.batch_size)
    return CompilePlan("default", "trainer.compile=true (trainer.graph_capture=false: no CUDA graphs)",
                       trainer.batch_size)


def float_lrs(optimizer_state: dict) -> dict:
    """An optimizer state with plain-float learning rates: a checkpoint resumes the same with capture on or off."""
    groups = [{**g, "lr": float(g["lr"])} for g in optimizer_state["param_groups"]]
    return {**optimizer_state, "param_groups": groups}


def log_plan(plan: CompilePlan) -> None:
    log.info("step: %s (%s)", {None: "eager", "default": "torch.compile",
                               "reduce-overhead": "torch.compile + CUDA graphs"}[plan.mode], plan.why)
    if plan.captures:
        # Inductor says why a graph is not captured (a CPU tensor, a mutated input) only as a perf hint.
        torch._logging.set_logs(perf_hints=True)
