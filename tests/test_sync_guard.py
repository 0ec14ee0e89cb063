"""kd/training/sync_guard.py catches, on a CPU, what on a GPU would stall a training step; kd's real steps have none of it."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from conftest import FAST, compose_config
from kd.data.augment import FlipCropRandAugment, NoAugment
from kd.training.capture import EAGER
from kd.config import TeacherView
from kd.training.engine import Cell, autocast_for, evaluate, make_batches, make_teaching, train_one_epoch
from kd.training.engine import test_logits as teacher_test_logits  # imported as test_logits, pytest would collect it
from kd.models.resnet import resnet8
from kd.training.students import make_pack
from kd.training.sync_guard import HostSyncError, OpRecord, no_host_sync
from test_augment import one_thread, synthetic_splits  # noqa: F401 (one_thread: an autouse fixture, here too)


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


# A pack with every kind of cell: one that never distils, and distilling ones on each view of the teacher.
CELLS = [(0.0, "same"), (0.5, "same"), (0.5, "clean"), (1.0, "independent")]


def real_pack(tmp_path, aug: str, pack_mode: str, teacher_logit_cache: bool, loss: str = "kd"):
    """A pack's training step as `kd.training.engine.fit` builds it (resnet8 from resnet8 on 16x16 images), with fcra in
    the form CUDA runs; and its evaluation batches and the teacher's test logits."""
    cfgs = [compose_config([*FAST, "model=resnet8", "teacher=resnet8", f"aug={aug}", f"loss={loss}", f"alpha={alpha}",
                            f"trainer.teacher_view={view}", f"trainer.pack_mode={pack_mode}", "trainer.device=cpu",
                            "trainer.batch_size=8", "trainer.eval_batch_size=8",
                            f"trainer.teacher_logit_cache={teacher_logit_cache}"], out_dir=tmp_path / str(i))
            for i, (alpha, view) in enumerate(CELLS)]
    cfg, device = cfgs[0], torch.device("cpu")
    splits = synthetic_splits(n=32, size=16)
    cells = [Cell(c, Path(c.out_dir), {}, lambda row, step: None, f"cell{i}", "") for i, c in enumerate(cfgs)]
    teacher = resnet8(num_classes=10).eval()
    update = make_pack(cells, 10, device, EAGER, teacher, torch.zeros(2, 3, 16, 16))
    augmentation = FlipCropRandAugment(form="select") if aug == "fcra" else instantiate(cfg.aug)
    autocast = autocast_for(device, cfg.trainer.bf16)
    batches = make_batches(cfg, splits, "train", augmentation, device, shuffle=True)
    features = any(s.alpha > 0 and s.distiller.needs_features for s in update.students)
    teaching = make_teaching(cfg, teacher, splits, augmentation, batches, {TeacherView(v) for a, v in CELLS if a > 0},
                             device, autocast, EAGER, features)
    test_batches = make_batches(cfg, splits, "test", NoAugment(), device, shuffle=False)
    teacher_on_test = teacher_test_logits(teacher, test_batches, splits, autocast)
    return update, batches, teaching, autocast, test_batches, teacher_on_test


@pytest.mark.parametrize("aug, pack_mode, teacher_logit_cache, loss", [
    ("none", "loop", False, "kd"), ("none", "stacked", True, "kd"), ("fc", "loop", False, "kd"),
    ("fc", "stacked", False, "kd"), ("fcra", "loop", False, "kd"), ("fcra", "stacked", False, "kd"),
    ("fccutout", "loop", False, "kd"), ("fc", "stacked", False, "dkd"), ("fc", "loop", False, "fitnet"),
    ("fc", "loop", False, "at")])
def test_a_real_packed_training_step_never_syncs_with_the_host(tmp_path, aug, pack_mode, teacher_logit_cache, loss):
    """Every step of `train_one_epoch` after the first (which builds the augmentation's tables and the optimizer's
    momentum once): its batch, augmentation, the teacher on each view, the students' steps (each distiller's, the
    feature ones with the networks' features) and the loop's sums. The epoch's reads of its metrics, once at its
    end, are outside the steps."""
    update, batches, teaching, autocast, _, _ = real_pack(tmp_path, aug, pack_mode, teacher_logit_cache, loss)
    record = OpRecord()
    with record.watch(batches, skip=1) as steps:
        stats = train_one_epoch(update, steps, teaching, autocast, 0, set())
    assert record.steps == len(batches) - 1 == 3
    assert all(st["images"] == 32 for st in stats)
    record.check()


def test_evaluation_never_syncs_with_the_host_until_its_one_read(tmp_path):
    update, _, _, autocast, test_batches, teacher_on_test = real_pack(tmp_path, "fc", "loop", True)
    record = OpRecord()
    with record.watch(test_batches) as steps:
        row = evaluate(update.students[1].model, steps, autocast, "test", teacher_on_test)
    assert record.steps == len(test_batches) == 4 and "diag/test_kl" in row
    record.check()


def test_a_stacked_pack_with_a_waiting_student_never_syncs_with_the_host(tmp_path):
    """A resumed pack's cell further on (or one that failed) waits: its slices are kept and restored every step."""
    update, batches, teaching, autocast, _, _ = real_pack(tmp_path, "fc", "stacked", False)
    record = OpRecord()
    with record.watch(batches, skip=1) as steps:
        stats = train_one_epoch(update, steps, teaching, autocast, 0, {2})
    assert stats[2] is None and record.steps == 3
    record.check()
