"""kd/sync_guard.py catches, on a CPU, what on a GPU would stall a training step; kd's real steps have none of it."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from kd.sync_guard import HostSyncError, OpRecord, no_host_sync


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(8, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("syncing, op", [
    (lambda x: x.sum().item(), "aten::_local_scalar_dense"),
    (lambda x: float(x[0]), "aten::_local_scalar_dense"),
    (lambda x: bool(x[0] > 0), "aten::_local_scalar_dense"),
    (lambda x: x[x > 0], "aten::index.Tensor"),
    (lambda x: x.nonzero(), "aten::nonzero"),
    (lambda x: x.masked_select(x > 0), "aten::masked_select"),
    (lambda x: x.round().unique(), "aten::_unique2"),
    (lambda x: torch.equal(x, x), "aten::equal"),
    (lambda x: x + torch.tensor([1.0, 2.0]).sum(), "aten::lift_fresh"),
    (lambda x: x + torch.from_numpy(np.ones(8, dtype=np.float32)), "aten::lift_fresh"),
    (lambda x: x * torch.tensor(2.0, device=x.device), "torch.tensor"),
    (lambda x: x.tolist(), "Tensor.tolist"),
    (lambda x: x.numpy(), "Tensor.numpy"),
])
def test_the_guard_names_each_kind_of_host_sync_and_the_line_that_ran_it(x, syncing, op):
    with pytest.raises(HostSyncError, match=op) as raised:
        with no_host_sync():
            syncing(x)
    assert "tests/test_sync_guard.py:" in str(raised.value)


def test_the_guard_names_an_assignment_through_a_mask():
    def zero_positive(x: torch.Tensor) -> torch.Tensor:
        y = x.clone()
        y[x > 0] = 0.0
        return y

    with pytest.raises(HostSyncError, match=r"aten::index_put_.*boolean mask.*in zero_positive"):
        with no_host_sync():
            zero_positive(torch.randn(8))


def test_python_numbers_passed_to_ops_are_no_host_sync(x):
    """A number travels as a kernel argument (or as a wrapped scalar): nothing waits, nothing is copied."""
    with no_host_sync() as record:
        y = torch.where(x > 0, 3, x) * 2.0 + 1
        y[0] = 5.0  # a Python number assigned by basic indexing
        y.new_full((), 8.0)
        torch.stack([y.sum(), y.amax()])
    assert record.total > 0 and not record.syncs


def test_the_guard_lets_the_block_raise_its_own_error_and_leaves_no_mode_entered(x):
    with pytest.raises(ZeroDivisionError):
        with no_host_sync():
            x.sum().item()
            raise ZeroDivisionError
    with no_host_sync():  # nothing left entered: this block alone is checked, and is clean
        x + 1


def test_a_record_counts_every_op_and_each_watched_step(x):
    record = OpRecord()
    batches = [x + i for i in range(5)]
    with record.watch(iter(batches), skip=2) as steps:
        for batch in steps:
            (batch * 2).sum()
    assert record.steps == 3
    assert record.counts == {"aten::mul.Tensor": 3, "aten::sum": 3}
    assert record.total == 6


def test_a_loop_that_raises_inside_a_watched_step_leaves_no_mode_entered(x):
    record = OpRecord()
    with pytest.raises(KeyError):
        with record.watch([x, x]) as steps:
            for batch in steps:
                batch + 1
                raise KeyError
    before = record.total
    x + 1
    assert record.total == before == 1
