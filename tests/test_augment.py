"""kd's per-image augmentation equals torchvision's, image by image; the teacher runs only where it must.

Equality tests compare kd's batched ops with torchvision applied to one image tensor.
Statistical tests use a fixed seed and a large batch: they check that every image gets
its own draw and that draws are uniform (chi-square p-value above 1e-3).
"""
from __future__ import annotations

import itertools

from pathlib import Path

import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as F
from hydra.utils import instantiate
from scipy.stats import chisquare
from torch import nn

from kd.data.augment import (RANDAUGMENT_BINS, RANDAUGMENT_OPS, FlipCrop, FlipCropRandAugment, NoAugment,
                        apply_rand_augment, draw_rand_augment, rand_augment, random_crop, random_flip)
from kd.data.datasets import ImageSplits
from kd.config import TeacherView
from kd.training.engine import Cell, autocast_for, fit, make_batches, make_teaching, train_one_epoch
from kd.training.students import LoopUpdate, make_student
from kd.models.resnet import resnet8
from kd.training.sync_guard import no_host_sync
from kd.training.teacher import CachedTeacherLogits, FrozenTeacher
from conftest import FAST, compose_config

MIN_P = 1e-3  # a uniformity test fails below this p-value; the seeds are fixed, so it is deterministic
@pytest.fixture(autouse=True)
def one_thread():
    """These tensors are tiny: one thread is as fast, and does not stall when other jobs share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


SIGNED = {name: signed for name, (_, signed) in T.RandAugment()._augmentation_space(RANDAUGMENT_BINS, (32, 32)).items()}


def test_images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """uint8 images with varied ranges, so AutoContrast/Equalize/Solarize have work to do."""
    g = torch.Generator().manual_seed(seed)
    low = torch.randint(0, 120, (n, 1, 1, 1), generator=g)
    span = torch.randint(30, 256 - 120, (n, 1, 1, 1), generator=g)
    return (low + torch.rand(n, 3, size, size, generator=g) * span).to(torch.uint8)


test_images.__test__ = False  # a helper, not a test


def torchvision_rand_augment(image: torch.Tensor, ops: list[int], negative: list[bool], magnitude: int,
                             monkeypatch: pytest.MonkeyPatch) -> torch.Tensor:
    """torchvision's RandAugment(len(ops), magnitude) on one image, with its random draws set to ours.

    RandAugment draws with `torch.randint`: the op index, then a sign bit for signed ops only.
    """
    draws = []
    for op, neg in zip(ops, negative):
        draws.append((len(RANDAUGMENT_OPS), op))
        if SIGNED[RANDAUGMENT_OPS[op]]:
            draws.append((2, int(neg)))

    def scripted_randint(high, size, *args, **kwargs):
        want_high, value = draws.pop(0)
        assert high == want_high, "torchvision drew in another order than this test expects"
        return torch.tensor([value])

    with monkeypatch.context() as m:
        m.setattr(torch, "randint", scripted_randint)
        out = T.RandAugment(num_ops=len(ops), magnitude=magnitude)(image)
    assert not draws, "torchvision drew fewer numbers than this test expects"
    return out


@pytest.mark.parametrize("form", ["grouped", "select"])
@pytest.mark.parametrize("size", [32, 16])
@pytest.mark.parametrize("op", RANDAUGMENT_OPS)
def test_each_rand_augment_op_equals_torchvision_per_image(op: str, size: int, form: str, monkeypatch):
    n = 16
    images = test_images(n, size)
    g = torch.Generator().manual_seed(1)
    # Even images draw `op`, odd ones other ops, so `op` is applied to a subset of the batch.
    ops = torch.where(torch.arange(n) % 2 == 0, RANDAUGMENT_OPS.index(op),
                      torch.randint(len(RANDAUGMENT_OPS), (n,), generator=g))[None]
    negative = (torch.arange(n) % 4 < 2)[None]  # both signs among the images that drew `op`
    for magnitude in (0, 9, 14, 30):
        out = apply_rand_augment(images, ops, negative, magnitude, form)
        for i in range(n):
            want = torchvision_rand_augment(images[i], [int(ops[0, i])], [bool(negative[0, i])], magnitude,
                                            monkeypatch)
            assert torch.equal(out[i], want), f"{op} image {i} magnitude {magnitude} differs from torchvision"
        if magnitude == 14 and op != "Identity":
            assert not torch.equal(out[::2], images[::2]), f"{op} left every image unchanged: the test is vacuous"


@pytest.mark.parametrize("form", ["grouped", "select"])
def test_rand_augment_two_ops_per_image_equals_torchvision(monkeypatch, form: str):
    images = test_images(64, 32, seed=2)
    ops, negative = draw_rand_augment(64, 2, images.device, torch.Generator().manual_seed(3))
    out = apply_rand_augment(images, ops, negative, magnitude=14, form=form)
    for i in range(64):
        want = torchvision_rand_augment(images[i], ops[:, i].tolist(), negative[:, i].tolist(), 14, monkeypatch)
        assert torch.equal(out[i], want), f"image {i} (ops {ops[:, i].tolist()}) differs from torchvision"


@pytest.mark.parametrize("seed", range(4))
def test_the_sync_free_form_equals_the_grouped_form(seed: int):
    """The CPU check of the CUDA path: both forms give identical outputs, including the edge cases of
    Equalize and AutoContrast (a one-valued channel, a channel with a single non-empty bin after the first)."""
    images = test_images(96, 32, seed=seed)
    images[0] = 7  # one value everywhere
    images[1, 0] = torch.where(torch.arange(32) < 16, 3, 200).to(torch.uint8)[None, :].expand(32, 32)
    ops, negative = draw_rand_augment(96, 3, images.device, torch.Generator().manual_seed(seed))
    for magnitude in (5, 14, 30):
        assert torch.equal(apply_rand_augment(images, ops, negative, magnitude, "select"),
                           apply_rand_augment(images, ops, negative, magnitude, "grouped"))


def test_rand_augment_in_its_cuda_form_builds_no_tensor_from_host_data_per_batch():
    """The CPU check of what failed on an H200: the step made torchvision's magnitude table, the sign table
    and the geometric ops' affine matrices from host data every batch (a host-to-device copy each on a GPU).
    They are built at first use, once per image size and device."""
    images = test_images(16, 32)
    ops, negative = draw_rand_augment(16, 2, images.device, torch.Generator().manual_seed(0))
    first = apply_rand_augment(images, ops, negative, 14, "select")
    with no_host_sync():
        again = apply_rand_augment(images, ops, negative, 14, "select")
    assert torch.equal(again, first)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_training_step_on_cuda_never_syncs_with_the_host(tmp_path):
    cfg = compose_config([*FAST, "aug=fcra", "alpha=0.5", "trainer.device=cuda", "trainer.compile=false"],
                         out_dir=tmp_path)
    device = torch.device("cuda")
    splits = synthetic_splits(n=256, size=32)
    cell = Cell(cfg, tmp_path, {}, lambda row, step: None, name="", stale_fix="")
    update = LoopUpdate([make_student(cell, 10, device)])
    autocast = autocast_for(device, True)
    batches = make_batches(cfg, splits, "train", instantiate(cfg.aug), device, shuffle=True)
    views = set(TeacherView)  # every view and its diagnostics (kd/training/diagnostics.py) are in the step
    teaching = make_teaching(cfg, resnet8(num_classes=10), splits, instantiate(cfg.aug), batches, views, device,
                             autocast)
    train_one_epoch(update, itertools.islice(batches, 2), teaching, autocast, 0, set())  # warm up allocations
    teaching.begin_epoch(1)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for images, labels, indices in itertools.islice(batches, 3):
            on_view = teaching.step(views, images, labels, indices)
            update.step([0], images, labels, {0: on_view[TeacherView.independent]}, autocast, epoch=0)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_rand_augment_applies_its_own_draws():
    images = test_images(32, 32)
    ops, negative = draw_rand_augment(32, 2, images.device, torch.Generator().manual_seed(4))
    out = rand_augment(images, 2, 14, torch.Generator().manual_seed(4))
    assert torch.equal(out, apply_rand_augment(images, ops, negative, 14))


def test_rand_augment_draws_are_per_image_and_uniform():
    n = 14_000
    ops, negative = draw_rand_augment(n, 2, torch.device("cpu"), torch.Generator().manual_seed(5))
    k = len(RANDAUGMENT_OPS)
    for slot in range(2):
        assert chisquare(torch.bincount(ops[slot], minlength=k)).pvalue > MIN_P
        assert chisquare(torch.bincount(ops[slot] * 2 + negative[slot], minlength=2 * k)).pvalue > MIN_P
    # the two slots are independent of each other (uniform over all 196 pairs)
    assert chisquare(torch.bincount(ops[0] * k + ops[1], minlength=k * k)).pvalue > MIN_P
    # the first and second half of the batch draw alike: no dependence on the position in the batch
    first, second = torch.bincount(ops[0, : n // 2], minlength=k), torch.bincount(ops[0, n // 2:], minlength=k)
    assert chisquare(first, second * first.sum() / second.sum()).pvalue > MIN_P


def test_identical_images_get_different_rand_augment_outputs():
    images = test_images(1, 32).expand(64, -1, -1, -1)
    out = FlipCropRandAugment()(images, torch.Generator().manual_seed(6))
    assert len(torch.unique(out.flatten(1), dim=0)) > 50


def flip_crop_candidates(images: torch.Tensor, padding: int) -> list[tuple[int, int, bool, torch.Tensor]]:
    """Every (top, left, flipped) torchvision can produce: F.crop of the zero-padded image, then F.hflip."""
    h, w = images.shape[-2:]
    padded = F.pad(images, [padding] * 4, fill=0)
    out = []
    for top in range(2 * padding + 1):
        for left in range(2 * padding + 1):
            crop = F.crop(padded, top, left, h, w)
            out += [(top, left, False, crop), (top, left, True, F.hflip(crop))]
    return out


def recover_flip_crop(images: torch.Tensor, out: torch.Tensor, padding: int) -> torch.Tensor:
    """Each output's (top, left, flipped), asserting it equals exactly one torchvision candidate."""
    found = torch.full((len(images), 3), -1)
    matches = torch.zeros(len(images), dtype=torch.long)
    for top, left, flipped, candidate in flip_crop_candidates(images, padding):
        hit = (candidate == out).flatten(1).all(1)
        found[hit] = torch.tensor([top, left, int(flipped)])
        matches += hit
    assert (matches == 1).all(), "some outputs equal no (or several) torchvision crops/flips"
    return found


