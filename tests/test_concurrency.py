"""One writer per job dir, and whole sweeps under faults: killed at random, or launched twice at once."""
from __future__ import annotations

import os
import random
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from filelock import FileLock

from conftest import FAST, TRAIN_SCRIPT, cell_dir, run_cli
from kd.runs.job import prepare_out_dir
from kd.runs.locking import LOCK_FILE
from kd.runs.results import RESULTS_FILE, collect_sweep, read_results
from kd.report.grid_table import print_grid_table
from reliability import ONE_THREAD, metrics
from test_resume import saved_epoch
from test_wandb_tracker import offline_runs

GRID = ["alpha=0,0.25,0.5,0.75,1.0", "aug=none,fc,fcra"]


def popen(args: list[str], log: Path) -> subprocess.Popen:
    with open(log, "a") as out:
        return subprocess.Popen([sys.executable, str(TRAIN_SCRIPT), *args], env={**os.environ, **ONE_THREAD},
                                stdout=out, stderr=subprocess.STDOUT)


def wait_until(condition, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.02)


@pytest.mark.slow
def test_a_second_run_on_a_busy_dir_stops_at_once_and_a_killed_holder_never_blocks(tmp_path):
    job, log = tmp_path / "job", tmp_path / "first.log"
    args = [*FAST, "alpha=0", "trainer.epochs=400", f"hydra.run.dir={job}"]
    first = popen(args, log)
    try:
        wait_until(lambda: saved_epoch(job / "checkpoint.pt") >= 1, first, log)
        second = run_cli(args, cwd=tmp_path, env=ONE_THREAD)
        assert second.returncode == 1
        assert (f"JobDirBusyError: {job} is in use by another kd run (pid {first.pid} on host "
                in second.stderr), second.stderr[-2000:]
        assert "Wait for it to finish" in second.stderr
    finally:
        first.kill()  # SIGKILL: its lock file stays behind, its lock does not
        first.wait()
    assert (job / LOCK_FILE).exists()
    resumed = run_cli([*FAST, "alpha=0", "trainer.epochs=3", f"hydra.run.dir={job}"], cwd=tmp_path, env=ONE_THREAD)
    # Another epoch count is another config: refused for that reason, not for the lock.
    assert "different config" in resumed.stderr and "in use by another" not in resumed.stderr, resumed.stderr


def trained_cells(text: str, epochs: int) -> list[str]:
    """The cells whose last epoch a log shows being trained, one entry per time."""
    return re.findall(rf"\[(aug=\S+ alpha=\S+) seed=0\] epoch {epochs}/{epochs}", text)


def test_jobs_proving_one_dir_writable_at_once_never_fail_each_other(tmp_path):
    """Each job's write probe is its own file: with one shared name, a job removed another's probe between its
    write and its unlink, and that job failed as 'not writable' (seen in CI, two copies of one sweep)."""
    errors: list[BaseException] = []

    def prove() -> None:
        for _ in range(300):
            try:
                prepare_out_dir(str(tmp_path / "cell"))
            except OSError as err:
                errors.append(err)

    threads = [threading.Thread(target=prove) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and list((tmp_path / "cell").iterdir()) == []


@pytest.mark.slow
def test_two_copies_of_one_sweep_on_one_dir_train_every_cell_once(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", *FAST, "trainer.epochs=3", "alpha=0,0.5,1.0", "aug=none,fc", f"hydra.sweep.dir={sweep}"]
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs = [popen(args, log) for log in logs]
    for proc in procs:
        proc.wait(timeout=300)
    texts = [log.read_text() for log in logs]
    assert [p.returncode for p in procs] == [0, 0], texts[0][-2000:] + texts[1][-2000:]
    trained = trained_cells(texts[0], 3) + trained_cells(texts[1], 3)
    assert sorted(trained) == sorted(f"aug={a} alpha={x}" for a in ("none", "fc") for x in ("0", "0.5", "1"))
    skipped = sum(text.count("already completed with this config (skipped") for text in texts)
    assert skipped == 6  # what one copy trained, the other skipped (after waiting for it, where it had to)
    results = collect_sweep(sweep)
    assert len(results) == 6 and all(r["status"] == "completed" for r in results)


def wandb_run_ids(sweep: Path) -> set[str]:
    return {run.name.rsplit("-", 1)[-1] for job in sweep.iterdir() if job.is_dir() for run in offline_runs(job)}


@pytest.mark.chaos
def test_a_sweep_killed_at_random_three_times_ends_as_if_never_killed(tmp_path, capsys):
    args = [*FAST, "trainer.epochs=3", "teacher=resnet8", "logger=wandb", "logger.mode=offline", *GRID]
    reference = tmp_path / "reference"
    started = time.monotonic()
    done = run_cli(["-m", *args, f"hydra.sweep.dir={reference}"], cwd=tmp_path, env=ONE_THREAD)
    duration = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-3000:]

    seed = random.SystemRandom().randrange(2**32)
    rng = random.Random(seed)
    killed, log = tmp_path / "killed", tmp_path / "killed.log"
    kill_after = [rng.uniform(0.1, 0.6) * duration for _ in range(3)]
    for delay in kill_after:
        proc = popen(["-m", *args, f"hydra.sweep.dir={killed}"], log)
        time.sleep(delay)
        proc.kill()  # SIGKILL, wherever it is: composing, training, checkpointing, writing W&B
        proc.wait()
    final = run_cli(["-m", *args, f"hydra.sweep.dir={killed}"], cwd=tmp_path, env=ONE_THREAD)
    schedule = f"kill schedule seed {seed}: after {[round(d, 1) for d in kill_after]} s of a {duration:.0f} s sweep"
    assert final.returncode == 0, schedule + final.stderr[-3000:]

    expected, got = collect_sweep(reference), {Path(r["job_dir"]).name: r for r in collect_sweep(killed)}
    assert len(expected) == len(got) == 15, schedule
    for r in expected:
        job = Path(r["job_dir"]).name
        assert got[job]["status"] == "completed" and metrics(got[job]) == metrics(r), (schedule, job)
    # No cell trained to completion twice: each last epoch was logged once, over all the runs.
    everything = log.read_text() + final.stdout + final.stderr
    assert sorted(trained_cells(everything, 3)) == sorted(trained_cells(done.stdout + done.stderr, 3)), schedule
    assert len(wandb_run_ids(killed)) == len(wandb_run_ids(reference)) == 15, schedule  # resumed, never duplicated
    for job in killed.iterdir():  # nothing left locked
        if job.is_dir() and (job / RESULTS_FILE).exists():
            lock = FileLock(str(job / LOCK_FILE))
            lock.acquire(timeout=0)
            lock.release()
    print_grid_table(reference)
    table = capsys.readouterr().out.strip().split("\n", 1)[1]  # without the line naming the sweep dir
    print_grid_table(killed)
    assert capsys.readouterr().out.strip().split("\n", 1)[1] == table, schedule
    assert read_results(cell_dir(killed, args, "alpha=0", "aug=none") / RESULTS_FILE)["teacher_top1"] is None
