"""Distillers on the real loop: a grid over losses packs and trains each cell as alone, a FitNet regressor
resumes, feature distillers run on every network family, a distiller's first stage runs before the main epochs
and resumes from inside, and a user's own feature distiller is one file."""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import pytest
import torch

from conftest import FAST, REPO, TRAIN_SCRIPT, cell_dir, run_cli
from kd.report.cli import main as report_main
from kd.runs.results import RESULTS_FILE, read_results
from reliability import ONE_THREAD, TIMING_KEYS, kill_after_checkpoint, metrics, same_weights

CELL = [*FAST, "teacher=resnet8", "trainer.epochs=2", "aug=fc"]


def sweep(tmp_path: Path, name: str, args: list[str], env: dict | None = None) -> tuple[Path, str]:
    out = tmp_path / name
    done = run_cli(["-m", *args, f"hydra.sweep.dir={out}"], cwd=tmp_path, env={**ONE_THREAD, **(env or {})})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return out, done.stdout


@pytest.mark.slow
def test_a_pack_mixing_kd_dkd_and_at_trains_each_cell_exactly_as_alone(tmp_path):
    grid = [*CELL, "loss=kd,dkd,at", "alpha=0.5"]
    packed, log = sweep(tmp_path, "packed", grid)
    alone, _ = sweep(tmp_path, "alone", [*grid, "hydra/launcher=basic"])
    assert "kd: pack of 3" in log or "[aug=fc alpha=0.5 seed=0 loss=dkd]" in cell_dir(packed, grid, "loss=kd").joinpath(
        "train.log").read_text()  # one process trained all three, each named by its loss
    for loss in ("kd", "dkd", "at"):
        job = cell_dir(packed, grid, f"loss={loss}")
        result = read_results(job / RESULTS_FILE)
        assert result["status"] == "completed" and result["history"][-1]["train/kd"] > 0
        assert metrics(result) == metrics(read_results(alone / job.name / RESULTS_FILE)), loss
        assert same_weights(job / "checkpoint.pt", alone / job.name / "checkpoint.pt"), loss
    dkd = read_results(cell_dir(packed, grid, "loss=dkd") / RESULTS_FILE)["history"][0]
    assert dkd["train/tckd"] > 0 and dkd["train/nckd"] > 0  # a distiller's own parts are logged


@pytest.mark.slow
def test_a_grid_over_distillers_reports_one_table_per_loss(tmp_path, capsys):
    grid = [*FAST, "teacher=resnet8", "loss=kd,fitnet", "alpha=0,0.5", "aug=none,fc"]
    out, _ = sweep(tmp_path, "grid", grid)
    assert report_main([str(out)]) == 0
    printed = capsys.readouterr().out
    assert "loss=kd:\n" in printed and "loss=fitnet:\n" in printed  # never pooled into 2-seed intervals
    assert "(n=2)" not in printed
    gains = (out / "gains.csv").read_text().splitlines()
    assert gains[0].startswith("loss,quantity,aug,alpha")
    claims = (out / "claims.md").read_text()
    assert "## loss=kd" in claims and "## loss=fitnet" in claims


def killed_after_one_epoch(tmp_path: Path, args: list[str]) -> tuple[Path, Path, dict]:
    """The uninterrupted run's dir, and the dir and checkpoint of the same run SIGKILLed just after epoch 1."""
    reference = tmp_path / "reference"
    done = run_cli([*args, f"hydra.run.dir={reference}"], cwd=tmp_path, env=ONE_THREAD)
    assert done.returncode == 0, done.stderr[-3000:]
    killed = tmp_path / "killed"
    kill_after_checkpoint(TRAIN_SCRIPT, [*args, f"hydra.run.dir={killed}"], killed / "checkpoint.pt", 1,
                          tmp_path / "k.log", 0.05)
    assert not (killed / RESULTS_FILE).exists() or read_results(killed / RESULTS_FILE)["status"] != "completed"
    return reference, killed, torch.load(killed / "checkpoint.pt", weights_only=True)


def resumed_as_uninterrupted(tmp_path: Path, args: list[str], killed: Path, reference: Path) -> tuple[dict, dict]:
    """Rerun the killed run; it must end with the uninterrupted one's metrics. Both final distiller states."""
    resumed = run_cli([*args, f"hydra.run.dir={killed}"], cwd=tmp_path, env=ONE_THREAD)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout
    assert metrics(read_results(killed / RESULTS_FILE)) == metrics(read_results(reference / RESULTS_FILE))
    assert same_weights(killed / "checkpoint.pt", reference / "checkpoint.pt")
    a, b = (torch.load(d / "checkpoint.pt", weights_only=True)["distiller"] for d in (killed, reference))
    assert a.keys() == b.keys()
    return a, b


