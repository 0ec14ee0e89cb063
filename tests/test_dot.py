"""optim=dot (kd/training/dot.py): the authors' update rule in float64, its resumable state, plain SGD at alpha=0,
the settings it refuses, and a real pack of DOT cells: bit-identical to the cells alone, and resumed after a kill
to the uninterrupted result."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import FAST, TRAIN_SCRIPT, cell_dir, compose_config, run_cli
from kd.distillers.base import Outputs
from kd.distillers.kd import KD
from kd.runs.results import RESULTS_FILE, read_results
from kd.training.dot import DOT, check_dot
from reliability import ONE_THREAD, kill_after_checkpoint, metrics, same_weights
from test_packing import sweep

LR, MOMENTUM, DELTA, DECAY = 0.05, 0.9, 0.075, 5e-4  # mdistiller configs/cifar100/dot/res32x4_res8x4.yaml


class LearnedKD(KD):
    """KD plus a learned part that only the term reaches (as FitNet's regressor): a parameter with no CE gradient."""

    def __init__(self) -> None:
        super().__init__(temperature=4.0)
        self.w = nn.Parameter(torch.linspace(-1.0, 1.0, 5, dtype=torch.float64))

    def term(self, student, teacher, targets, epoch):
        parts = super().term(student, teacher, targets, epoch)
        return {**parts, "kd": parts["kd"] + (self.w * student.logits).pow(2).mean()}


def batches(steps: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(8, 6, generator=g, dtype=torch.float64), torch.randn(8, 5, generator=g, dtype=torch.float64),
             torch.randint(0, 5, (8,), generator=g)) for _ in range(steps)]


def losses(student: nn.Module, distiller: KD, images, teacher, labels, alpha: float):
    parts = distiller(Outputs(student(images)), Outputs(teacher), labels, alpha)
    return distiller.weighted(parts, alpha)


def dot_steps(student: nn.Module, distiller: KD, alpha: float, data, optimizer=None) -> DOT:
    optimizer = optimizer or DOT([*student.parameters(), *distiller.parameters()], LR, MOMENTUM, DELTA, DECAY)
    for images, teacher, labels in data:
        optimizer.zero_grad(set_to_none=True)
        optimizer.backward(*losses(student, distiller, images, teacher, labels, alpha))
        optimizer.step()
    return optimizer


def reference_steps(student: nn.Module, distiller: KD, alpha: float, data) -> None:
    """The authors' rule (mdistiller/engine/dot.py), written out per parameter: each step first moves every
    parameter with a CE gradient by its CE buffer (weight decay added to that gradient), then every parameter with
    a term gradient by its term buffer; a buffer starts as its first gradient; the CE's decays with m - delta and
    the term's with m + delta where a parameter has both, with (m + delta + m - delta) / 2 where it has one; a
    parameter with only a term gradient adds weight decay to it from its second step on."""
    params = [*student.parameters(), *distiller.parameters()]
    m_ce, m_term = MOMENTUM - DELTA, MOMENTUM + DELTA
    m_one = (m_term + m_ce) / 2
    ce_buf: dict[int, torch.Tensor] = {}
    term_buf: dict[int, torch.Tensor] = {}
    for images, teacher, labels in data:
        ce, term = losses(student, distiller, images, teacher, labels, alpha)
        g_term = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
        g_ce = torch.autograd.grad(ce, params, allow_unused=True)
        with torch.no_grad():
            for i, (p, g) in enumerate(zip(params, g_ce)):
                if g is None:
                    continue
                d = g + DECAY * p
                m = m_ce if g_term[i] is not None else m_one
                ce_buf[i] = d.clone() if i not in ce_buf else m * ce_buf[i] + d
                p -= LR * ce_buf[i]
            for i, (p, g) in enumerate(zip(params, g_term)):
                if g is None:
                    continue
                if i not in term_buf:
                    term_buf[i] = g.clone()
                elif g_ce[i] is not None:
                    term_buf[i] = m_term * term_buf[i] + g
                else:
                    term_buf[i] = m_one * term_buf[i] + (g + DECAY * p)
                p -= LR * term_buf[i]


def tiny() -> tuple[nn.Module, KD]:
    torch.manual_seed(0)
    return nn.Linear(6, 5).double(), LearnedKD()


def weights(student: nn.Module, distiller: KD) -> list[torch.Tensor]:
    return [p.detach().clone() for p in (*student.parameters(), *distiller.parameters())]


