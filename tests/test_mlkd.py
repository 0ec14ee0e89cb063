"""MLKD against its authors: its loss and gradients on both views in float64 equal a reference written here from
their formulas and the numbers recorded from their code (tests/fixtures/README.md), its YAMLs are their recipes,
its second view is the same images drawn from a generator of its own, and what it cannot run with is refused."""
from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from conftest import FAST, TRAIN_SCRIPT, cell_dir, compose_config, run_cli
from kd.runs.results import RESULTS_FILE, read_results
from reliability import ONE_THREAD, kill_after_checkpoint, metrics, same_weights
from kd.data.augment import FlipCrop, NoAugment
from kd.data.pipeline import DevicePipeline, Normalize
from kd.distillers.base import Outputs
from kd.distillers.mlkd import MLKD
from kd.runs.checks import check_cell
from kd.training.second_views import SecondViews

FIXTURE = Path(__file__).parent / "fixtures" / "mlkd_references.json"
CELL = [*FAST, "teacher=resnet8", "trainer.epochs=2", "aug=fc", "loss=mlkd"]
RECIPE = {"temperatures": [4.0, 3.0, 5.0, 2.0, 6.0], "strong_temperatures": [4.0, 3.0, 5.0],
          "unmasked_temperatures": [2.0, 6.0]}


@functools.cache
def recorded() -> dict:
    return json.loads(FIXTURE.read_text())


def two_views() -> tuple[torch.Tensor, ...]:
    """(weak student, weak teacher, strong student, strong teacher logits, targets) as recorded: float64."""
    spec = recorded()["inputs"]
    g = torch.Generator().manual_seed(spec["seed"])
    logits = [spec["spread"] * torch.randn(spec["batch"], spec["classes"], generator=g, dtype=torch.float64)
              for _ in range(4)]
    return (*logits, torch.randint(0, spec["classes"], (spec["batch"],), generator=g))


# Their formulas (KD_ours.py / the LS fork's MLKD.py), written out here: kd_loss, cc_loss, bc_loss, the masks.
def their_kd(s, t, T, stand):
    if stand:
        s, t = ((z - z.mean(-1, keepdim=True)) / (1e-7 + z.std(-1, keepdim=True)) for z in (s, t))
    return F.kl_div(F.log_softmax(s / T, 1), F.softmax(t / T, 1), reduction="none").sum(1).mean() * T**2


def their_cc(s, t, T):
    p_s, p_t = F.softmax(s / T, 1), F.softmax(t / T, 1)
    return ((p_t.t() @ p_t - p_s.t() @ p_s) ** 2).sum() / s.shape[1]


def their_bc(s, t, T):
    p_s, p_t = F.softmax(s / T, 1), F.softmax(t / T, 1)
    return ((p_t @ p_t.t() - p_s @ p_s.t()) ** 2).sum() / s.shape[0]


def their_loss(sw, tw, ss, ts, y, base_t: float, kd_weight: float, stand: bool) -> torch.Tensor:
    p = F.softmax(tw, 1)
    conf = p.max(1).values
    mask = (conf <= float(np.percentile(conf.numpy(), 50))).double()
    class_conf = p.sum(0)
    class_mask = (class_conf <= float(np.percentile(class_conf.numpy(), 50))).double()
    temps = [base_t, 3.0, 5.0, 2.0, 6.0]
    ce = 0.1 * (F.cross_entropy(sw, y) + F.cross_entropy(ss, y))
    kd_weak = sum(kd_weight * (their_kd(sw, tw, T, stand) * mask).mean() for T in temps)
    kd_strong = (sum(kd_weight * their_kd(ss, ts, T, stand) for T in temps[:3])
                 + sum(kd_weight * their_kd(sw, tw, T, stand) for T in temps[3:]))
    cc = sum(kd_weight * (their_cc(sw, tw, T) * class_mask).mean() for T in temps)
    bc = sum(kd_weight * (their_bc(sw, tw, T) * mask).mean() for T in temps)
    return ce + kd_weak + kd_strong + cc + bc  # their strong cc and bc are computed but never added


