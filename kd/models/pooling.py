"""Global average pooling that vmap batches: the stacked pack's (kd/training/stacking.py) networks run without a
fallback loop."""
from __future__ import annotations

import torch
from torch import nn


class GlobalAvgPool(nn.Module):
    """nn.AdaptiveAvgPool2d(1) as `x.mean((2, 3), keepdim=True)`: the same values, forward and backward, bit for bit
    (tests/test_models.py). PyTorch computes adaptive pooling to 1x1 as this very mean, then restrides a channels_last
    input's result with `aten::as_strided_`, for which vmap has no batching rule: it fell back to a loop over the
    stacked students. The mean's (N, C, 1, 1) result is contiguous instead; flattened, both are the same (N, C)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3), keepdim=True)