@pytest.mark.chaos
def test_a_fitnet_cell_saves_and_restores_its_regressor(tmp_path):
    args = [*CELL, "loss=fitnet", "alpha=0.5", "trainer.epochs=3", "trainer.deterministic=true"]
    reference, killed, saved = killed_after_one_epoch(tmp_path, args)
    assert any(k.startswith("regressor.") for k in saved["distiller"])  # the learned part is in the checkpoint
    # The regressor trains with the student's optimizer: its momentum is in the optimizer's state too.
    assert len(saved["optimizer"]["state"]) == len(saved["model"]) - sum(
        k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in saved["model"]) + sum(
        not k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in saved["distiller"])
    a, b = resumed_as_uninterrupted(tmp_path, args, killed, reference)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.chaos
def test_a_crd_cell_killed_mid_epoch_resumes_its_memory_banks_and_negatives_to_the_uninterrupted_result(tmp_path):
    args = [*CELL, "loss=crd", "alpha=0.5", "trainer.epochs=3", "trainer.deterministic=true"]
    reference, killed, saved = killed_after_one_epoch(tmp_path, args)
    assert {"bank_s", "bank_t", "z", "_extra_state"} <= set(saved["distiller"]) and (saved["distiller"]["z"] > 0).all()
    a, b = resumed_as_uninterrupted(tmp_path, args, killed, reference)
    assert torch.equal(a["_extra_state"]["generator"], b["_extra_state"]["generator"])
    assert all(torch.equal(a[k], b[k]) for k in a if k != "_extra_state")


# docs/extending.md's own example ("A distiller of your own"), run from this very text.
OWN_DISTILLER = re.search(r"```python\n# my_distiller.py\n(.*?)```", (REPO / "docs" / "extending.md").read_text(),
                          re.S).group(1)


