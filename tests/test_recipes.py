"""Recipes as their authors ran them (issue 43, item 7): the small differences from the references' code that kd had."""
from __future__ import annotations

import contextlib
import copy

import pytest
import torch
from hydra.utils import instantiate

from kd.models.resnet import resnet8
from kd.runs.packs import group_packs
from kd.runs.results import RESULTS_FILE, read_results
from kd.training.teacher import FrozenTeacher
from tests.conftest import FAST, cell_dir, compose_config, run_cli

@pytest.mark.parametrize("loss", ["ab", "fsp"])
@pytest.mark.parametrize("pair, lr", [("resnet32x4-shufflev2", 0.01), ("vgg13-mobilenetv2", 0.01),
                                      ("resnet32x4-resnet8x4", 0.05)])
def test_first_stage_trains_at_the_students_lr_as_repdistillers_init(loss, pair, lr):
    """RepDistiller's train_student.py sets opt.learning_rate = 0.01 for MobileNetV2/ShuffleV1/ShuffleV2 students
    before init() (helper/pretrain.py), which trains AB's and FSP's first stage at opt.learning_rate."""
    cfg = compose_config([f"pair={pair}", f"loss={loss}"])
    assert cfg.optim.optimizer.lr == lr  # the main stage's, from conf/pair/
    assert instantiate(cfg.loss).first_stage_lr == lr


def test_cifar100_is_normalized_with_the_references_constants():
    """RepDistiller's dataset/cifar100.py and mdistiller's mdistiller/dataset/cifar100.py both normalize with these:
    their published teachers were trained on them."""
    data = compose_config(["data=cifar100"]).data
    assert list(data.mean) == [0.5071, 0.4867, 0.4408] and list(data.std) == [0.2675, 0.2565, 0.2761]


def trained_like(model: torch.nn.Module) -> torch.nn.Module:
    """`model` with running statistics unlike a batch's, as a trained teacher's are."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    return model.eval()


def test_ofds_teacher_runs_on_batch_statistics_as_its_references_and_never_changes():
    """mdistiller's OFD.train() and the original OFD code (t_net.train()) run the teacher in train mode while
    distilling; kd ran it in eval mode."""
    assert instantiate(compose_config(["loss=ofd"]).loss).teacher_batch_stats
    torch.manual_seed(0)
    teacher = trained_like(resnet8(10))
    before = copy.deepcopy(teacher.state_dict())
    images = torch.randn(8, 3, 16, 16)
    reference = copy.deepcopy(teacher).train()  # theirs: train mode, under no_grad
    with torch.no_grad():
        expected = reference(images, features=True)
    out = FrozenTeacher(teacher, contextlib.nullcontext, features=True, batch_stats=True)(images, None)
    assert torch.equal(out.logits, expected[0])
    assert all(torch.equal(a, b) for a, b in zip(out.features.preact, expected[1].preact))
    with torch.no_grad():
        assert not torch.allclose(out.logits, teacher(images))  # not what eval mode gives
    assert not out.logits.requires_grad and not any(p.requires_grad for p in teacher.parameters())
    # kd's cached teacher stays as it is (theirs moves running statistics that nothing reads afterwards).
    assert teacher.state_dict().keys() == before.keys()
    assert all(torch.equal(teacher.state_dict()[k], v) for k, v in before.items()) and not teacher.training


def test_cells_that_run_the_teacher_alike_share_a_pack():
    """A pack shares the teacher's forward; an alpha=0 cell never runs the teacher, so it packs with any."""
    cells = [["loss=kd", "alpha=0.5"], ["loss=ofd", "alpha=0.5", "loss.teacher_batch_stats=false"],
             ["loss=ofd", "alpha=0"], ["loss=ofd", "alpha=0.5"], ["loss=ofd", "alpha=1"]]
    assert sorted(group_packs([compose_config([*FAST, *c]) for c in cells])) == [[0, 1, 2], [3, 4]]


@pytest.mark.slow
def test_ofd_cells_that_run_the_teacher_differently_train_apart_and_see_different_teachers(tmp_path):
    grid = [*FAST, "teacher=resnet8", "aug=fc", "loss=ofd", "alpha=0.5", "loss.teacher_batch_stats=true,false"]
    done = run_cli(["-m", *grid, f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {mode: read_results(cell_dir(tmp_path / "sweep", grid, f"loss.teacher_batch_stats={mode}") / RESULTS_FILE)
            for mode in ("True", "False")}  # as Hydra's sweeper writes them
    assert all(r["status"] == "completed" for r in rows.values())
    # What the teacher gave on the training batches: batch statistics in one cell, its running ones in the other.
    seen = {mode: r["history"][-1]["diag/teacher_p_true"] for mode, r in rows.items()}
    assert seen["True"] != seen["False"], seen
