"""The authors' logit losses as recorded facts, for the tests to compare kd's distillers against without holding
their code: tests/fixtures/logit_references.json (its README says where each came from) gives each case's loss
and its gradient with respect to the student's logits, in float64, on inputs rebuilt here from a seed."""
from __future__ import annotations

import functools
import json
from pathlib import Path

import torch

FIXTURE = Path(__file__).parent / "fixtures" / "logit_references.json"


@functools.cache
def recorded() -> dict:
    return json.loads(FIXTURE.read_text())


def inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(student logits, teacher logits, targets) as they were recorded on: float64, drawn from the seed."""
    spec = recorded()["inputs"]
    g = torch.Generator().manual_seed(spec["seed"])
    s = spec["spread"] * torch.randn(spec["batch"], spec["classes"], generator=g, dtype=torch.float64)
    t = spec["spread"] * torch.randn(spec["batch"], spec["classes"], generator=g, dtype=torch.float64)
    return s, t, torch.randint(0, spec["classes"], (spec["batch"],), generator=g)


def assert_their_loss_and_gradient(case: str, loss_of) -> None:
    """`loss_of(student, teacher, targets)`, kd's, gives the case's recorded loss and gradient to 1e-10."""
    s, t, y = inputs()
    s.requires_grad_(True)
    loss = loss_of(s, t, y)
    loss.backward()
    theirs = recorded()["cases"][case]
    assert loss.dtype == torch.float64
    torch.testing.assert_close(loss.detach(), torch.tensor(theirs["loss"], dtype=torch.float64), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(s.grad, torch.tensor(theirs["grad"], dtype=torch.float64), rtol=1e-10, atol=1e-12)