@pytest.mark.parametrize("size", [32, 16])
def test_random_crop_equals_torchvision_crop_of_padded_image(size: int):
    images = test_images(128, size)
    out = random_crop(images, 4, torch.Generator().manual_seed(7))
    found = recover_flip_crop(images, out, 4)
    assert (found[:, 2] == 0).all(), "random_crop must not flip"


def test_random_flip_equals_torchvision_hflip():
    images = test_images(1000, 16)
    out = random_flip(images, torch.Generator().manual_seed(8))
    flipped = (out == F.hflip(images)).flatten(1).all(1)
    assert (flipped | (out == images).flatten(1).all(1)).all()
    assert chisquare(torch.bincount(flipped.long(), minlength=2)).pvalue > MIN_P


def test_flip_crop_offsets_and_flips_are_per_image_and_uniform():
    # Identical images: a batch-wide draw would give every image the same output.
    images = test_images(1, 8).expand(4860, -1, -1, -1).contiguous()  # 30 per (top, left, flip) cell
    out = FlipCrop(padding=4)(images, torch.Generator().manual_seed(9))
    top, left, flipped = recover_flip_crop(images, out, 4).T
    assert chisquare(torch.bincount((top * 9 + left) * 2 + flipped, minlength=162)).pvalue > MIN_P
    assert chisquare(torch.bincount(top, minlength=9)).pvalue > MIN_P
    assert chisquare(torch.bincount(left, minlength=9)).pvalue > MIN_P


