"""What a network returns beside its logits when a feature distiller asks (`model(x, features=True)`).

The layout is RepDistiller's and mdistiller's (their `is_feat=True, preact=True`): `feats` are the stem's
and each stage's outputs, `preact` the same taken before the stage's last ReLU (the stem's as is), and
`pooled` the flattened vector the classifier reads. Feature methods index them as those code bases do
(FitNet's hint layer 2, AT's feats[1:]).
"""
from __future__ import annotations

from typing import NamedTuple

import torch


class Features(NamedTuple):
    feats: list[torch.Tensor]
    preact: list[torch.Tensor]
    pooled: torch.Tensor


def staged_features(stem: torch.Tensor, stages: list[torch.nn.Sequential]) -> tuple[torch.Tensor, Features]:
    """Run `stages` (blocks whose last has `preact(x)`: its output before the final ReLU) from the stem's output,
    keeping each stage's output and pre-activation; returns the last stage's output and the features so far
    (`pooled` is filled in by the network, which knows its pooling)."""
    x, feats, preact = stem, [stem], [stem]
    for stage in stages:
        *body, last = stage
        for block in body:
            x = block(x)
        pre = last.preact(x)
        x = torch.relu(pre)
        feats.append(x)
        preact.append(pre)
    return x, Features(feats, preact, stem)
