"""The teacher is trained once per recipe, shared under concurrency, frozen, and checked on load."""
import subprocess
import sys

import pytest
import torch

from conftest import FAST, TRAIN_SCRIPT, compose_config
from kd.checkpoint import CheckpointError
from kd.train import train

TEACHER_ONLY = [*FAST, "stage=teacher", "teacher=resnet8", "trainer.epochs=2"]


def test_two_jobs_starting_at_once_train_the_teacher_once(tmp_path, isolated_kd_home):
    jobs = [subprocess.Popen([sys.executable, str(TRAIN_SCRIPT), *TEACHER_ONLY, f"hydra.run.dir={tmp_path / str(i)}"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    logs = [job.communicate(timeout=300)[0] for job in jobs]
    assert [job.returncode for job in jobs] == [0, 0], logs
    assert sum("teacher: training" in log for log in logs) == 1, logs
    assert sum("teacher: reusing" in log for log in logs) == 1, logs
    cached = list((isolated_kd_home / "teachers").glob("*.pt"))
    assert len(cached) == 1 and not list(cached[0].parent.glob("*.tmp"))


def test_teacher_result_is_recorded_and_reused_by_students(tmp_path, isolated_kd_home):
    teacher = train(compose_config(TEACHER_ONLY, out_dir=tmp_path / "teacher"))
    assert teacher["status"] == "completed" and 0 <= teacher["teacher_top1"] <= 100
    student = train(compose_config([*FAST, "teacher=resnet8", "trainer.epochs=2", "alpha=0.5"],
                                   out_dir=tmp_path / "student"))
    assert student["teacher_top1"] == teacher["teacher_top1"]
    assert len(list((isolated_kd_home / "teachers").glob("*.pt"))) == 1


def test_a_different_recipe_gets_its_own_teacher(tmp_path, isolated_kd_home):
    train(compose_config(TEACHER_ONLY, out_dir=tmp_path / "a"))
    train(compose_config([*TEACHER_ONLY, "seed=1"], out_dir=tmp_path / "b"))
    assert len(list((isolated_kd_home / "teachers").glob("*.pt"))) == 2


def test_checkpoint_of_another_architecture_is_a_clear_error(tmp_path):
    train(compose_config(TEACHER_ONLY, out_dir=tmp_path / "t"))
    path = next((tmp_path.parent).glob("**/teachers/*.pt"), None) or next(tmp_path.glob("**/*.pt"))
    cfg = compose_config([*FAST, "teacher=resnet14", f"teacher.checkpoint={path}", "alpha=0.5"],
                         out_dir=tmp_path / "s")
    with pytest.raises(CheckpointError, match="holds resnet8 with 10 classes, but the config asks for resnet14"):
        train(cfg)


def test_missing_and_truncated_teacher_checkpoints_are_clear_errors(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(CheckpointError, match="does not exist"):
        train(compose_config([*FAST, f"teacher.checkpoint={missing}", "alpha=0.5"], out_dir=tmp_path / "a"))
    truncated = tmp_path / "truncated.pt"
    torch.save({"arch": "resnet32", "state_dict": {"w": torch.zeros(1000)}}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        train(compose_config([*FAST, f"teacher.checkpoint={truncated}", "alpha=0.5"], out_dir=tmp_path / "b"))
