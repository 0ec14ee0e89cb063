"""The benchmark's teacher-student pairs as a grid axis: every pair composes, and a digits grid over two pairs of
different families trains packed and is reported one table per pair, never averaged across pairs."""
from __future__ import annotations

import pytest

from conftest import CONF_DIR, FAST, compose_config, run_cli
from kd.report.cli import main as report_main
from kd.runs.results import collect_sweep
from kd.training.teacher import arch_name
from reliability import ONE_THREAD

PAIRS = sorted(p.stem for p in (CONF_DIR / "pair").glob("*.yaml"))
LOW_LR = ("mobilenetv2", "shufflev1", "shufflev2")  # the benchmark's lr 0.01 students


def test_the_eleven_pairs_are_there():
    assert len(PAIRS) == 11


@pytest.mark.parametrize("pair", PAIRS)
def test_a_pair_sets_teacher_student_and_the_benchmarks_lr(pair):
    cfg = compose_config([f"pair={pair}"], out_dir="unused")
    teacher, student = pair.split("-")
    assert arch_name(cfg.teacher.arch).replace("_", "") == teacher.replace("_", "")
    assert arch_name(cfg.model).replace("_", "") == student.replace("_", "")
    assert cfg.optim.optimizer.lr == (0.01 if student in LOW_LR else 0.05)
    assert cfg.teacher.optim.optimizer.lr == 0.05  # the teacher's own recipe is untouched


@pytest.mark.slow
def test_a_digits_grid_over_two_pairs_of_different_families_reports_one_table_per_pair(tmp_path, capsys):
    out = tmp_path / "pairs"
    done = run_cli(["-m", *FAST, "pair=vgg13-vgg8,wrn40_2-wrn16_2", "alpha=0,0.5", "aug=none,fc",
                    f"hydra.sweep.dir={out}"], cwd=tmp_path, env=ONE_THREAD)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "in 4 pack(s)" in done.stdout + done.stderr  # per pair and aug: the alphas of each train together
    assert "model vgg8: 3.92M params" in done.stdout + done.stderr
    results = collect_sweep(out)
    assert {(r["teacher"], r["model"]) for r in results} == {("vgg13", "vgg8"), ("wrn_40_2", "wrn_16_2")}
    assert all(r["status"] == "completed" for r in results)
    assert report_main([str(out)]) == 0
    printed = capsys.readouterr().out
    assert "pair=vgg13-vgg8:\n" in printed and "pair=wrn40_2-wrn16_2:\n" in printed and "(n=2)" not in printed
    assert (out / "gains.csv").read_text().startswith("pair,quantity,aug,alpha")
    assert (out / "top1_by_alpha_pair-vgg13-vgg8.png").is_file()
