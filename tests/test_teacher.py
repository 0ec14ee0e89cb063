"""The teacher is its own recipe: trained once per recipe, shared under concurrency, resumable, checked."""
import json
import os
import re
import subprocess
import sys
import time

import pytest
import torch
from hydra.utils import instantiate

from conftest import FAST, TRAIN_SCRIPT, compose_config, run_cli
from kd.checkpoint import CheckpointError
from kd.models.resnet import resnet8
from kd.runs.results import RESULTS_FILE, read_results
from kd.training.teacher import TeacherTooWeakError, recipe_digest, teacher_checkpoint_path
from kd.runs.job import train
from reliability import ONE_THREAD, no_training, one_torch_thread, same_weights  # noqa: F401 (fixtures)
from test_resume import saved_epoch

TEACHER_ONLY = [*FAST, "stage=teacher", "teacher=resnet8", "teacher.epochs=2"]


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
    student = train(compose_config([*FAST, "teacher=resnet8", "teacher.epochs=2", "trainer.epochs=3", "alpha=0.5"],
                                   out_dir=tmp_path / "student"))
    assert student["teacher_top1"] == teacher["teacher_top1"]
    assert len(list((isolated_kd_home / "teachers").glob("*.pt"))) == 1


def test_a_different_recipe_gets_its_own_teacher(tmp_path, isolated_kd_home):
    train(compose_config(TEACHER_ONLY, out_dir=tmp_path / "a"))
    train(compose_config([*TEACHER_ONLY, "seed=1"], out_dir=tmp_path / "b"))
    assert len(list((isolated_kd_home / "teachers").glob("*.pt"))) == 2


def test_checkpoint_of_another_architecture_is_a_clear_error(tmp_path, isolated_kd_home):
    train(compose_config(TEACHER_ONLY, out_dir=tmp_path / "t"))
    (path,) = (isolated_kd_home / "teachers").glob("*.pt")  # this test's own teacher, not another test's
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


# ---- The teacher is its own recipe (nothing a student sets changes it) ----

STUDENT_ONLY_CHANGES = ["alpha=0.25", "loss.temperature=2", "optim.optimizer.lr=0.1", "optim.scheduler.milestones=[1]",
                        "trainer.epochs=2", "trainer.batch_size=16", "aug=fcra", "model=resnet14", "logger=wandb",
                        "trainer.device=cpu", "trainer.checkpoint_every=3", "trainer.bf16=false", "teacher.cache_dir=/x",
                        "out_dir=/elsewhere"]
TEACHER_CHANGES = ["teacher.epochs=2", "teacher.batch_size=16", "teacher.optim.optimizer.lr=0.1",
                   "teacher.optim.scheduler.milestones=[1]", "teacher.aug.padding=1", "teacher=resnet14", "seed=1",
                   "teacher.seed=5", "data.image_size=16", "data.train_size=200", "data.val_size=100",
                   "data.split_seed=1", "teacher.loss._target_=kd.distillers.kd.KD", "aug@teacher.aug=none"]


def digest(overrides: list[str]) -> str:
    return recipe_digest(compose_config([*FAST, "teacher=resnet8", *overrides], out_dir="/out"), None)


def test_the_recipe_hash_ignores_every_student_setting_and_follows_every_teacher_one():
    base = digest([])
    assert {o: digest([o]) for o in STUDENT_ONLY_CHANGES} == {o: base for o in STUDENT_ONLY_CHANGES}
    changed = {o: digest([o]) for o in TEACHER_CHANGES}
    assert base not in changed.values(), changed
    assert len(set(changed.values())) == len(TEACHER_CHANGES)


def test_the_teacher_trains_with_cross_entropy_and_its_own_epochs_whatever_the_student_sets(tmp_path, isolated_kd_home):
    """Issue case 1 and 3: the first cell's loss, epochs or optimizer never leak into the shared teacher."""
    first = train(compose_config([*TEACHER_ONLY[:-2], "teacher=resnet8", "teacher.epochs=3", *STUDENT_ONLY_CHANGES[:-3],
                                  "logger=none"], out_dir=tmp_path / "first"))
    second = train(compose_config([*FAST, "teacher=resnet8", "teacher.epochs=3", "alpha=0.5"],
                                  out_dir=tmp_path / "second"))
    cached = list((isolated_kd_home / "teachers").glob("*.pt"))
    assert len(cached) == 1
    assert first["teacher_sha256"] == second["teacher_sha256"] and first["teacher_top1"] == second["teacher_top1"]
    recipe = json.loads(torch.load(cached[0], weights_only=True)["recipe"])
    assert recipe["loss"] == {"_target_": "kd.distillers.base.CrossEntropy"}
    assert (recipe["epochs"], recipe["batch_size"], recipe["optim"]["optimizer"]["lr"]) == (3, 32, 0.05)
    work = torch.load(next(cached[0].parent.glob("*.work/checkpoint.pt")), weights_only=True)
    assert work["epoch"] == 3 and all(row["train/kd"] == 0.0 for row in work["history"])
    assert first["epochs"] == 2 and first["teacher_epochs"] == 3


