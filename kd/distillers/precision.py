"""The precision a logit distiller computes in: float32 at least (bf16 autocast's logits are widened), float64
kept, so that a test can hold a term to its reference in float64."""
from __future__ import annotations

import torch


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))
