"""kd's launcher presets (launchers/hydra/launcher/) and launchers, without a cluster.

The SLURM runs are in test_slurm.py; here the presets compose, Hydra finds the launcher
classes from any working directory, the teacher-first command is right, and the local
launcher runs a real 2-cell sweep with one (fake) GPU per cell and a failing cell.
"""
from __future__ import annotations

import re
import subprocess
import sys

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.plugins import Plugins

from conftest import CONF_DIR, FAST, REPO, cell_dir, run_cli
from hydra_plugins.kd_launcher.launcher import device_slots
from kd.runs.results import read_results
from kd.runs.submit import commands, teacher_overrides


def launcher_config(name: str):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        return compose("config", overrides=[f"hydra/launcher={name}"], return_hydra_config=True).hydra.launcher


@pytest.mark.parametrize("name", ["slurm", "mycluster"])
def test_slurm_presets_compose_with_one_gpu_cells_that_requeue(name):
    launcher = launcher_config(name)
    assert launcher._target_ == "hydra_plugins.kd_launcher.launcher.KdSlurmLauncher"
    assert launcher._target_ in Plugins.instance().class_name_to_class  # Hydra only launches classes it found
    assert (launcher.gpus_per_node, launcher.nodes, launcher.tasks_per_node) == (1, 1, 1)
    assert launcher.max_num_timeout >= 1 and launcher.signal_delay_s > 0
    assert launcher.additional_parameters.requeue is True
    assert launcher.array_parallelism >= 15 and launcher.timeout_min >= 60
    assert "partition" in launcher and "account" in launcher and "setup" in launcher


def test_local_preset_composes():
    launcher = launcher_config("local_gpus")
    assert launcher._target_ == "hydra_plugins.kd_launcher.launcher.KdLocalLauncher"
    assert launcher._target_ in Plugins.instance().class_name_to_class
    assert launcher.gpus_per_node == 1


@pytest.mark.parametrize("entry", [["kd/train.py"], ["-m", "kd.train"]])
def test_cli_finds_the_presets_from_any_directory(entry, tmp_path):
    args = [str(REPO / entry[0])] if entry[0].endswith(".py") else entry
    out = subprocess.run([sys.executable, *args, "hydra/launcher=slurm", "--cfg", "hydra", "-p", "hydra.launcher"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "_target_: hydra_plugins.kd_launcher.launcher.KdSlurmLauncher" in out.stdout


def test_device_slots_give_each_concurrent_cell_its_own_gpus():
    assert device_slots(None, 4, 1, 4, 16) == ["0", "1", "2", "3"]
    assert device_slots("2,3", 8, 1, 4, 16) == ["2", "3"]  # the launching shell's choice, verbatim
    assert device_slots("GPU-a,GPU-b", 0, 1, 4, 16) == ["GPU-a", "GPU-b"]
    assert device_slots(None, 5, 2, 4, 16) == ["0,1", "2,3"]
    assert device_slots(None, 0, 1, 4, 16) == ["", "", "", ""]  # no GPU: CPU cells, cores // cpus_per_task
    assert device_slots("", 0, 1, 4, 2) == [""]
    assert device_slots(None, 4, 0, 8, 16) == ["", ""]
    with pytest.raises(ValueError, match="gpus_per_node=2"):
        device_slots("0", 1, 2, 4, 16)


def test_teacher_step_keeps_only_what_changes_the_teacher(tmp_path):
    overrides = ["alpha=0,0.5", "aug=none,fc", "model=resnet8", "loss.temperature=2", "seed=0,1", "data=digits",
                 "optim.optimizer.lr=0.1", "teacher.optim.optimizer.lr=0.2", "hydra/launcher=slurm"]
    assert teacher_overrides(overrides) == ["seed=0,1", "data=digits", "teacher.optim.optimizer.lr=0.2",
                                            "hydra/launcher=slurm"]
    teacher, grid = commands(["-cd", "/somewhere", *overrides, f"hydra.sweep.dir={tmp_path}"])
    assert teacher[2:5] == ["-m", "-cd", "/somewhere"] and "stage=teacher" in teacher
    assert teacher[-1] == f"hydra.sweep.dir={tmp_path}/teacher" and grid[-1] == f"hydra.sweep.dir={tmp_path}"
    assert grid[5:-1] == overrides


@pytest.mark.slow
def test_local_launcher_runs_cells_on_their_own_gpus_and_reports_a_failed_cell(tmp_path):
    sweep = tmp_path / "sweep"
    # GPU ids 5 and 7 exist nowhere, so the cells train on CPU; what matters is who was given which GPU.
    args = ["-m", "alpha=0", "aug=none", "trainer.batch_size=64,100000", *FAST, "hydra/launcher=local_gpus",
            "hydra.launcher.cpus_per_task=1", f"hydra.sweep.dir={sweep}"]
    out = run_cli(args, cwd=tmp_path, env={"CUDA_VISIBLE_DEVICES": "5,7"}, timeout=120)
    assert out.returncode == 1, out.stderr[-3000:]
    assert read_results(cell_dir(sweep, args, "trainer.batch_size=64") / "results.json")["status"] == "completed"
    assert read_results(cell_dir(sweep, args, "trainer.batch_size=100000") / "results.json")["status"] == "failed"
    assert re.search(r"1 of 2 cells failed.*\n  #1 .*trainer\.batch_size=100000.*ValueError", out.stderr)
    assert re.search(r"\| 64 +\| [\d.]+ +\|", out.stdout)  # the table still shows the cell that completed
    # The packs' own lines reach the console, each with its pack (they once went to .submitit/ alone).
    assert re.search(r"\[pack [12]/2\] .*epoch 1/1", out.stdout + out.stderr), out.stdout[-3000:]
    assert re.search(r"\[pack [12]/2\] .*CUDA_VISIBLE_DEVICES=[57]", out.stdout)
    logs = "".join(p.read_text() for p in (sweep / ".submitit").glob("*/*_log.out"))
    assert sorted(re.findall(r"CUDA_VISIBLE_DEVICES=(\S*)", logs)) == ["5", "7"]


def test_a_cluster_preset_kept_outside_the_repository_is_found_with_config_dir(tmp_path):
    presets = tmp_path / "kd-cluster" / "hydra" / "launcher"
    presets.mkdir(parents=True)
    (presets / "mycl.yaml").write_text("defaults:\n  - slurm\npartition: gpu_long\naccount: my_lab\n")
    out = subprocess.run([sys.executable, str(REPO / "kd" / "train.py"), "--config-dir", str(tmp_path / "kd-cluster"),
                          "hydra/launcher=mycl", "--cfg", "hydra", "-p", "hydra.launcher"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    launcher = yaml.safe_load(out.stdout)
    assert launcher["_target_"] == "hydra_plugins.kd_launcher.launcher.KdSlurmLauncher"
    assert (launcher["partition"], launcher["account"], launcher["timeout_min"]) == ("gpu_long", "my_lab", 360)
    assert launcher["detach"] is False