def kd_loss(distiller: MLKD, alpha: float, sw, tw, ss, ts, y) -> torch.Tensor:
    student = Outputs(sw, second=Outputs(ss))
    return distiller(student, Outputs(tw, second=Outputs(ts)), y, alpha).total


@pytest.mark.parametrize("case, overrides, base_t, kd_weight, stand", [
    ("mlkd", ["loss=mlkd"], 4.0, 0.9, False),
    ("mlkd_ls", ["loss=mlkd_ls"], 2.0, 9.0, True),
])
def test_the_loss_on_both_views_is_the_authors_with_its_gradients(case, overrides, base_t, kd_weight, stand):
    distiller = instantiate(compose_config([*overrides, "alpha=0.9"]).loss)  # the YAML's recipe, as a run builds it
    sw, tw, ss, ts, y = two_views()
    sw.requires_grad_(True)
    ss.requires_grad_(True)
    ours = kd_loss(distiller, 0.9, sw, tw, ss, ts, y)
    ours_grads = torch.autograd.grad(ours, (sw, ss))
    reference = their_loss(sw, tw, ss, ts, y, base_t, kd_weight, stand)
    reference_grads = torch.autograd.grad(reference, (sw, ss))
    theirs = recorded()["cases"][case]
    assert ours.dtype == torch.float64
    for value, grads in ((reference, reference_grads),
                         (torch.tensor(theirs["loss"], dtype=torch.float64),
                          [torch.tensor(theirs[k], dtype=torch.float64) for k in ("grad_weak", "grad_strong")])):
        torch.testing.assert_close(ours.detach(), value.detach(), rtol=1e-10, atol=1e-12)
        for a, b in zip(ours_grads, grads):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_the_yamls_are_the_authors_recipes_and_log_the_three_levels():
    mlkd = instantiate(compose_config(["loss=mlkd"]).loss)
    assert {k: getattr(mlkd, k) for k in RECIPE} == RECIPE and mlkd.percentile == 50.0 and not mlkd.standardize
    assert type(mlkd.second_view).__name__ == "FlipCropRandAugment" and mlkd.second_view.num_ops == 2
    ls = instantiate(compose_config(["loss=mlkd_ls"]).loss)
    assert ls.temperatures == [2.0, 3.0, 5.0, 2.0, 6.0] and ls.standardize and set(ls.weights.values()) == {10.0}
    swept = instantiate(compose_config(["loss=mlkd", "aug@loss.strong_view=fcaa"]).loss)  # the view is an axis
    assert type(swept.second_view).__name__ == "FlipCropAutoAugment"
    sw, tw, ss, ts, y = two_views()
    parts = mlkd.term(Outputs(sw, second=Outputs(ss)), Outputs(tw, second=Outputs(ts)), y, 0)
    assert set(parts) == {"kd", "instance", "batch", "class"} and all(v > 0 for v in parts.values())
    with pytest.raises(ValueError, match="strong view"):
        mlkd.term(Outputs(sw), Outputs(tw), y, 0)


def test_alpha_zero_is_plain_cross_entropy_on_the_batch():
    sw, tw, ss, ts, y = two_views()
    mlkd = MLKD(NoAugment(), **RECIPE)
    torch.testing.assert_close(mlkd(Outputs(sw), None, y, 0.0).total, F.cross_entropy(sw, y), rtol=0, atol=0)


def pipeline(n: int = 12) -> DevicePipeline:
    images = torch.arange(n * 3 * 8 * 8, dtype=torch.int64).remainder(256).to(torch.uint8).reshape(n, 3, 8, 8)
    device = torch.device("cpu")
    return DevicePipeline(images, torch.arange(n) % 3, FlipCrop(), Normalize((0.5,) * 3, (0.25,) * 3, device, False),
                          4, torch.Generator().manual_seed(0), True, 3)


