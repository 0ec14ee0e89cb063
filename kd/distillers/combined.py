"""Distillers whose terms add: the combinations the references train, such as RepDistiller's CRD+KD
(`--distill crd -r 1 -a 1 -b 0.8`: CE + 1 KD + 0.8 CRD), from YAML alone (conf/loss/crd_kd.yaml).

term = sum over the named distillers of weights[name] * their term, each with its own settings; the parts
logged are each weighted term (`term_<name>`) and each one's own parts (`<name>_<part>`). The combination reads
what any of its distillers reads (features, dataset indices), sets each one up, and owns all their learned
parts. Only the combination's alpha and scale apply: a distiller inside it must keep scale 1.
"""
from __future__ import annotations

from typing import Mapping, Optional

import torch
from torch import nn

from kd.distillers.base import Distiller, Outputs
from kd.distillers.common import check_weight


class Combined(Distiller):
    """term = sum_name weights[name] * terms[name].term."""

    def __init__(self, terms: Mapping[str, Distiller], weights: Mapping[str, float], scale: float = 1.0) -> None:
        super().__init__(scale)
        terms, weights = dict(terms), dict(weights)
        if not terms or set(terms) != set(weights):
            raise ValueError(f"loss.terms ({', '.join(terms) or 'none'}) and loss.weights ({', '.join(weights)}) "
                             "must name the same distillers, at least one")
        for name, distiller in terms.items():
            check_weight(f"weights.{name}", weights[name], "RepDistiller's CRD+KD weighs KD 1 and CRD 0.8")
            if distiller.scale != 1.0:
                raise ValueError(f"loss.terms.{name}.scale={distiller.scale}: only the combination's loss.scale "
                                 "applies; keep its distillers' at 1")
        self.terms = nn.ModuleDict(terms)
        self.weights = weights
        self.needs_features = any(d.needs_features for d in terms.values())
        self.needs_indices = any(d.needs_indices for d in terms.values())

    def setup(self, student: nn.Module, teacher: Optional[nn.Module], images: torch.Tensor,
              labels: Optional[torch.Tensor] = None) -> None:
        for distiller in self.terms.values():
            if distiller.needs_indices:
                distiller.setup(student, teacher, images, labels)
            else:
                distiller.setup(student, teacher, images)

    def term(self, student: Outputs, teacher: Outputs, targets: torch.Tensor, epoch: int,
             indices: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
        total, parts = 0.0, {}
        for name, distiller in self.terms.items():
            own = dict(distiller.term(student, teacher, targets, epoch, indices) if distiller.needs_indices
                       else distiller.term(student, teacher, targets, epoch))
            weighted = self.weights[name] * own.pop("kd")
            total = total + weighted
            parts[f"term_{name}"] = weighted.detach()
            parts.update({f"{name}_{part}": value for part, value in own.items()})
        return {"kd": total, **parts}
