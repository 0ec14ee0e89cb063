"""A stacked pack's students as one grouped network (kd/training/grouped.py): where it applies, what it refuses,
and a step with a student held out."""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from conftest import FAST, compose_config
from kd.distillers.base import Outputs
from kd.training.engine import Cell
from kd.training.grouped import group_models
from kd.training.stacking import StackedUpdate
from kd.training.students import LoopUpdate, make_student

CELL = [*FAST, "teacher=resnet8", "aug=fc", "optim.optimizer.lr=0.5"]


class Flipped(nn.Module):
    """A network whose forward reorders channels: grouped, it would hand one student's channels to another."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).flip(1).mean((2, 3)))


class OwnWeight(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))
        self.fc = nn.Linear(3, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean((2, 3))) * self.scale


@pytest.mark.parametrize("network, why", [(Flipped, "mixes channels"), (OwnWeight, "OwnWeight has weights")])
def test_a_network_that_cannot_be_grouped_is_found_out_and_said(network, why, caplog):
    """Equal initial weights would hide a wrong wiring: the check runs the students on distinct ones."""
    models = [network(), network()]
    models[1].load_state_dict(models[0].state_dict())
    with caplog.at_level(logging.INFO, logger="kd.training.grouped"):
        assert group_models(models, torch.zeros(2, 3, 8, 8)) is None
    assert why in caplog.text and "run vmapped" in caplog.text


def test_the_grouped_network_computes_each_student_in_train_and_eval_mode():
    torch.manual_seed(0)
    models = [nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                            nn.Linear(4 * 8 * 8, 10), nn.BatchNorm1d(10)) for _ in range(3)]
    grouped = group_models(models, torch.zeros(2, 3, 8, 8))
    assert grouped is not None
    images = torch.randn(5, 3, 8, 8)
    for train in (True, False):
        grouped.train(train)
        for m in models:
            m.train(train)
        out = grouped(images)
        assert out.shape == (3, 5, 10)
        for k, m in enumerate(models):
            torch.testing.assert_close(out[k], m(images), rtol=1e-5, atol=1e-6)


def students(tmp_path: Path, alphas=(0.0, 0.5, 1.0)) -> list:
    made = []
    for alpha in alphas:
        cfg = compose_config([*CELL, f"alpha={alpha}"], out_dir=tmp_path)
        made.append(make_student(Cell(cfg, tmp_path, {}, lambda row, step: None, "", ""), 10, torch.device("cpu")))
    return made


def test_a_held_student_stays_as_it_was_while_the_others_step(tmp_path):
    """A resumed pack's cell further on waits: its weights, BN statistics and momentum must not move, and the others
    train as they would without it."""
    torch.manual_seed(3)
    images = torch.randn(8, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    labels, teacher = torch.randint(0, 10, (8,)), Outputs(torch.randn(8, 10))
    loop, stacked = students(tmp_path), students(tmp_path)
    loop_update = LoopUpdate(loop)
    update = StackedUpdate(stacked, stacked[0].cell.cfg.optim, images)
    assert update.grouped is not None
    for s in (*loop, *stacked):
        s.model.train()
    for live in ([0, 1, 2], [0, 2]):  # the first step gives every student momentum; in the second, 1 waits
        before = {k: v.clone() for k, v in stacked[1].model.state_dict().items()}
        momentum = update.blocks(update.optimizer.state[update.params["conv1.weight"]]["momentum_buffer"],
                                 "conv1.weight")[1].clone() if update.optimizer.state else None
        out = update.step(live, images, labels, {1: teacher, 2: teacher}, contextlib.nullcontext, epoch=0)
        loop_out = loop_update.step(live, images, labels, {1: teacher, 2: teacher}, contextlib.nullcontext, epoch=0)
        assert out.live == live and out.logits.shape == (len(live), 8, 10)
        torch.testing.assert_close(out.losses.total, loop_out.losses.total, rtol=1e-5, atol=1e-6)
    after = stacked[1].model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(momentum, update.states(1)[0]["state"][0]["momentum_buffer"])
    for k in (0, 2):
        for name, value in loop[k].model.state_dict().items():
            torch.testing.assert_close(stacked[k].model.state_dict()[name], value, rtol=1e-4, atol=1e-5)


def test_a_stacked_students_checkpoint_state_is_its_own_optimizers(tmp_path):
    """states(i) gives student i's optimizer state in its own optimizer's shapes, which resume loads back."""
    images = torch.randn(8, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    labels, teacher = torch.randint(0, 10, (8,)), Outputs(torch.randn(8, 10))
    stacked = students(tmp_path)
    update = StackedUpdate(stacked, stacked[0].cell.cfg.optim, images)
    update.step([0, 1, 2], images, labels, {1: teacher, 2: teacher}, contextlib.nullcontext, epoch=0)
    for k, s in enumerate(stacked):
        state, _ = update.states(k)
        s.optimizer.load_state_dict(state)  # refuses a state of other shapes or count
        for p, entry in zip(s.model.parameters(), state["state"].values()):
            assert entry["momentum_buffer"].shape == p.shape
    again = instantiate(stacked[0].cell.cfg.optim.optimizer)(list(stacked[0].model.parameters()))
    again.load_state_dict(update.states(0)[0])
