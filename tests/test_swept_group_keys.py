"""A key of a config group that the same multirun sweeps (kd/runs/swept_group_keys.py): `loss=ab,ft
loss.first_stage_epochs=1` trains each cell with it, and `loss=kd,ab` with it is refused before anything runs,
naming the losses that take it."""
from __future__ import annotations

import pytest

from conftest import FAST, cell_dir, run_cli
from kd.runs.overrides import cell_overrides
from kd.runs.results import RESULTS_FILE, read_results
from reliability import ONE_THREAD

GRID = [*FAST, "teacher=resnet8", "model=resnet8", "aug=fc", "alpha=0.5", "loss.first_stage_epochs=1"]


@pytest.mark.slow
def test_a_key_that_every_swept_loss_has_is_set_in_each_cell(tmp_path):
    grid = [*GRID, "loss=ab,ft"]
    out = tmp_path / "sweep"
    done = run_cli(["-m", *grid, f"hydra.sweep.dir={out}"], cwd=tmp_path, env=ONE_THREAD)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    for loss in ("ab", "ft"):
        job = cell_dir(out, grid, f"loss={loss}")  # named by the override as typed
        assert "loss.first_stage_epochs=1" in job.name
        result = read_results(job / RESULTS_FILE)
        assert result["status"] == "completed" and result["first_stage_epochs"] == 1, loss
        assert cell_overrides(job)["loss.first_stage_epochs"] == "1"  # what the report reads: the typed form


def test_a_key_that_only_some_swept_losses_have_is_refused_naming_them(tmp_path):
    out = tmp_path / "sweep"
    done = run_cli(["-m", *GRID, "loss=kd,ab,fsp", f"hydra.sweep.dir={out}"], cwd=tmp_path, env=ONE_THREAD)
    assert done.returncode != 0
    assert ("loss.first_stage_epochs is a key of loss=ab, fsp; not of loss=kd, which this multirun also sweeps"
            in done.stderr), done.stderr[-3000:]
    assert "+loss.first_stage_epochs" not in done.stderr  # not Hydra's advice to add it, which kd would refuse
    assert not out.exists()
