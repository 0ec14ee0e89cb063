"""A short real Hydra multirun of the paper's 15 cells on digits: real training, 15 results files, the table."""
import json

import pytest

from conftest import FAST, run_cli

GRID = ["-m", "alpha=0,0.25,0.5,0.75,1.0", "aug=none,fc,fcra"]


@pytest.mark.slow
def test_the_15_cell_grid_runs_end_to_end(tmp_path, isolated_kd_home):
    sweep = tmp_path / "sweep"
    proc = run_cli([*GRID, *FAST, "trainer.epochs=2", f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/results.json"))]
    assert len(results) == 15
    assert {(r["alpha"], r["aug"]) for r in results} == {(a, g) for a in (0, 0.25, 0.5, 0.75, 1.0)
                                                          for g in ("none", "fc", "fcra")}
    for r in results:
        assert r["status"] == "completed" and r["epochs"] == 2 and len(r["history"]) == 2
        assert 0 <= r["final_top1"] <= r["best_top1"] <= 100 and r["wall_time_s"] > 0
        assert (r["teacher_top1"] is None) == (r["alpha"] == 0)  # alpha=0 never touches the teacher
        assert (r["model"], r["teacher"], r["data"], r["seed"]) == ("resnet8", "resnet20", "digits", 0)
    assert len(list((isolated_kd_home / "teachers").glob("*.pt"))) == 1  # trained once, reused 11 times
    table = proc.stdout[proc.stdout.index("Test top-1"):]
    for row in ("none", "fc", "fcra", "Gains (fcra - none)"):
        assert f"| {row}" in table
    assert "aug \\ alpha" in table and "missing" not in table and "failed" not in table


def test_the_grid_command_works_from_any_directory(tmp_path):
    elsewhere = tmp_path / "some" / "where"
    elsewhere.mkdir(parents=True)
    proc = run_cli(["-m", "alpha=0", "aug=none,fc", *FAST], cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list((elsewhere / "multirun").glob("*/*/*/results.json"))) == 2
