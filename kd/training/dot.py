"""`optim=dot`: the Distillation-Oriented Trainer (Zhao et al., ICCV 2023), SGD with one momentum for the
cross-entropy's gradient and another for the distillation term's.

A parameter that both losses reach keeps two momentum buffers: the CE's decays with `momentum - delta`, the
term's with `momentum + delta`, so the distillation gradient is smoothed more and dominates where the two
disagree. Facts of the authors' optimizer (mdistiller, mdistiller/engine/dot.py, and the `DOT` trainer of
mdistiller/engine/trainer.py), kept here:

- the term's gradient is computed first (its backward keeps the graph), then the CE's; each steps the weights
  by its own buffer, the CE's first;
- weight decay is added once, to the CE's gradient; a parameter the CE never reaches (a distiller's learned part)
  adds it to the term's instead, except at its first step (the authors' buffer starts as the bare gradient);
- a parameter with one of the two gradients uses the mean momentum `((m + delta) + (m - delta)) / 2`: an alpha=0
  cell (no term) trains as plain SGD with momentum m;
- a buffer starts as its first gradient (torch's SGD without dampening); no dampening, no Nesterov.

Both buffers live in the optimizer's state, so a cell's checkpoint resumes them. kd's loop (LoopUpdate in
kd/training/students.py) calls `backward` with the CE's and the term's shares of the loss (Distiller.weighted).
"""
from __future__ import annotations

from typing import Iterable

import torch
from hydra.utils import get_class
from omegaconf import DictConfig

from kd.config import PackMode


class DOT(torch.optim.Optimizer):
    """SGD with separate momentum buffers for the CE's and the distillation term's gradients."""

    def __init__(self, params: Iterable, lr: float, momentum: float = 0.9, delta: float = 0.075,
                 weight_decay: float = 5e-4, nesterov: bool = False) -> None:
        if not lr >= 0.0:
            raise ValueError(f"optim.optimizer.lr={lr} must be >= 0")
        if not 0.0 <= momentum - delta <= momentum + delta:
            raise ValueError(f"optim.optimizer.momentum={momentum} and delta={delta}: the CE's momentum (momentum - "
                             "delta) must be >= 0 and delta >= 0 (the authors' CIFAR recipe: 0.9 and 0.075)")
        if not weight_decay >= 0.0:
            raise ValueError(f"optim.optimizer.weight_decay={weight_decay} must be >= 0")
        if nesterov:
            raise ValueError("optim=dot has no Nesterov variant (nor has its authors' optimizer): "
                             "set optim.optimizer.nesterov=false")
        super().__init__(params, dict(lr=lr, momentum=momentum, delta=delta, weight_decay=weight_decay))
        self.term_grads: dict[torch.Tensor, torch.Tensor] = {}  # the term's gradients, until the next step

    def backward(self, ce: torch.Tensor, term: torch.Tensor) -> None:
        """Each loss's gradient apart: the term's kept aside, then the CE's in `.grad`, for `step`. A term with no
        graph (an alpha=0 cell's) has no gradient: that cell steps as plain SGD."""
        if term.requires_grad:
            term.backward(retain_graph=True)
            self.term_grads = {p: p.grad for group in self.param_groups for p in group["params"]
                               if p.grad is not None}
            self.zero_grad(set_to_none=True)
        ce.backward()

    @torch.no_grad()
    def step(self, closure=None) -> None:
        if closure is not None:
            raise ValueError("optim=dot takes its gradients from backward(ce, term), not from a closure")
        for group in self.param_groups:
            lr, decay = group["lr"], group["weight_decay"]
            m_ce, m_term = group["momentum"] - group["delta"], group["momentum"] + group["delta"]
            m_one = (m_term + m_ce) / 2.0  # the authors' expression for a parameter with one of the two gradients
            ce_params = [p for p in group["params"] if p.grad is not None]
            for p in ce_params:
                grad = p.grad.add(p, alpha=decay) if decay != 0 else p.grad
                self._momentum(p, "momentum_buffer", grad, m_ce if p in self.term_grads else m_one)
                p.add_(self.state[p]["momentum_buffer"], alpha=-lr)
            ce_ids = {id(p) for p in ce_params}
            for p in group["params"]:
                grad = self.term_grads.get(p)
                if grad is None:
                    continue
                both = id(p) in ce_ids
                if not both and decay != 0 and "momentum_kd_buffer" in self.state[p]:
                    grad = grad.add(p, alpha=decay)
                self._momentum(p, "momentum_kd_buffer", grad, m_term if both else m_one)
                p.add_(self.state[p]["momentum_kd_buffer"], alpha=-lr)
        self.term_grads = {}

    def _momentum(self, p: torch.Tensor, key: str, grad: torch.Tensor, momentum: float) -> None:
        state = self.state[p]
        if key not in state:
            state[key] = torch.clone(grad).detach()
        else:
            state[key].mul_(momentum).add_(grad)


def uses_dot(optim: DictConfig) -> bool:
    """Whether a cell's `optim` builds DOT."""
    return issubclass(get_class(optim.optimizer._target_), DOT)


def check_dot(optim: DictConfig, trainer: DictConfig) -> None:
    """The settings DOT cannot train under, refused before any work."""
    if not uses_dot(optim):
        return
    if trainer.pack_mode == PackMode.stacked:
        raise ValueError("optim=dot with trainer.pack_mode=stacked: one optimizer over the stacked students would "
                         "give an alpha=0 student's weights a (zero) distillation gradient and DOT's two momenta, "
                         "where alone it trains as plain SGD; use trainer.pack_mode=loop (the default) with optim=dot")
    if trainer.devices * trainer.nodes > 1:
        raise ValueError(f"optim=dot with trainer.devices={trainer.devices} trainer.nodes={trainer.nodes}: DOT keeps the "
                         "distillation gradient apart from the CE's, and kd averages one gradient over the ranks; train "
                         "DOT cells in one process (trainer.devices=1 trainer.nodes=1)")
    if trainer.graph_capture:
        raise ValueError("optim=dot with trainer.graph_capture=true: DOT runs the backward twice on one graph and "
                         "keeps the first gradients, which a captured backward's replay would overwrite; set "
                         "trainer.graph_capture=false (trainer.compile=true still compiles)")