def test_augmentations_keep_dtype_and_shape():
    images = test_images(8, 16)
    g = torch.Generator().manual_seed(10)
    for aug in (NoAugment(), FlipCrop(), FlipCropRandAugment()):
        out = aug(images, g)
        assert out.dtype == torch.uint8 and out.shape == images.shape


def test_device_pipeline_normalizes_like_the_dataloader_pipeline():
    cfg = compose_config([*FAST, "trainer.pipeline=device"])
    device_batches = make_batches(cfg, synthetic_splits(), "test", NoAugment(), torch.device("cpu"), shuffle=False)
    cfg = compose_config([*FAST, "trainer.pipeline=dataloader"])
    loader_batches = make_batches(cfg, synthetic_splits(), "test", NoAugment(), torch.device("cpu"), shuffle=False)
    for (x, y, i), (x2, y2, i2) in zip(device_batches, loader_batches, strict=True):
        assert torch.equal(x, x2) and torch.equal(y, y2) and torch.equal(i, i2)


def synthetic_splits(n: int = 200, size: int = 8) -> ImageSplits:
    images = test_images(2 * n, size)
    labels = torch.arange(2 * n) % 10
    return ImageSplits("synthetic", images[:n], labels[:n], images[n:], labels[n:], 10, (0.5,) * 3, (0.25,) * 3)


