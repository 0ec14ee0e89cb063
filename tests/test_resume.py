"""Crash-safe resume and reproducibility: a SIGKILLed run or sweep, rerun, ends with the numbers of one never killed."""
from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import FAST, TRAIN_SCRIPT, cell_dir, compose_config, run_cli
from kd.checkpoint import CheckpointError
from kd.runs.results import RESULTS_FILE, read_results
from kd.runs.job import train
from reliability import ONE_THREAD, metrics, one_torch_thread, same_weights, saved_epoch  # noqa: F401 (a fixture)

EPOCHS = 3  # the teacher's and then the student's, in the same process
# Every kind of state in play: a teacher trained first, the generator-driven fcra augmentation,
# an lr step after epoch 2 (the scheduler's state), and PyTorch's deterministic algorithms on the CPU.
KILLED_RUN = [*FAST, f"trainer.epochs={EPOCHS}", f"teacher.epochs={EPOCHS}", "alpha=0.5", "teacher=resnet8", "aug=fcra",
              "optim.scheduler.milestones=[2]", "trainer.deterministic=true"]


def epochs_done(kd_home: Path, run_dir: Path) -> int:
    """Epochs checkpointed so far, the teacher's and then the student's."""
    teachers = kd_home / "teachers"
    if any(teachers.glob("*.pt")):  # the cached teacher: all of its epochs are done
        teacher = EPOCHS
    else:
        teacher = max((saved_epoch(p) for p in teachers.glob("*.work/checkpoint.pt")), default=0)
    return teacher + saved_epoch(run_dir / "checkpoint.pt")


def run_and_kill(args: list[str], env: dict, kd_home: Path, run_dir: Path, after_epochs: list[int],
                 rng: random.Random, log: Path) -> int:
    """Start the job once per entry and SIGKILL it at a random time after that many epochs; return the kills."""
    kills = 0
    for target in after_epochs:
        with open(log, "a") as out:
            proc = subprocess.Popen([sys.executable, str(TRAIN_SCRIPT), *args], env=env, stdout=out,
                                    stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while proc.poll() is None and epochs_done(kd_home, run_dir) < target:
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.3))  # most often inside the next epoch, between two checkpoints
        if proc.poll() is None:
            proc.kill()  # SIGKILL: no handler runs, nothing is flushed or cleaned up
            kills += 1
        proc.wait()
    return kills


@pytest.mark.chaos
def test_run_killed_repeatedly_then_completed_matches_an_uninterrupted_run(tmp_path, isolated_kd_home,
                                                                            one_torch_thread):
    reference = train(compose_config(KILLED_RUN, out_dir=tmp_path / "reference"))

    seed = random.SystemRandom().randrange(2**32)  # not `random`: the reference run just seeded it
    rng = random.Random(seed)
    # Always once right after the teacher's last epoch, before the student's first checkpoint (the
    # resumed student then starts from scratch and must draw the same initial weights), and at random epochs.
    after_epochs = sorted({EPOCHS, *rng.sample(range(1, 2 * EPOCHS), 3)})
    kd_home, run_dir = tmp_path / "killed_home", tmp_path / "killed"
    args = [*KILLED_RUN, f"hydra.run.dir={run_dir}"]
    env = {**os.environ, **ONE_THREAD, "KD_HOME": str(kd_home)}
    kills = run_and_kill(args, env, kd_home, run_dir, after_epochs, rng, tmp_path / "killed.log")
    schedule = f"kill schedule seed {seed}: after epochs {after_epochs}, {kills} kills"
    assert kills >= len(after_epochs) - 1, schedule  # the last may come after the run ended

    done = run_cli(args, cwd=tmp_path, env={**ONE_THREAD, "KD_HOME": str(kd_home)})
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = read_results(run_dir / RESULTS_FILE)
    assert resumed["status"] == "completed", schedule
    assert metrics(resumed) == metrics(reference), schedule
    assert same_weights(run_dir / "checkpoint.pt", tmp_path / "reference" / "checkpoint.pt"), schedule