def test_a_users_own_feature_distiller_is_one_file_and_one_yaml(tmp_path):
    (tmp_path / "my_distiller.py").write_text(OWN_DISTILLER)
    (tmp_path / "conf" / "loss").mkdir(parents=True)
    (tmp_path / "conf" / "loss" / "pooled_mse.yaml").write_text("_target_: my_distiller.PooledFeatureMSE\nweight: 2.0\n")
    env = {**ONE_THREAD, "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}
    run = tmp_path / "run"
    done = run_cli(["--config-dir", str(tmp_path / "conf"), *CELL, "loss=pooled_mse", "alpha=0.5", "model=wrn_16_1",
                    f"hydra.run.dir={run}"], cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    result = read_results(run / RESULTS_FILE)
    assert result["loss"] == "PooledFeatureMSE" and all(row["train/mse"] > 0 for row in result["history"])
    assert json.loads(json.dumps(result["config"]["loss"])) == {"_target_": "my_distiller.PooledFeatureMSE",
                                                                "weight": 2.0}
    assert any(k.startswith("project.") for k in torch.load(run / "checkpoint.pt", weights_only=True)["distiller"])


NEW_LOSSES = ["pkt", "sp", "rkd", "nst", "cc", "vid", "ofd", "reviewkd", "crd", "crd_kd", "kdsvd"]


@pytest.mark.slow
def test_every_new_distiller_trains_a_tiny_real_cell_in_one_multirun(tmp_path):
    grid = [*FAST, "teacher=resnet8", f"loss={','.join(NEW_LOSSES)}", "alpha=0.5", "loss.scale=2"]
    out, _ = sweep(tmp_path, "new", grid)
    for loss in NEW_LOSSES:
        job = cell_dir(out, grid, f"loss={loss}")
        result = read_results(job / RESULTS_FILE)
        assert result["status"] == "completed", loss
        assert result["history"][-1]["train/kd"] > 0, loss
    learned = {"cc": "embed_s.", "vid": "regressors.", "ofd": "connectors.", "reviewkd": "abfs.", "crd": "bank_s",
               "crd_kd": "terms.crd.embed_t."}
    for loss, prefix in learned.items():  # learned parts are saved with the cell
        saved = torch.load(cell_dir(out, grid, f"loss={loss}") / "checkpoint.pt", weights_only=True)["distiller"]
        assert any(k.startswith(prefix) for k in saved), loss
    rkd = read_results(cell_dir(out, grid, "loss=rkd") / RESULTS_FILE)["history"][0]
    assert rkd["train/distance"] > 0 and rkd["train/angle"] > 0


# AB, FSP and FT train a first stage (kd/distillers/base.py); FSP compares the maps channel by channel, so the
# student is the teacher's network here. A multirun composes its base config with the default loss (kd), which has no
# such key: "++" sets it in each cell's loss without being refused there.
FIRST_STAGE = [*CELL, "model=resnet8", "++loss.first_stage_epochs=1"]


def first_stage_rows(result: dict) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in result["first_stage_history"]]


@pytest.mark.slow
def test_a_first_stage_runs_before_the_main_schedule_and_packs_exactly_as_alone(tmp_path):
    grid = [*FIRST_STAGE, "loss=ab,fsp,ft", "alpha=0.5", "loss.scale=2", "optim.scheduler.milestones=[1]"]
    packed, log = sweep(tmp_path, "packed", grid)
    alone, _ = sweep(tmp_path, "alone", [*grid, "hydra/launcher=basic"])
    for loss in ("ab", "fsp", "ft"):
        job = cell_dir(packed, grid, f"loss={loss}")
        result = read_results(job / RESULTS_FILE)
        assert result["status"] == "completed" and result["first_stage_epochs"] == 1, loss
        (first,) = result["first_stage_history"]
        assert first["first_stage/epoch"] == 1 and first["first_stage/loss"] > 0, loss
        assert first["first_stage/lr"] == (0.01 if loss == "ft" else 0.05), loss
        # The main schedule counts from the first stage's end: its lr steps after main epoch 1, not before.
        assert [row["epoch"] for row in result["history"]] == [1, 2]
        assert [row["lr"] for row in result["history"]] == pytest.approx([0.05, 0.005]), loss
        # AB's and FSP's main stage is CE only (feat_weight 0); FT's adds its factor loss.
        assert (result["history"][-1]["train/kd"] > 0) == (loss == "ft"), loss
        other = read_results(alone / job.name / RESULTS_FILE)
        assert metrics(result) == metrics(other) and first_stage_rows(result) == first_stage_rows(other), loss
        assert same_weights(job / "checkpoint.pt", alone / job.name / "checkpoint.pt"), loss
    saved = torch.load(cell_dir(packed, grid, "loss=ft") / "checkpoint.pt", weights_only=True)
    assert saved["epoch"] == 3 and saved["stage"] == "main" and saved["first_optimizer"]["state"]
    assert any(k.startswith("paraphraser.") for k in saved["distiller"])


@pytest.mark.slow
def test_alpha_zero_runs_no_first_stage_and_is_plain_cross_entropy(tmp_path):
    grid = [*FAST, "teacher=resnet8", "model=resnet8", "loss=kd,ab,fsp,ft", "alpha=0"]
    out, _ = sweep(tmp_path, "zero", grid)
    plain = cell_dir(out, grid, "loss=kd")
    for loss in ("ab", "fsp", "ft"):
        job = cell_dir(out, grid, f"loss={loss}")
        result = read_results(job / RESULTS_FILE)
        assert "first_stage_history" not in result and len(result["history"]) == 1, loss
        assert metrics(result) == metrics(read_results(plain / RESULTS_FILE)), loss
        assert same_weights(job / "checkpoint.pt", plain / "checkpoint.pt"), loss
        assert "first_optimizer" not in torch.load(job / "checkpoint.pt", weights_only=True), loss


@pytest.mark.chaos
def test_a_cell_killed_inside_its_first_stage_resumes_to_the_uninterrupted_result(tmp_path):
    args = [*CELL, "model=resnet8", "loss=ft", "alpha=0.5", "loss.first_stage_epochs=3", "trainer.epochs=1",
            "trainer.deterministic=true"]
    reference, killed, saved = killed_after_one_epoch(tmp_path, args)
    assert saved["stage"] == "first" and saved["epoch"] < 3 and saved["history"] == []  # killed inside it
    assert len(saved["first_history"]) == saved["epoch"] and saved["first_optimizer"]["state"]
    a, b = resumed_as_uninterrupted(tmp_path, args, killed, reference)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert first_stage_rows(read_results(killed / RESULTS_FILE)) == first_stage_rows(
        read_results(reference / RESULTS_FILE))


LOGIT_LOSSES = ("kd", "dkd", "dist", "ttm", "wttm")


@pytest.mark.slow
def test_the_newer_logit_distillers_and_logit_standardization_train_in_one_real_multirun(tmp_path):
    grid = [*FAST, "teacher=resnet8", "aug=none", "alpha=0.5", f"loss={','.join(LOGIT_LOSSES)}",
            "loss.standardize=false,true"]
    out, log = sweep(tmp_path, "logit", grid)
    assert "loss.standardize=False:" in log and "loss.standardize=True:" in log  # the grid's tables, one per switch
    first = {}
    for loss in LOGIT_LOSSES:
        for standardize in ("False", "True"):  # as Hydra's sweeper writes them (cell_dir)
            result = read_results(cell_dir(out, grid, f"loss={loss}", f"loss.standardize={standardize}") / RESULTS_FILE)
            assert result["status"] == "completed", (loss, standardize)
            row = result["history"][-1]
            assert math.isfinite(row["train/loss"]) and math.isfinite(row["train/kd"]) and row["train/kd"] > 0
            first[loss, standardize] = row["train/kd"]
        assert first[loss, "False"] != first[loss, "True"], loss  # the switch reaches each distiller's term
    dist = read_results(cell_dir(out, grid, "loss=dist", "loss.standardize=False") / RESULTS_FILE)["history"][0]
    assert dist["train/inter"] > 0 and dist["train/intra"] > 0
    recipes = [*FAST, "teacher=resnet8", "aug=none", "alpha=0.5", "loss=kd_ls,dkd_ls"]
    out, _ = sweep(tmp_path, "ls", recipes)
    for loss in ("kd_ls", "dkd_ls"):
        result = read_results(cell_dir(out, recipes, f"loss={loss}") / RESULTS_FILE)
        assert result["status"] == "completed" and math.isfinite(result["history"][-1]["train/loss"]), loss