class RaisingTeacher(nn.Module):
    """A teacher that fails the test if anything runs it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise AssertionError("the teacher ran")


@pytest.mark.parametrize("pipeline", ["device", "dataloader"])
def test_cached_teacher_logits_equal_running_the_teacher(pipeline: str):
    torch.manual_seed(0)
    cfg = compose_config([*FAST, "aug=none", "alpha=0.5", f"trainer.pipeline={pipeline}", "trainer.num_workers=0",
                          "trainer.batch_size=32"])
    splits, device = synthetic_splits(), torch.device("cpu")
    teacher = resnet8(num_classes=10)
    batches = make_batches(cfg, splits, "train", NoAugment(), device, shuffle=True)
    teaching = make_teaching(cfg, teacher, splits, NoAugment(), batches, {TeacherView.same}, device,
                             autocast_for(device, False))
    teacher_fn = teaching.fns[TeacherView.same]
    assert isinstance(teacher_fn, CachedTeacherLogits)
    frozen = FrozenTeacher(teacher, autocast_for(device, False))
    for images, _, indices in batches:
        assert torch.equal(teacher_fn(images, indices).logits, frozen(images, indices).logits)


def test_teacher_runs_live_on_augmented_batches():
    cfg = compose_config([*FAST, "aug=fc", "alpha=0.5"])
    splits, device = synthetic_splits(), torch.device("cpu")
    batches = make_batches(cfg, splits, "train", FlipCrop(), device, shuffle=True)
    teaching = make_teaching(cfg, resnet8(num_classes=10), splits, FlipCrop(), batches, {TeacherView.same}, device,
                             autocast_for(device, False))
    teacher_fn = teaching.fns[TeacherView.same]
    assert isinstance(teacher_fn, FrozenTeacher)
    assert not teacher_fn.model.training and not any(p.requires_grad for p in teacher_fn.model.parameters())


def fit_alone(cfg, splits, out_dir, teacher):
    """`fit` on a pack of one, as kd.train runs a single job."""
    cell = Cell(cfg, Path(out_dir), {}, lambda row, step: None, name="", stale_fix="")
    (outcome,) = fit([cell], splits, torch.device("cpu"), teacher)
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


@pytest.mark.parametrize("aug", ["none", "fc", "fcra"])
def test_alpha_zero_never_runs_the_teacher(tmp_path, aug: str):
    cfg = compose_config([*FAST, f"aug={aug}", "alpha=0"], out_dir=tmp_path)
    result = fit_alone(cfg, synthetic_splits(), tmp_path, RaisingTeacher())
    assert result["history"][0]["train/kd"] == 0.0


def test_the_raising_teacher_would_be_noticed(tmp_path):
    cfg = compose_config([*FAST, "aug=none", "alpha=0.5"], out_dir=tmp_path)
    with pytest.raises(AssertionError, match="the teacher ran"):
        fit_alone(cfg, synthetic_splits(), tmp_path, RaisingTeacher())
