"""Issue 23: the diagnostics against independent computations, the teacher's three views, CutMixPick, and a pack
over views that trains each cell as alone."""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from scipy.special import log_softmax, softmax

from conftest import FAST, compose_config
from reliability import TIMING_KEYS
from test_augment import synthetic_splits
from kd.data.augment_ladder import FlipCropCutMixPick, teacher_entropy
from kd.runs.checks import check_cell
from kd.config import TeacherView
from kd.training.diagnostics import TeacherViewStats, fidelity_sums
from kd.training.engine import Cell, fit, make_batches
from kd.models.resnet import resnet8
from kd.data.pipeline import Normalize
from kd.training.teacher_views import TeacherViews

CPU = torch.device("cpu")


def fixed_logits(n: int, classes: int = 10, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(scale=3.0, size=(n, classes))


@pytest.mark.parametrize("soft", [False, True])
def test_teacher_view_stats_match_their_definitions(soft: bool):
    """Three full batches of 8 and a last one of 5 (left out of T. stddev, counted in the rest)."""
    logits = fixed_logits(29)
    rng = np.random.default_rng(1)
    hard = rng.integers(0, 10, 29)
    labels = np.eye(10)[hard] * 0.7 + np.eye(10)[np.roll(hard, 1)] * 0.3 if soft else hard
    stats = TeacherViewStats(CPU, batch_size=8)
    for start in range(0, 29, 8):
        stats.update(torch.tensor(logits[start:start + 8], dtype=torch.float32),
                     torch.tensor(labels[start:start + 8], dtype=torch.float32 if soft else torch.long))
    got = stats.read()
    p = softmax(logits, axis=1)
    target = labels.argmax(1) if soft else labels
    p_true = (p * labels).sum(1) if soft else p[np.arange(29), labels]
    chunk_means = np.stack([p[s:s + 8].mean(0) for s in (0, 8, 16)])  # Wang et al.: per chunk, then std per class
    assert got["diag/teacher_top1"] == pytest.approx(100.0 * np.mean(p.argmax(1) == target), abs=1e-9)
    assert got["diag/teacher_p_true"] == pytest.approx(p_true.mean(), rel=1e-6)
    assert got["diag/t_stddev"] == pytest.approx(chunk_means.std(axis=0, ddof=1).mean(), rel=1e-5)


def test_fidelity_sums_match_kl_and_agreement():
    s, t = fixed_logits(50, seed=2), fixed_logits(50, seed=3)
    t[:10] = s[:10] + 0.01  # some agreement for sure
    agree, kl = fidelity_sums(torch.tensor(s), torch.tensor(t)).tolist()
    pt = softmax(t, axis=1)
    expected_kl = (pt * (log_softmax(t, axis=1) - log_softmax(s, axis=1))).sum()
    assert agree == np.sum(s.argmax(1) == t.argmax(1)) and agree >= 10
    assert kl == pytest.approx(expected_kl, rel=1e-5)


def test_teacher_entropy_is_the_softmax_entropy():
    logits = fixed_logits(20, seed=4)
    p = softmax(logits, axis=1)
    np.testing.assert_allclose(teacher_entropy(torch.tensor(logits)).numpy(), -(p * np.log(p)).sum(1), rtol=1e-5)


def view_setup(aug: str, seed: int = 0):
    cfg = compose_config([*FAST, f"aug={aug}", "trainer.batch_size=32", f"seed={seed}"])
    splits = synthetic_splits()
    batches = make_batches(cfg, splits, "train", instantiate(cfg.aug), CPU, shuffle=True)
    return cfg, splits, batches


@pytest.mark.parametrize("aug", ["fc", "fccutmix"])
def test_the_three_views(aug: str):
    cfg, splits, batches = view_setup(aug)
    images, labels, idx = next(iter(batches))
    views = TeacherViews(batches, seed=0, device=CPU)
    views.begin_epoch(0)
    same = views.inputs(TeacherView.same, images, labels, idx)
    assert same[0] is images and same[1] is labels  # the student's very tensors
    clean, clean_labels, _ = views.inputs(TeacherView.clean, images, labels, idx)
    normalize = Normalize(splits.mean, splits.std, CPU, cfg.trainer.channels_last)
    assert torch.equal(clean, normalize(splits.train_images[idx])) and torch.equal(clean_labels, splits.train_labels[idx])
    first, first_labels, _ = views.inputs(TeacherView.independent, images, labels, idx)
    assert first.shape == images.shape and not torch.equal(first, images)  # its own draw of the same images
    assert first_labels.shape == labels.shape
    if aug == "fccutmix":  # its own mix: its own box, so its own label shares (same partner image)
        assert not torch.equal(first_labels, labels)
        assert torch.allclose(first_labels.sum(1), torch.ones(len(idx)))
    again = TeacherViews(batches, seed=0, device=CPU)
    again.begin_epoch(0)
    assert torch.equal(again.inputs(TeacherView.independent, images, labels, idx)[0], first)  # reproducible by seed
    other = TeacherViews(batches, seed=1, device=CPU)
    other.begin_epoch(0)
    assert not torch.equal(other.inputs(TeacherView.independent, images, labels, idx)[0], first)
    again.begin_epoch(1)
    assert not torch.equal(again.inputs(TeacherView.independent, images, labels, idx)[0], first)  # a new epoch draws anew


def test_drawing_the_independent_view_leaves_the_students_stream_alone():
    _, _, batches = view_setup("fcra")
    alone = [b[0] for b in itertools.islice(iter(batches), 3)]
    _, _, batches = view_setup("fcra")
    views = TeacherViews(batches, seed=0, device=CPU)
    views.begin_epoch(0)
    beside = []
    for images, labels, idx in itertools.islice(iter(batches), 3):
        views.inputs(TeacherView.independent, images, labels, idx)
        beside.append(images)
    assert all(torch.equal(a, b) for a, b in zip(alone, beside))


def test_cutmixpick_keeps_the_pool_images_the_teacher_is_least_sure_of():
    cfg, splits, batches = view_setup("fccutmixpick")
    aug = batches.aug
    assert isinstance(aug, FlipCropCutMixPick) and aug.runs == 2
    teacher = resnet8(num_classes=10).eval()
    pools = []

    def scorer(pool: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            scores = teacher_entropy(teacher(pool))
        pools.append((pool, scores))
        return scores

    batches.scorer = scorer
    generator_state = batches.generator.get_state()
    images, labels, idx = next(iter(batches))
    (pool, scores), = pools
    assert pool.shape[0] == 2 * 32 and images.shape[0] == 32
    # Their definition: the batch's worth of pooled images with the highest teacher entropy
    order = np.argsort(-scores.numpy(), kind="stable")[:32]
    assert torch.equal(images, pool[order])
    assert scores[order].min() >= np.sort(scores.numpy())[-32]
    # Replay the draws by hand: the order, one fc batch, then two CutMix draws of it
    batches.generator.set_state(generator_state)
    order_all = torch.randperm(len(splits.train_labels), generator=batches.generator)[:32]
    base = batches.normalize(aug(batches.images[order_all], batches.generator))
    draws = [aug.mix(base, batches.labels[order_all], 10, batches.generator) for _ in range(2)]
    pool_labels = torch.cat([y for _, y in draws])
    assert torch.equal(torch.cat([x for x, _ in draws]), pool)
    assert torch.equal(labels, pool_labels[order]) and labels.shape == (32, 10)
    assert torch.equal(idx, order_all.repeat(2)[order])  # each picked image's own index


def fit_cells(cfgs, splits, root: Path, teacher) -> list[dict]:
    cells = [Cell(c, root / str(i), {}, lambda row, step: None, name=str(i), stale_fix="") for i, c in enumerate(cfgs)]
    for cell in cells:
        cell.out_dir.mkdir(parents=True, exist_ok=True)
    outcomes = fit(cells, splits, CPU, teacher)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    return outcomes


def without_times(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in history]


def fit_packed_and_alone(cfgs, tmp_path: Path) -> list[dict]:
    """The pack of `cfgs` trained, each cell's results asserted to be those of the cell trained alone (times aside)."""
    splits = synthetic_splits()
    torch.manual_seed(0)
    teacher = resnet8(num_classes=10)
    packed = fit_cells(cfgs, splits, tmp_path / "packed", teacher)
    for i, cfg in enumerate(cfgs):
        (alone,) = fit_cells([cfg], splits, tmp_path / f"alone{i}", teacher)
        assert without_times(alone["history"]) == without_times(packed[i]["history"]), cfg.trainer.teacher_view
    return packed


@pytest.mark.parametrize("aug", ["fcra", "fccutmixpick"])
def test_a_pack_over_views_trains_each_cell_as_alone(tmp_path, aug: str):
    cfgs = [compose_config([*FAST, f"aug={aug}", "trainer.batch_size=64", f"alpha={a}",
                            f"trainer.teacher_view={v}"], out_dir=tmp_path)
            for a, v in [(0, "same"), (0.5, "same"), (0.5, "clean"), (0.5, "independent")]]
    packed = fit_packed_and_alone(cfgs, tmp_path)
    rows = [p["history"][-1] for p in packed]
    assert "diag/t_stddev" not in rows[0] and "diag/test_agreement" not in rows[0]  # alpha=0: no teacher in it
    for row in rows[1:]:
        assert 0 <= row["diag/teacher_top1"] <= 100 and 0 < row["diag/teacher_p_true"] < 1
        assert row["diag/t_stddev"] > 0 and 0 <= row["diag/test_agreement"] <= 100 and row["diag/test_kl"] >= 0
    # the teacher's numbers are its view's: three views, three sets of numbers, three trainings. The training loss
    # shows the last (the view is in its KD term); the test loss does not reliably: after one epoch from a random
    # teacher two views' students agreed on it to float32's last digit on an AVX2 CPU.
    assert len({r["diag/t_stddev"] for r in rows[1:]}) == 3
    assert len({r["train/loss"] for r in rows[1:]}) == 3


def resumes_as_uninterrupted(tmp_path: Path, overrides: list[str], epochs: int) -> bool:
    """Whether a cell stopped after its first epoch and resumed ends with the history of one trained straight."""
    cfgs = {e: compose_config([*overrides, f"trainer.epochs={e}"], out_dir=tmp_path) for e in (1, epochs)}
    splits = synthetic_splits()
    torch.manual_seed(0)
    teacher = resnet8(num_classes=10)
    (straight,) = fit_cells([cfgs[epochs]], splits, tmp_path / "straight", teacher)
    fit_cells([cfgs[1]], splits, tmp_path / "resumed", teacher)  # stopped after epoch 1, its checkpoint kept
    (resumed,) = fit_cells([cfgs[epochs]], splits, tmp_path / "resumed", teacher)
    return without_times(resumed["history"]) == without_times(straight["history"])


def test_a_resumed_independent_view_cell_continues_its_uninterrupted_run(tmp_path):
    """The independent view's generator is re-seeded per epoch: a resume needs no state of it to be exact."""
    assert resumes_as_uninterrupted(tmp_path, [*FAST, "aug=fcra", "alpha=0.5", "trainer.teacher_view=independent"], 2)


@pytest.mark.parametrize("overrides, says", [
    (["trainer.teacher_view=clean", "trainer.pipeline=dataloader"], "trainer.teacher_view=clean draws"),
    (["aug=fccutmixpick", "trainer.pipeline=dataloader"], "aug=fccutmixpick picks"),
    (["aug=fccutmixpick", "aug.runs=1"], "aug.runs=1"),
])
def test_settings_the_views_and_the_pick_cannot_run_are_refused(overrides, says, tmp_path):
    with pytest.raises(Exception, match=says):  # a ValueError; Hydra wraps the aug's own in InstantiationException
        cfg = compose_config([*FAST, *overrides], out_dir=tmp_path)
        check_cell(cfg)
        instantiate(cfg.aug)


# ---- kd-report: the diagnostics table, the figure, the fourth claim ----

REPORT_AUGS = {"none": "kd.data.augment.NoAugment", "fc": "kd.data.augment.FlipCrop", "fcra": "kd.data.augment.FlipCropRandAugment",
               "fccutmix": "kd.data.augment_ladder.FlipCropCutMix"}
SEED_NOISE = {0: -0.002, 1: 0.001, 2: 0.0015}


def diag_sweep(root: Path, loss_of, views=("same", "independent")) -> Path:
    """Students at alpha 0.5 per (aug, view, seed): T. stddev rising along REPORT_AUGS, test loss = loss_of(rank)."""
    from kd.runs.results import write_results

    sweep, job = root / "sweep", 0
    for rank, (aug, target) in enumerate(REPORT_AUGS.items()):
        for view in views:
            for seed in (0, 1, 2):
                t_stddev = 0.004 + 0.001 * rank + 0.0001 * seed
                loss = loss_of(rank) + SEED_NOISE[seed]
                history = [{"epoch": e, "test/top1": 90.0 - rank, "test/loss": loss + 0.1 * (2 - e),
                            "diag/t_stddev": t_stddev + 0.0002 * (e - 1.5), "diag/teacher_top1": 99.0 - 3 * rank,
                            "diag/teacher_p_true": 0.9 - 0.05 * rank, "diag/test_agreement": 95.0 - rank,
                            "diag/test_kl": 0.1 + 0.01 * rank} for e in (1, 2)]
                job_dir = sweep / str(job)
                job += 1
                job_dir.mkdir(parents=True)
                (job_dir / ".hydra").mkdir()
                (job_dir / ".hydra" / "overrides.yaml").write_text(
                    f"- aug={aug}\n- trainer.teacher_view={view}\n- seed={seed}\n")
                write_results(job_dir, {
                    "stage": "student", "status": "completed", "aug": aug, "alpha": 0.5, "seed": seed,
                    "teacher_view": view, "model": "resnet8", "teacher": "resnet20", "data": "digits", "epochs": 2,
                    "temperature": 4.0, "final_top1": 90.0 - rank + seed * 0.1, "best_top1": 90.0,
                    "history": history, "teacher_top1": 96.0,
                    "config": {"alpha": 0.5, "aug": {"_target_": target}, "trainer": {"teacher_view": view}}})
    return sweep


def test_the_diagnostics_table_figure_and_fourth_claim(tmp_path):
    from kd.report.claims import write_claims
    from kd.report.cli import load_sweep, main
    from kd.report.stats import estimate

    sweep = diag_sweep(tmp_path / "agrees", lambda rank: 1.0 + 0.2 * rank)
    assert main([str(sweep)]) == 0
    text = (sweep / "diagnostics.md").read_text()
    rows = {tuple(c.strip() for c in line.strip("|").split("|")[:3]): [c.strip() for c in line.strip("|").split("|")]
            for line in text.splitlines() if line.startswith("| ") and not line.startswith("| aug ")}
    assert len(rows) == 8  # 4 augs x 2 views, alpha 0.5
    fcra = rows["fcra", "independent", "0.5"]
    # T. stddev: each seed's mean over its epochs, then the interval over seeds
    t = estimate([0.004 + 0.002 + 0.0001 * s for s in (0, 1, 2)])
    assert fcra[3] == f"{t.mean:.5f} ± {t.half_width:.5f}"
    loss = estimate([1.4 + SEED_NOISE[s] for s in (0, 1, 2)])  # the final epoch's test loss
    assert fcra[8] == f"{loss.mean:.3f} ± {loss.half_width:.3f}"
    assert fcra[10].startswith("-2.00")  # gain vs none at the same view, paired by seed: exactly -2 (88 - 90)
    assert rows["none", "same", "0.5"][10] == "-"
    assert (sweep / "tstddev_vs_test_loss.png").stat().st_size > 10_000 and (sweep / "diagnostics.csv").is_file()
    assert "[diagnostics.md](diagnostics.md)" in (sweep / "gains.md").read_text()
    claims = write_claims(load_sweep(sweep), "final_top1", sweep).read_text()
    fourth = [line for line in claims.splitlines() if line.startswith("### 4.")]
    assert fourth and all(line.endswith("**supported**") for line in fourth)  # one per view (each its own slice)
    assert "ρ(T. stddev, S. test loss) = +1.00, one-sided p = 0.042" in claims  # 1/4!: the exact test's floor

    reversed_sweep = diag_sweep(tmp_path / "reverses", lambda rank: 2.0 - 0.2 * rank, views=("same",))
    claims = write_claims(load_sweep(reversed_sweep), "final_top1", reversed_sweep).read_text()
    assert "ρ(T. stddev, S. test loss) = -1.00" in claims
    assert next(line for line in claims.splitlines() if line.startswith("## 4.")).endswith("**contradicted**")


def test_the_default_view_leaves_a_cells_identity_as_older_kd_wrote_it(tmp_path):
    """A sweep begun before trainer.teacher_view existed still resumes and skips its finished cells."""
    from kd.config import defining_config

    same = defining_config(compose_config([*FAST], out_dir=tmp_path))
    assert "teacher_view" not in same["trainer"]
    other = defining_config(compose_config([*FAST, "trainer.teacher_view=clean"], out_dir=tmp_path))
    assert other["trainer"]["teacher_view"] == "clean" and other != same


def test_the_tstddev_figure_names_each_aug_once_and_keeps_coinciding_points_visible(tmp_path):
    from kd.report.cli import load_sweep
    from kd.report.diagnostics import plot_tstddev

    sweep = diag_sweep(tmp_path / "s", lambda rank: 1.0 + 0.2 * rank)
    (ax,) = plot_tstddev(load_sweep(sweep), "final_top1", "").axes
    names = [t.get_text() for t in ax.texts]
    assert sorted(names) == sorted(set(names)) and len(names) == 4  # two views: each aug level labelled once
    assert all(line.get_fillstyle() == "none" for line in ax.lines)  # hollow: a point under another shows