def test_the_second_view_is_the_batchs_images_from_a_generator_of_its_own():
    batches = pipeline()
    views = SecondViews(batches, seed=0, device=torch.device("cpu"))
    views.begin_epoch(0)
    idx = torch.tensor([5, 1, 7])
    torch.testing.assert_close(views.images(NoAugment(), idx), batches.clean(idx)[0], rtol=0, atol=0)
    stream = batches.generator.get_state()
    first = views.images(FlipCrop(padding=2), idx)
    assert torch.equal(batches.generator.get_state(), stream)  # the student's stream is untouched
    again = SecondViews(batches, seed=0, device=torch.device("cpu"))
    again.begin_epoch(0)
    again.images(NoAugment(), idx)  # another augmentation's draws do not move this one's
    assert torch.equal(again.images(FlipCrop(padding=2), idx), first)
    again.begin_epoch(1)
    assert not torch.equal(again.images(FlipCrop(padding=2), idx), first)


@pytest.mark.parametrize("override, message", [
    ("trainer.pipeline=dataloader", "trainer.pipeline=dataloader"),
    ("trainer.teacher_view=independent", "teacher_view=independent"),
    ("aug@loss.strong_view=fcmixup", "mixes or picks"),
])
def test_what_a_second_view_cannot_run_with_is_refused_before_any_work(override, message, tmp_path):
    cfg = compose_config(["data=digits", "loss=mlkd", "alpha=0.9", override], tmp_path)
    with pytest.raises(ValueError, match=message):
        check_cell(cfg)


def run(tmp_path: Path, name: str, args: list[str]) -> Path:
    out = tmp_path / name
    done = run_cli([*args, f"hydra.{'sweep' if '-m' in args else 'run'}.dir={out}"], cwd=tmp_path, env=ONE_THREAD)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return out


@pytest.mark.slow
def test_a_pack_of_mlkd_cells_over_alphas_and_strong_views_is_bit_identical_to_each_alone(tmp_path):
    grid = [*CELL, "alpha=0.5,0.9", "aug@loss.strong_view=fcra,fcta"]  # one pack: two views, each drawn once
    packed = run(tmp_path, "packed", ["-m", *grid])
    alone = run(tmp_path, "alone", ["-m", *grid, "hydra/launcher=basic"])
    finals = set()
    for alpha in ("0.5", "0.9"):
        for view in ("fcra", "fcta"):
            job = cell_dir(packed, grid, f"alpha={alpha}", f"aug@loss.strong_view={view}")
            result = read_results(job / RESULTS_FILE)
            assert result["status"] == "completed" and result["history"][-1]["train/instance"] > 0
            assert metrics(result) == metrics(read_results(alone / job.name / RESULTS_FILE)), (alpha, view)
            assert same_weights(job / "checkpoint.pt", alone / job.name / "checkpoint.pt"), (alpha, view)
            finals.add(result["history"][-1]["train/kd"])
    assert len(finals) == 4  # the strong view is an axis: each view its own draws


@pytest.mark.chaos
def test_an_mlkd_cell_killed_after_an_epoch_resumes_to_the_uninterrupted_result(tmp_path):
    args = [*CELL, "alpha=0.9", "trainer.epochs=3", "trainer.deterministic=true"]
    reference = run(tmp_path, "reference", args)
    killed = tmp_path / "killed"
    kill_after_checkpoint(TRAIN_SCRIPT, [*args, f"hydra.run.dir={killed}"], killed / "checkpoint.pt", 1,
                          tmp_path / "k.log", 0.05)
    assert not (killed / RESULTS_FILE).exists() or read_results(killed / RESULTS_FILE)["status"] != "completed"
    resumed = run(tmp_path, "killed", args)
    assert metrics(read_results(resumed / RESULTS_FILE)) == metrics(read_results(reference / RESULTS_FILE))
    assert same_weights(resumed / "checkpoint.pt", reference / "checkpoint.pt")
