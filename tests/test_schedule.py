"""The advice kd gives when a schedule's milestones lie past the last epoch: it must be advice that works."""
from __future__ import annotations

import re

import pytest
import torch

from kd.training.engine import milestone_advice


def lrs_per_epoch(milestones: list[int], epochs: int) -> list[float]:
    """The lr each epoch trains at under MultiStepLR, stepped once per epoch as kd steps it."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.05)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=0.1)
    lrs = []
    for _ in range(epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


@pytest.mark.parametrize("epochs", [2, 3, 5, 8, 20, 60, 240])
def test_suggested_milestones_start_at_the_set_lr_and_decay_within_the_run(epochs):
    advice = milestone_advice("optim", epochs)
    milestones = [int(m) for m in re.search(r"milestones=\[([\d,]+)\]", advice).group(1).split(",")]
    lrs = lrs_per_epoch(milestones, epochs)
    assert lrs[0] == 0.05, (advice, lrs)  # a milestone at 0 would decay the lr before the first step
    assert lrs[-1] < 0.05, (advice, lrs)


def test_one_epoch_gets_no_milestones_to_set():
    """Once this suggested milestones=[0,0], which trains at 1/100 of the lr from the first step."""
    advice = milestone_advice("optim", 1)
    assert "milestones=[" not in advice and "constant" in advice
    assert lrs_per_epoch([0, 0], 1)[0] == pytest.approx(0.0005)
