"""A sweep dir may only grow: cells named by their overrides, extension runs only the new cells, and a
rerun that would change the sweep is refused before a byte is written."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FAST, cell_dir, compose_config, run_cli
from kd.runs.results import RESULTS_FILE, collect_sweep
from kd.runs.sweep_dir import cell_dir_name, sweep_changes
from reliability import ONE_THREAD

GRID = [*FAST, "aug=fc", "teacher=resnet8"]


def snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    """Every file and dir under `folder`: its mtime and its bytes (b"" for a dir)."""
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, b"" if p.is_dir() else p.read_bytes())
            for p in [folder, *folder.rglob("*")]}


def multirun(tmp_path: Path, sweep: Path, *args: str) -> subprocess.CompletedProcess:
    return run_cli(["-m", *args, f"hydra.sweep.dir={sweep}"], cwd=tmp_path, env=ONE_THREAD)


def test_cells_are_named_by_their_defining_overrides():
    assert cell_dir_name(["aug=fc", "alpha=0.5"], 3) == "alpha=0.5,aug=fc"
    # Where things live or how they are tracked does not name a cell; a path's / would nest dirs.
    assert cell_dir_name(["alpha=0", "logger=none", "data.root=/d", "teacher.checkpoint=/t/x.pth"], 0) == \
        "alpha=0,teacher.checkpoint=%2Ft%2Fx.pth"
    assert cell_dir_name([], 4) == "4"


@pytest.mark.slow
def test_a_boolean_names_its_cell_as_typed_and_an_older_sweeps_dir_is_kept(tmp_path):
    """Hydra's sweeper rewrites `true` as `True`; the dir says what the user typed. A sweep named before that
    keeps its `True` dirs: a rerun finds and skips them rather than training the cells again beside them."""
    sweep = tmp_path / "sweep"
    args = [*FAST, "alpha=0", "aug=none,fc", "trainer.graph_capture=true"]
    assert multirun(tmp_path, sweep, *args).returncode == 0
    named = sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert len(named) == 2 and all(name.endswith(",trainer.graph_capture=true") for name in named), named
    older = sweep / named[0].replace("=true", "=True")
    (sweep / named[0]).rename(older)
    rerun = multirun(tmp_path, sweep, *args)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert not (sweep / named[0]).exists()
    assert (older / RESULTS_FILE).is_file() and len(collect_sweep(sweep)) == 2


@pytest.mark.slow
def test_a_refused_rerun_changes_nothing_and_names_what_differs(tmp_path):
    sweep = tmp_path / "sweep"
    done = multirun(tmp_path, sweep, *GRID, "alpha=0,0.5")
    assert done.returncode == 0, done.stderr[-3000:]
    before = snapshot(sweep)
    refusals = {
        ("alpha=0,0.5", "trainer.epochs=2"): "trainer.epochs: sweep has [1], this run asks [2]",
        ("alpha=0.5",): "alpha: sweep has [0, 0.5], this run asks [0.5]",
        ("alpha=0,0.5", "seed=1"): "seed: sweep has (not set), this run asks [1]",
    }
    for extra, message in refusals.items():
        args = [a for a in GRID if a.split("=")[0] not in {e.split("=")[0] for e in extra}]
        refused = multirun(tmp_path, sweep, *args, *extra)
        assert refused.returncode == 1, refused.stdout[-2000:]
        assert f"holds a sweep that this run would change, not extend:\n  {message}\n" in refused.stderr, \
            refused.stderr
        assert "Nothing was written" in refused.stderr and "use a new hydra.sweep.dir" in refused.stderr
        assert snapshot(sweep) == before, extra  # multirun.yaml, every cell's .hydra/, results, logs


def test_a_changed_setting_that_is_not_an_override_is_named():
    old = compose_config(["alpha=0.5"])
    new = compose_config(["alpha=0.5", "optim.optimizer.lr=0.2"])
    for cfg in (old, new):  # what Hydra's multirun.yaml holds besides the config: the run's overrides
        cfg._set_flag("struct", False)
        cfg.hydra = {"overrides": {"task": ["alpha=0,0.5"]}, "sweep": {"subdir": "${hydra.job.num}"}}
    assert sweep_changes(old, old) == []
    assert sweep_changes(old, new) == ["optim.optimizer.lr: sweep has 0.05, this run has 0.2"]


@pytest.mark.slow
def test_extending_a_grid_runs_only_the_new_cells_and_leaves_the_old_ones_untouched(tmp_path):
    sweep = tmp_path / "sweep"
    done = multirun(tmp_path, sweep, *GRID, "alpha=0,0.5")
    assert done.returncode == 0, done.stderr[-3000:]
    old = {alpha: cell_dir(sweep, GRID, alpha) for alpha in ("alpha=0", "alpha=0.5")}
    before = {alpha: snapshot(job) for alpha, job in old.items()}

    extended = multirun(tmp_path, sweep, *GRID, "alpha=0,0.5,1")
    assert extended.returncode == 0, extended.stderr[-3000:]
    assert (extended.stdout + extended.stderr).count("already completed with this config (skipped") == 2
    assert {alpha: snapshot(job) for alpha, job in old.items()} == before  # not even .hydra/ or the log
    assert (cell_dir(sweep, GRID, "alpha=1") / RESULTS_FILE).is_file()
    assert sorted(r["alpha"] for r in collect_sweep(sweep)) == [0.0, 0.5, 1.0]
    report = subprocess.run([sys.executable, "-m", "kd.report", str(sweep)], capture_output=True, text=True)
    assert report.returncode == 0, report.stderr
    assert "| aug \\ alpha | 0 " in report.stdout and "| 0.5 " in report.stdout and "| 1 " in report.stdout


@pytest.mark.slow
def test_the_report_of_a_partial_sweep_lists_the_cells_not_started(tmp_path):
    sweep = tmp_path / "sweep"
    done = multirun(tmp_path, sweep, *GRID, "alpha=0,0.5")
    assert done.returncode == 0, done.stderr[-3000:]
    # As a detached SLURM grid is while queued: its multirun.yaml, one finished cell, the other without a dir.
    shutil.rmtree(cell_dir(sweep, GRID, "alpha=0.5"))
    report = subprocess.run([sys.executable, "-m", "kd.report", str(sweep)], capture_output=True, text=True)
    assert report.returncode == 0, report.stderr
    (row,) = [line for line in report.stdout.splitlines() if line.startswith("| fc ")]
    assert row.split("|")[3].strip() == "missing" and row.split("|")[2].strip().rstrip(" *").replace(".", "").isdigit()