def test_dot_steps_as_the_authors_rule_in_float64():
    data = batches(4)
    student, distiller = tiny()
    dot_steps(student, distiller, 0.5, data)
    ref_student, ref_distiller = tiny()
    reference_steps(ref_student, ref_distiller, 0.5, data)
    for ours, theirs in zip(weights(student, distiller), weights(ref_student, ref_distiller)):
        torch.testing.assert_close(ours, theirs, rtol=1e-13, atol=1e-15)
    sgd_student, sgd_distiller = tiny()  # and DOT is not SGD: the two momenta change the weights
    sgd = torch.optim.SGD([*sgd_student.parameters(), *sgd_distiller.parameters()], LR, MOMENTUM, weight_decay=DECAY)
    for images, teacher, labels in data:
        sgd.zero_grad()
        sum(losses(sgd_student, sgd_distiller, images, teacher, labels, 0.5)).backward()
        sgd.step()
    assert not torch.allclose(weights(student, distiller)[0], weights(sgd_student, sgd_distiller)[0], atol=1e-6)


def test_dot_at_alpha_0_is_sgd_bit_for_bit():
    data = batches(3)
    student, distiller = tiny()
    dot_steps(student, distiller, 0.0, data)
    sgd_student, sgd_distiller = tiny()
    sgd = torch.optim.SGD(sgd_student.parameters(), LR, MOMENTUM, weight_decay=DECAY)
    for images, teacher, labels in data:
        sgd.zero_grad()
        losses(sgd_student, sgd_distiller, images, teacher, labels, 0.0)[0].backward()
        sgd.step()
    assert all(torch.equal(a, b) for a, b in zip(student.parameters(), sgd_student.parameters()))


def test_dot_resumes_from_its_state_dict_to_the_uninterrupted_steps():
    data = batches(4)
    student, distiller = tiny()
    dot_steps(student, distiller, 0.5, data)
    half, half_distiller = tiny()
    first = dot_steps(half, half_distiller, 0.5, data[:2])
    state = copy.deepcopy(first.state_dict())
    assert {"momentum_buffer", "momentum_kd_buffer"} <= set(state["state"][0])  # both buffers are checkpointed
    resumed = DOT([*half.parameters(), *half_distiller.parameters()], LR, MOMENTUM, DELTA, DECAY)
    resumed.load_state_dict(state)
    dot_steps(half, half_distiller, 0.5, data[2:], resumed)
    assert all(torch.equal(a, b) for a, b in zip(weights(student, distiller), weights(half, half_distiller)))


@pytest.mark.parametrize("override, refusal", [
    ("trainer.pack_mode=stacked", "optim=dot with trainer.pack_mode=stacked"),
    ("trainer.graph_capture=true", "optim=dot with trainer.graph_capture=true"),
    ("optim.optimizer.nesterov=true", None),
])
def test_dot_refuses_what_it_cannot_train_under(override, refusal):
    cfg = compose_config([*FAST, "optim=dot", override])
    if refusal is not None:
        with pytest.raises(ValueError, match=refusal):
            check_dot(cfg.optim, cfg.trainer)
    else:
        with pytest.raises(ValueError, match="no Nesterov variant"):
            DOT(nn.Linear(2, 2).parameters(), **{k: v for k, v in cfg.optim.optimizer.items() if k[0] != "_"})


@pytest.mark.chaos
def test_a_dot_pack_is_bit_identical_to_its_cells_alone_and_resumes_after_a_kill(tmp_path):
    """An alpha=0 cell (plain SGD's one momentum) beside a distilling one (DOT's two), as a grid packs them."""
    grid = [*FAST, "teacher=resnet8", "trainer.epochs=2", "aug=fcra", "optim=dot", "alpha=0,0.5",
            "optim.scheduler.milestones=[1]", "trainer.deterministic=true"]
    packed = sweep(tmp_path, "packed", grid)
    alone = sweep(tmp_path, "alone", [*grid, "hydra/launcher=basic"])
    killed = tmp_path / "killed"
    args = ["-m", *grid, f"hydra.sweep.dir={killed}"]
    kill_after_checkpoint(TRAIN_SCRIPT, args, cell_dir(killed, grid, "alpha=0.5") / "checkpoint.pt", 1,
                          tmp_path / "killed.log", then=0.05)
    done = run_cli(args, cwd=tmp_path, env=ONE_THREAD)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from" in done.stdout, done.stdout[-3000:]
    for alpha in ("alpha=0", "alpha=0.5"):
        job = cell_dir(packed, grid, alpha).name
        reference = read_results(packed / job / RESULTS_FILE)
        for other in (alone, killed):
            assert metrics(read_results(other / job / RESULTS_FILE)) == metrics(reference), (other, job)
            assert same_weights(other / job / "checkpoint.pt", packed / job / "checkpoint.pt"), (other, job)