def test_student_does_not_depend_on_whether_its_teacher_was_just_trained(tmp_path, one_torch_thread):
    args = [*FAST, "alpha=0.5", "teacher=resnet8"]
    trained_first = train(compose_config(args, out_dir=tmp_path / "a"))  # trains and caches the teacher first
    from_cache = train(compose_config(args, out_dir=tmp_path / "b"))
    assert metrics(from_cache) == metrics(trained_first)
    assert same_weights(tmp_path / "a" / "checkpoint.pt", tmp_path / "b" / "checkpoint.pt")


def test_seed_zero_is_a_seed(tmp_path, one_torch_thread):
    runs = {name: train(compose_config([*FAST, "alpha=0", f"seed={seed}"], out_dir=tmp_path / name))
            for name, seed in (("zero", 0), ("zero_again", 0), ("one", 1))}
    assert metrics(runs["zero"]) == metrics(runs["zero_again"])
    assert same_weights(tmp_path / "zero" / "checkpoint.pt", tmp_path / "zero_again" / "checkpoint.pt")
    assert metrics(runs["zero"])["history"] != metrics(runs["one"])["history"]
    assert not same_weights(tmp_path / "zero" / "checkpoint.pt", tmp_path / "one" / "checkpoint.pt")


def test_rerun_of_a_completed_teacher_job_is_skipped(tmp_path, one_torch_thread):
    cfg = compose_config([*FAST, "stage=teacher", "teacher=resnet8"], out_dir=tmp_path / "teacher")
    first = train(cfg)
    assert train(cfg) == first  # a teacher job's results have no final_top1; the skip must not need one


@pytest.mark.slow
def test_rerun_sweep_skips_completed_cells_and_resumes_the_killed_one(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", *FAST, "trainer.epochs=4", "alpha=0", "aug=none,fc", f"hydra.sweep.dir={sweep}"]
    env = {**os.environ, **ONE_THREAD}
    with open(tmp_path / "killed.log", "w") as out:
        proc = subprocess.Popen([sys.executable, str(TRAIN_SCRIPT), *args], env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    first, second = cell_dir(sweep, args, "aug=none"), cell_dir(sweep, args, "aug=fc")
    while proc.poll() is None and saved_epoch(second / "checkpoint.pt") < 1:
        assert time.monotonic() < deadline, (tmp_path / "killed.log").read_text()[-3000:]
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    completed, interrupted = first / RESULTS_FILE, second / RESULTS_FILE
    assert read_results(completed)["status"] == "completed" and not interrupted.exists()
    before = (completed.stat().st_mtime_ns, completed.read_bytes())

    rerun = run_cli(args, cwd=tmp_path, env=ONE_THREAD)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    log = rerun.stdout + rerun.stderr
    assert log.count("already completed with this config (skipped") == 1, log
    assert f"resumed from {second / 'checkpoint.pt'} at epoch" in log, log
    assert (completed.stat().st_mtime_ns, completed.read_bytes()) == before  # not retrained, not rewritten
    resumed = read_results(interrupted)
    assert resumed["status"] == "completed" and [row["epoch"] for row in resumed["history"]] == [1, 2, 3, 4]


def test_resume_with_changed_training_settings_is_refused_but_moved_paths_are_fine(tmp_path, one_torch_thread,
                                                                                  monkeypatch):
    run_dir = tmp_path / "run"
    first = train(compose_config([*FAST, "alpha=0", "trainer.epochs=2"], out_dir=run_dir))
    (run_dir / RESULTS_FILE).unlink()  # as if killed after its last checkpoint
    with pytest.raises(CheckpointError, match="different config"):
        train(compose_config([*FAST, "alpha=0", "trainer.epochs=2", "optim.optimizer.lr=0.2"], out_dir=run_dir))
    monkeypatch.setenv("KD_HOME", str(tmp_path / "moved"))  # another cache dir, and no tracker: same job
    again = train(compose_config([*FAST, "alpha=0", "trainer.epochs=2", "logger=none"], out_dir=run_dir))
    assert metrics(again) == metrics(first)
