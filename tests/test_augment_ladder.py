"""The ladder beyond fcra: TrivialAugmentWide, AutoAugment, Cutout, Mixup and CutMix, against torchvision."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms as T
from hydra.utils import instantiate
from scipy.stats import chisquare, kstest
from scipy.stats import beta as beta_dist
from torchvision.transforms import v2

from conftest import FAST, compose_config, run_cli
from kd.data.augment_ladder import (AA_POLICY, TA_OPS, FlipCropAutoAugment, FlipCropCutMix, FlipCropMixup,
                               FlipCropTrivialAugment, beta_draw, cutout)
from kd.training.engine import make_batches
from kd.distillers.base import Outputs
from kd.distillers.kd import kd_loss
from test_augment import MIN_P, synthetic_splits, test_images

NEW = ["fcta", "fcaa", "fccutout", "fcmixup", "fccutmix"]


def scripted(monkeypatch, randint_values: list[tuple[int, int | list[int]]], rand_values: list[list[float]]):
    """Make torch.randint / torch.rand return the given values, checking the bounds torchvision asks for."""
    def randint(high, size, *args, **kwargs):
        want_high, value = randint_values.pop(0)
        assert high == want_high, "torchvision drew in another order than this test expects"
        return torch.tensor(value if isinstance(value, list) else [value])

    def rand(size, *args, **kwargs):
        return torch.tensor(rand_values.pop(0))

    monkeypatch.setattr(torch, "randint", randint)
    monkeypatch.setattr(torch, "rand", rand)


def test_trivial_augment_equals_torchvision_per_image(monkeypatch):
    images = test_images(96, 32, seed=3)
    aug = FlipCropTrivialAugment()
    out = aug.trivial_augment(images, torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(1)  # the same draws, in the same order, to script torchvision with
    op, magnitude_bin = torch.randint(14, (96,), generator=g), torch.randint(31, (96,), generator=g)
    negative = torch.rand(96, generator=g) < 0.5
    space = T.TrivialAugmentWide()._augmentation_space(31)
    for i in range(96):
        name = TA_OPS[op[i]]
        draws = [(14, int(op[i]))] + ([(31, int(magnitude_bin[i]))] if space[name][0].ndim > 0 else []) + \
            ([(2, int(negative[i]))] if space[name][1] else [])
        with monkeypatch.context() as m:
            scripted(m, draws, [])
            want = T.TrivialAugmentWide()(images[i])
        assert torch.equal(out[i], want), f"image {i}: {name} bin {int(magnitude_bin[i])} differs from torchvision"
    assert len(set(op.tolist())) == 14  # every op was exercised


def test_auto_augment_cifar10_policy_equals_torchvision_per_image(monkeypatch):
    images = test_images(150, 32, seed=4)
    out = FlipCropAutoAugment.auto_augment(images, torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(2)
    policy, draws = torch.randint(25, (150,), generator=g), torch.rand(150, 2, generator=g)
    negative = torch.rand(150, 2, generator=g) < 0.5
    for i in range(150):
        signs = [0 if negative[i, s] else 1 for s in range(2)]  # torchvision negates when its sign draw is 0
        with monkeypatch.context() as m:
            scripted(m, [(25, int(policy[i])), (2, signs)], [draws[i].tolist()])
            want = T.AutoAugment(T.AutoAugmentPolicy.CIFAR10)(images[i])
        assert torch.equal(out[i], want), f"image {i}: sub-policy {AA_POLICY[policy[i]]} differs from torchvision"
    assert len(set(policy.tolist())) == 25


def test_cutout_zeroes_one_clipped_square_at_a_uniform_centre():
    n, size = 20_000, 16
    images = torch.full((n, 1, 32, 32), 200, dtype=torch.uint8)
    out = cutout(images, size, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    cy, cx = torch.randint(32, (n,), generator=g), torch.randint(32, (n,), generator=g)
    for i in range(50):  # each image: exactly the clipped square is zero
        y1, y2 = max(int(cy[i]) - 8, 0), min(int(cy[i]) + 8, 32)
        x1, x2 = max(int(cx[i]) - 8, 0), min(int(cx[i]) + 8, 32)
        want = images[i].clone()
        want[:, y1:y2, x1:x2] = 0
        assert torch.equal(out[i], want)
    assert chisquare(torch.bincount(cy, minlength=32)).pvalue > MIN_P
    assert chisquare(torch.bincount(cx, minlength=32)).pvalue > MIN_P


@pytest.mark.parametrize("aug", ["fcta", "fcaa", "fccutout"])
def test_identical_images_get_different_outputs(aug):
    images = test_images(1, 32).expand(64, -1, -1, -1)
    out = instantiate(compose_config([f"aug={aug}"]).aug)(images, torch.Generator().manual_seed(6))
    assert len(torch.unique(out.flatten(1), dim=0)) > 40


@pytest.mark.parametrize("alpha", [0.2, 1.0])
def test_mixing_lambda_follows_beta(alpha):
    g = torch.Generator().manual_seed(7)
    draws = [beta_draw(alpha, g, torch.device("cpu")) for _ in range(4000)]
    assert kstest(draws, beta_dist(alpha, alpha).cdf).pvalue > MIN_P


def test_mixup_equals_torchvision_v2_mixup(monkeypatch):
    images, labels = torch.randn(32, 3, 16, 16), torch.randint(0, 10, (32,))
    mixed, targets = FlipCropMixup(alpha=0.2).mix(images, labels, 10, torch.Generator().manual_seed(8))
    lam = beta_draw(0.2, torch.Generator().manual_seed(8), torch.device("cpu"))
    reference = v2.MixUp(alpha=0.2, num_classes=10)
    monkeypatch.setattr(reference._dist, "sample", lambda *a: torch.tensor(lam))
    want_images, want_targets = reference(images.clone(), labels)
    assert torch.equal(mixed, want_images) and torch.equal(targets, want_targets)
    assert not torch.equal(mixed, images) and torch.allclose(targets.sum(1), torch.ones(32))


def test_cutmix_equals_torchvision_v2_cutmix_and_its_box_is_uniform(monkeypatch):
    images, labels = torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,))
    mixed, targets = FlipCropCutMix(alpha=1.0).mix(images, labels, 10, torch.Generator().manual_seed(9))
    g = torch.Generator().manual_seed(9)
    lam = beta_draw(1.0, g, torch.device("cpu"))
    r_x, r_y = int(torch.randint(32, (), generator=g)), int(torch.randint(32, (), generator=g))
    reference = v2.CutMix(alpha=1.0, num_classes=10)
    monkeypatch.setattr(reference._dist, "sample", lambda *a: torch.tensor(lam))
    with monkeypatch.context() as m:
        scripted(m, [(32, r_x), (32, r_y)], [])
        want_images, want_targets = reference(images.clone(), labels)
    assert torch.equal(mixed, want_images) and torch.equal(targets, want_targets)
    # The box's centre is uniform over the image (torchvision draws it with randint over the width).
    g = torch.Generator().manual_seed(10)
    centres = [int(torch.randint(32, (), generator=g)) for _ in range(3200)]
    assert chisquare(torch.bincount(torch.tensor(centres), minlength=32)).pvalue > MIN_P


def test_the_loss_with_mixed_targets_is_the_lambda_weighted_ce_of_both_labels():
    torch.manual_seed(0)
    logits, teacher, labels = torch.randn(16, 10), torch.randn(16, 10), torch.randint(0, 10, (16,))
    lam = 0.3
    soft = lam * F.one_hot(labels, 10).float() + (1 - lam) * F.one_hot(labels.roll(1, 0), 10).float()
    parts = kd_loss(logits, teacher, soft, alpha=0.5, temperature=4.0)
    by_hand = lam * F.cross_entropy(logits, labels) + (1 - lam) * F.cross_entropy(logits, labels.roll(1, 0))
    torch.testing.assert_close(parts.ce, by_hand)
    torch.testing.assert_close(parts.kd, kd_loss(logits, teacher, labels, alpha=0.5).kd)  # the KD term is unchanged


@pytest.mark.parametrize("aug", ["fcmixup", "fccutmix"])
def test_the_teacher_and_the_student_see_the_same_mixed_batch(aug):
    cfg = compose_config([*FAST, f"aug={aug}", "trainer.batch_size=32"])
    splits, device = synthetic_splits(), torch.device("cpu")
    mixing = instantiate(cfg.aug)
    first = next(iter(make_batches(cfg, splits, "train", mixing, device, shuffle=True)))
    plain = next(iter(make_batches(cfg, splits, "train", instantiate(compose_config([*FAST, "aug=fc",
                                   "trainer.batch_size=32"]).aug), device, shuffle=True)))
    assert first[1].shape == (32, 10) and first[1].dtype == torch.float32  # soft targets
    assert torch.equal(first[2], plain[2]) and not torch.equal(first[0], plain[0])  # same images, mixed
    # train_one_epoch hands that very tensor to the teacher and to each student (kd/training/engine.py): record it.
    seen = []
    from kd.config import TeacherView
    from kd.training.engine import Cell, train_one_epoch
    from kd.training.students import LoopUpdate, make_student
    from kd.training.teacher_views import Teaching, TeacherViews
    cell = Cell(cfg, Path("unused"), {}, lambda row, step: None, "", "")
    update = LoopUpdate([make_student(cell, 10, device)])
    student_forward = update.students[0].forward
    update.students[0].forward = lambda x: (seen.append(("student", x)), student_forward(x))[1]
    teacher = lambda x, idx: (seen.append(("teacher", x)), Outputs(torch.zeros(x.shape[0], 10)))[1]  # noqa: E731
    batches = make_batches(cfg, splits, "train", mixing, device, shuffle=True)
    teaching = Teaching({TeacherView.same: teacher}, TeacherViews(batches, 0, device), 32, device)
    train_one_epoch(update, batches, teaching, lambda: torch.autocast("cpu", enabled=False), 0, set())
    assert seen[0][0] == "teacher" and seen[1][0] == "student" and seen[0][1] is seen[1][1]
    assert torch.equal(seen[0][1], first[0])


@pytest.mark.parametrize("aug", NEW)
def test_the_dataloader_reference_pipeline_runs_each_new_option(aug):
    cfg = compose_config([*FAST, f"aug={aug}", "trainer.pipeline=dataloader", "trainer.num_workers=0",
                          "trainer.batch_size=32"])
    images, labels, _ = next(iter(make_batches(cfg, synthetic_splits(size=32), "train", instantiate(cfg.aug),
                                               torch.device("cpu"), shuffle=True)))
    assert images.shape == (32, 3, 32, 32) and labels.shape[0] == 32


@pytest.mark.slow
def test_the_ladder_runs_as_one_grid_and_the_table_shows_every_rung(tmp_path):
    sweep = tmp_path / "sweep"
    augs = ["none", "fc", "fcra", *NEW]
    done = run_cli(["-m", *FAST, "alpha=0.5", "teacher=resnet8", f"aug={','.join(augs)}", f"hydra.sweep.dir={sweep}"],
                   cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line.split("|")[1].strip() for line in done.stdout.splitlines() if line.startswith("| ")]
    assert rows[1:] == augs + [f"Gains ({a} - none)" for a in augs[1:]]  # the ladder, then each rung's gain
    results = [json.loads(p.read_text()) for p in sweep.glob("*/results.json")]
    assert sorted(r["aug"] for r in results) == sorted(augs) and all(r["status"] == "completed" for r in results)
