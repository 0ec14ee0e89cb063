"""trainer.augment_scope=epoch: the whole split augmented once per epoch on the device, each step a slice of it.

The same per-image draws as per batch (each image its own crop, flip and RandAugment ops, uniform), from a
generator seeded by seed and epoch alone: a pack trains each cell as alone, a resumed run as the uninterrupted one,
and a step dispatches no augmentation op.
"""
from __future__ import annotations

import pytest
import torch
from scipy.stats import chisquare

from conftest import FAST, compose_config
from test_augment import MIN_P, recover_flip_crop, synthetic_splits
from test_augment import test_images as images_of  # not collected as a test here
from test_diagnostics import fit_cells, fit_packed_and_alone, resumes_as_uninterrupted, without_times
from kd.data.augment import FlipCrop, FlipCropRandAugment, NoAugment
from kd.data.pipeline import DevicePipeline, Normalize, epoch_seed
from kd.runs.checks import check_cell
from kd.training.sync_guard import OpRecord

CPU = torch.device("cpu")
EPOCH = [*FAST, "trainer.augment_scope=epoch"]


def pipeline(images: torch.Tensor, aug, per_epoch: bool = True, seed: int = 3, batch_size: int = 16) -> DevicePipeline:
    labels = torch.arange(len(images)) % 10
    return DevicePipeline(images, labels, aug, Normalize((0.5,) * 3, (0.25,) * 3, CPU, True), batch_size,
                          torch.Generator().manual_seed(seed), True, 10, seed if per_epoch else None)


@pytest.mark.parametrize("aug", [FlipCrop(), FlipCropRandAugment(form="grouped"), FlipCropRandAugment(form="select")],
                         ids=["fc", "fcra-grouped", "fcra-select"])
def test_each_step_is_a_slice_of_its_epochs_augmentation_and_that_depends_on_seed_and_epoch_alone(aug):
    images = images_of(64, 8)
    batches = pipeline(images, aug)
    epochs = []
    for epoch in range(2):
        batches.begin_epoch(epoch)
        whole = aug(images, torch.Generator().manual_seed(epoch_seed(3, epoch)))
        order = []
        for x, _, idx in batches:
            assert torch.equal(x, batches.normalize(whole[idx]))
            order.append(idx)
        assert torch.equal(torch.cat(order).sort().values, torch.arange(64))  # a permutation: each image once
        epochs.append(whole)
    assert not torch.equal(epochs[0], epochs[1])  # each epoch its own draws
    other = pipeline(images, aug, seed=3)
    other.generator.manual_seed(99)  # the stream's own generator elsewhere: the epoch's draws do not follow it
    other.begin_epoch(1)
    assert torch.equal(other.augmented, epochs[1])


def test_a_pass_without_begin_epoch_is_refused_not_silently_per_batch():
    batches = pipeline(images_of(32, 8), FlipCrop())
    batches.begin_epoch(0)
    list(batches)
    with pytest.raises(RuntimeError, match="begin_epoch"):
        next(iter(batches))  # the next epoch's pass, without its own augmentation


def test_epoch_flip_crop_offsets_and_flips_are_per_image_and_uniform():
    """As tests/test_augment.py's per-batch test: identical images, each its own (top, left, flip), uniform."""
    images = images_of(1, 8).expand(4860, -1, -1, -1).contiguous()  # 30 per (top, left, flip) cell
    batches = pipeline(images, FlipCrop(padding=4))
    batches.begin_epoch(0)
    top, left, flipped = recover_flip_crop(images, batches.augmented, 4).T
    assert chisquare(torch.bincount((top * 9 + left) * 2 + flipped, minlength=162)).pvalue > MIN_P


def test_epoch_rand_augment_outputs_differ_per_identical_image():
    images = images_of(1, 8).expand(200, -1, -1, -1).contiguous()
    batches = pipeline(images, FlipCropRandAugment(form="select"))
    batches.begin_epoch(0)
    assert len(torch.unique(batches.augmented.flatten(1), dim=0)) > 50


@pytest.mark.parametrize("aug", [FlipCrop(), FlipCropRandAugment(form="select")], ids=["fc", "fcra"])
def test_a_step_dispatches_no_augmentation_op(aug):
    """Op by op, a step of an epoch-augmented stream is a step of aug=none: the augmentation is per epoch."""
    images = images_of(64, 8)
    counts = []
    for batches in (pipeline(images, aug), pipeline(images, NoAugment(), per_epoch=False)):
        batches.begin_epoch(0)
        record = OpRecord()
        with record.watch(batches, skip=1) as steps:
            for _ in steps:
                pass
        record.check()
        counts.append(record.counts)
    assert counts[0] == counts[1]


def test_a_pack_over_views_trains_each_cell_as_alone_with_epoch_augmentation(tmp_path):
    cfgs = [compose_config([*EPOCH, "aug=fcra", "trainer.batch_size=64", f"alpha={a}", f"trainer.teacher_view={v}"],
                           out_dir=tmp_path) for a, v in [(0, "same"), (0.5, "same"), (0.5, "independent")]]
    packed = fit_packed_and_alone(cfgs, tmp_path)
    per_batch = fit_cells([compose_config([*FAST, "aug=fcra", "trainer.batch_size=64", "alpha=0"], out_dir=tmp_path)],
                          synthetic_splits(), tmp_path / "per_batch", None)
    assert without_times(per_batch[0]["history"]) != without_times(packed[0]["history"])  # other draws


@pytest.mark.parametrize("aug", ["fcra", "fcmixup"])
def test_a_resumed_epoch_augmented_cell_continues_its_uninterrupted_run(tmp_path, aug: str):
    assert resumes_as_uninterrupted(tmp_path, [*EPOCH, f"aug={aug}", "alpha=0.5", "trainer.teacher_view=independent"], 3)


def test_epoch_augmentation_needs_the_device_pipeline(tmp_path):
    cfg = compose_config([*EPOCH, "trainer.pipeline=dataloader"], out_dir=tmp_path)
    with pytest.raises(ValueError, match="augment_scope=epoch"):
        check_cell(cfg)


def test_the_default_scope_leaves_a_cells_identity_and_the_teachers_recipe_as_they_were(tmp_path):
    from kd.config import defining_config
    from kd.training.teacher import teacher_training_config

    default = compose_config(FAST, out_dir=tmp_path)
    assert "augment_scope" not in defining_config(default)["trainer"]  # old sweeps still resume and skip
    assert defining_config(compose_config(EPOCH, out_dir=tmp_path))["trainer"]["augment_scope"] == "epoch"
    tcfg = teacher_training_config(compose_config(EPOCH, out_dir=tmp_path), tmp_path)
    assert tcfg.trainer.augment_scope.value == "batch"  # the teacher trains by its recipe, whose name knows no scope


@pytest.mark.parametrize("aug", [FlipCrop(), FlipCropRandAugment(form="select")], ids=["fc", "fcra"])
def test_the_epoch_pass_dispatches_as_many_ops_for_any_split_size(aug):
    """What benchmarks/ops.py relies on to spread one pass over CIFAR's 50,000 images: per-image draws applied to the
    whole tensor at once, the pass's ops are the same for 64 images as for 640."""
    totals = []
    pipeline(images_of(8, 8), aug).begin_epoch(0)  # builds RandAugment's tables, once per image size and device
    for n in (64, 640):
        batches = pipeline(images_of(n, 8), aug)
        with OpRecord() as record:
            batches.begin_epoch(0)
        totals.append(record.total)
    assert totals[0] == totals[1] > 0
