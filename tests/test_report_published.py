"""kd-report sets each published figure beside kd's of the same statistic: RepDistiller's are the last epoch's test
top-1, mdistiller's the best epoch's (kd/report/published.py)."""
from __future__ import annotations

import pytest

from kd.report.cli import load_sweep, main as report_main
from kd.report.published import PAIRS, PUBLISHED, Published, published_rows
from kd.report.stats import estimate
from tests.conftest import FAST, REPO, run_cli

KD = {"loss._target_": "kd.distillers.kd.KD", "alpha": 0.9}


@pytest.fixture(scope="module")
def kd_sweep(tmp_path_factory):
    """A real two-seed KD grid on digits, 8 epochs: its last and best epochs differ (45.28 and 48.61 for seed 0 here)."""
    tmp = tmp_path_factory.mktemp("published")
    sweep = tmp / "sweep"
    done = run_cli(["-m", *FAST, "teacher.epochs=8", "trainer.epochs=8", "loss=kd", "alpha=0.9", "seed=0,1", f"hydra.sweep.dir={sweep}"],
                   cwd=tmp, env={"KD_HOME": str(tmp / "home")})
    assert done.returncode == 0, done.stderr[-3000:]
    return sweep


@pytest.mark.slow
def test_each_published_figure_is_set_beside_kds_of_the_same_statistic(kd_sweep):
    students = load_sweep(kd_sweep)
    table = [Published(f"KD {stat}", "resnet20", "resnet8", 90.0, stat, "a paper", KD, data="digits")
             for stat in ("final", "best", "unstated")]
    rows = {row["method"]: row for row in published_rows(students, table)}
    final = estimate([s["final_top1"] for s in students]).format()
    best = estimate([s["best_top1"] for s in students]).format()
    assert rows["KD final"]["published"] == "90.00 (last epoch)" and rows["KD final"]["kd"] == f"{final} (last epoch)"
    assert rows["KD best"]["published"] == "90.00 (best epoch, picked on test)"
    assert rows["KD best"]["kd"] == f"{best} (best epoch, picked on test)"
    assert rows["KD unstated"]["kd"] == f"{final} (last epoch) / {best} (best epoch, picked on test)"
    assert all(row["seeds"] == "2" and "alpha=0.9" in row["kd cell"] and "seed" not in row["kd cell"]
               for row in rows.values())
    other = [p._replace(student="resnet20") for p in table]  # another pair's figures are never set beside
    assert published_rows(students, other) == []


@pytest.mark.slow
def test_kd_report_prints_no_cifar100_figure_beside_a_digits_grid(kd_sweep, capsys):
    assert report_main([str(kd_sweep)]) == 0
    assert "Published" not in capsys.readouterr().out


def test_the_published_figures_say_which_statistic_they_are():
    """RepDistiller's train_student.py: "The results reported in the paper/README is from the last epoch";
    mdistiller's trainer and the forks on it keep the best epoch's."""
    by = {(p.method, p.teacher, p.student): p for p in PUBLISHED}
    assert by["KD", "resnet32x4", "resnet8x4"][3:5] == (73.33, "final")
    assert by["DKD", "resnet32x4", "resnet8x4"][3:5] == (76.32, "best")
    assert by["KD+LS", "resnet32x4", "resnet8x4"][3:5] == (76.62, "best")
    assert all(p.statistic in ("final", "best", "unstated") and p.source for p in PUBLISHED)


def test_the_kd_figures_are_the_pair_configs_own():
    """conf/pair/ names each pair's published KD top-1 (and its DKD beta): the report's table says the same."""
    for name, (teacher, student, kd, _, beta) in PAIRS.items():
        text = (REPO / "conf" / "pair" / f"{name}.yaml").read_text()
        assert f"KD {kd:.2f} (T=4" in text and f"beta for this pair is {beta:g}:" in text, name
        assert f"override /teacher: {teacher}" in text and f"override /model: {student}" in text, name