def test_a_short_student_run_gets_a_teacher_of_the_datasets_own_epochs(tmp_path, isolated_kd_home):
    """Issue case 3: `trainer.epochs=2` (a smoke test) never trains a 2-epoch teacher."""
    result = train(compose_config(["data=digits", "data.image_size=8", "logger=none", "teacher=resnet8",
                                   "trainer.epochs=2", "alpha=0.5"], out_dir=tmp_path / "s"))
    work = torch.load(next((isolated_kd_home / "teachers").glob("*.work/checkpoint.pt")), weights_only=True)
    assert work["epoch"] == 60 == result["teacher_epochs"]  # digits' teacher recipe
    assert result["teacher_top1"] > 50 and len(result["history"]) == 2


def test_a_teacher_at_chance_stops_the_job_before_the_student_trains(tmp_path, no_training):
    random_teacher = tmp_path / "random.pt"
    torch.save({"arch": "resnet8", "num_classes": 10, "data": "digits", "test_top1": 99.0,
                "state_dict": resnet8(num_classes=10).state_dict()}, random_teacher)
    cfg = compose_config([*FAST[:-1], "teacher=resnet8", f"teacher.checkpoint={random_teacher}", "alpha=0.5"],
                         out_dir=tmp_path / "s")
    with pytest.raises(TeacherTooWeakError, match=r"below teacher.min_top1=20.00% \(chance is 10.00%\).*"
                                                  r"set teacher.min_top1=0"):
        train(cfg)
    assert not (tmp_path / "s" / "checkpoint.pt").exists()
    assert read_results(tmp_path / "s" / RESULTS_FILE)["status"] == "failed"


@pytest.mark.slow
def test_a_killed_teacher_resumes_under_another_student_config(tmp_path, isolated_kd_home, one_torch_thread):
    """Issue case 2: the teacher's work dir belongs to its recipe, so any student asking for it resumes it."""
    teacher = ["data=digits", "data.image_size=8", "logger=none", "teacher=resnet8", "teacher.epochs=8",
               "teacher.min_top1=0"]
    env = {**os.environ, **ONE_THREAD}
    proc = subprocess.Popen([sys.executable, str(TRAIN_SCRIPT), *teacher, "alpha=0.5", "aug=fc",
                             f"hydra.run.dir={tmp_path / 'killed'}"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    work = isolated_kd_home / "teachers"
    deadline = time.monotonic() + 120
    while not any(saved_epoch(p) >= 2 for p in work.glob("*.work/checkpoint.pt")):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    done = run_cli([*teacher, "alpha=0.75", "aug=fcra", "trainer.epochs=1", "loss.temperature=2",
                    "optim.optimizer.lr=0.01", f"hydra.run.dir={tmp_path / 'other'}"], cwd=tmp_path, env=ONE_THREAD)
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"resumed from .*\.work/checkpoint\.pt at epoch [2-7]/8", done.stdout), done.stdout[-3000:]
    reference = train(compose_config([*teacher, "stage=teacher", f"teacher.cache_dir={tmp_path / 'ref'}"],
                                     out_dir=tmp_path / "reference"))
    resumed = read_results(tmp_path / "other" / RESULTS_FILE)
    assert resumed["teacher_top1"] == reference["teacher_top1"]
    assert same_weights(next(work.glob("*.work/checkpoint.pt")), next((tmp_path / "ref").glob("*.work/checkpoint.pt")))


def test_a_foreign_teacher_work_dir_names_the_dir_and_the_fix(tmp_path, isolated_kd_home):
    cfg = compose_config([*FAST, "teacher=resnet8", "alpha=0.5"], out_dir=tmp_path / "s")
    work = isolated_kd_home / "teachers" / (teacher_checkpoint_path(cfg, instantiate(cfg.data)).stem + ".work")
    work.mkdir(parents=True)
    torch.save({"config": {"something": "else"}}, work / "checkpoint.pt")
    with pytest.raises(CheckpointError, match=rf"{re.escape(str(work))} holds the work of another teacher recipe.*"
                                              rf"delete {re.escape(str(work))} to train this teacher afresh"):
        train(cfg)


@pytest.mark.parametrize("damage", ["truncated", "empty", "not a checkpoint"])
def test_a_corrupt_cached_teacher_is_moved_aside_and_retrained(tmp_path, isolated_kd_home, damage, caplog):
    args = [*FAST, "teacher=resnet8", "alpha=0.5"]
    first = train(compose_config(args, out_dir=tmp_path / "first"))
    (cached,) = (isolated_kd_home / "teachers").glob("*.pt")
    good = cached.read_bytes()
    damaged = {"truncated": good[:1000], "empty": b"", "not a checkpoint": b"hello"}[damage]
    cached.write_bytes(damaged)
    with caplog.at_level("WARNING"):
        second = train(compose_config(args, out_dir=tmp_path / "second"))
    assert "is unreadable" in caplog.text and "training the teacher again" in caplog.text
    (kept,) = cached.parent.glob(cached.name + ".corrupt-*")
    assert kept.read_bytes() == damaged  # kept, for a look; a second one would never replace it
    assert second["teacher_top1"] == first["teacher_top1"]  # the same recipe, trained again (resumed from .work)
    assert torch.load(cached, weights_only=True)["state_dict"].keys() == \
        torch.load(next(cached.parent.glob("*.work/checkpoint.pt")), weights_only=True)["model"].keys()
