"""The grid on a real one-node SLURM cluster (tests/slurm_cluster.py) with kd's launcher presets.

    KD_TEST_SLURM=1 pytest -m slurm      # as root; installs slurm-wlm + munge with apt if needed

Skipped (with the reason) unless KD_TEST_SLURM=1 is set and we are root (.ci/run sets it).
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from typing import Iterator

import pytest
import torch

from conftest import TRAIN_SCRIPT, cell_dir, run_cli
from kd.runs.results import collect_sweep, read_results
from slurm_cluster import LocalSlurm, local_slurm, unavailable_reason

pytestmark = [pytest.mark.slurm, pytest.mark.skipif(unavailable_reason() is not None,
                                                    reason=unavailable_reason() or "")]

# The slurm preset as it ships (the node runs 4 of its cells at once, one per fake GPU), on tiny digits.
ON_SLURM = ["data=digits", "data.image_size=8", "logger=none", "hydra/launcher=slurm"]
GRID = ["alpha=0,0.25,0.5,0.75,1.0", "aug=none,fc,fcra"]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory) -> Iterator[LocalSlurm]:
    with local_slurm(tmp_path_factory.mktemp("slurm")) as cluster:
        yield cluster


def wait_for(condition, timeout: float, what: str, poll: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise TimeoutError(f"gave up after {timeout:.0f}s waiting for {what}")


def job_field(slurm: LocalSlurm, job_id: str, field: str) -> str:
    return re.search(rf"\b{field}=(\S+)", slurm.command("scontrol", "show", "job", job_id)).group(1)


def test_grid_trains_teacher_first_then_runs_all_15_cells_in_3_packs(slurm, tmp_path):
    sweep = tmp_path / "sweep"
    out = subprocess.run([sys.executable, "-m", "kd.runs.submit", *GRID, "trainer.epochs=2", *ON_SLURM,
                          f"hydra.sweep.dir={sweep}"], cwd=tmp_path, env=slurm.env, capture_output=True,
                         text=True, timeout=540)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]

    (teacher,) = collect_sweep(sweep / "teacher")
    assert teacher["stage"] == "teacher" and teacher["status"] == "completed"
    cells = collect_sweep(sweep)
    assert sorted((r["aug"], r["alpha"]) for r in cells) == sorted(
        (aug, alpha) for aug in ("none", "fc", "fcra") for alpha in (0.0, 0.25, 0.5, 0.75, 1.0))
    assert all(r["status"] == "completed" for r in cells)
    assert "Gains (fcra - none)" in out.stdout

    # Every pack (its log is each of its cells' log) loaded the teacher that step 1 cached; none trained it.
    logs = [p.read_text() for p in sweep.glob("*/train.log")]
    assert len(logs) == 15 and all(log.count("teacher: reusing") == 1 for log in logs)
    assert not any("teacher: training" in log for log in logs)

    # One job array from the preset, one task per aug (its 5 alphas packed); SLURM gave every pack one of
    # the node's (fake) GPUs.
    (script,) = (sweep / ".submitit").glob("*/*_submission.sh")
    for line in ["#SBATCH --array=0-2%3", "#SBATCH --gpus-per-node=1", "#SBATCH --requeue",
                 "#SBATCH --signal=USR2@120", "#SBATCH --time=360"]:
        assert line in script.read_text()
    outs = [p.read_text() for p in (sweep / ".submitit").glob("*_*/*_log.out")]
    devices = [re.search(r"CUDA_VISIBLE_DEVICES=(\S*)", out).group(1) for out in outs]
    assert len(devices) == 3 and set(devices) <= {"0", "1", "2", "3"}
    assert all(out.count("kd: pack of 5") == 1 for out in outs)


def test_signalled_cell_is_requeued_and_resumes_to_the_same_result(slurm, tmp_path):
    cell = ["alpha=0.5", "aug=fcra", "trainer.epochs=30", *ON_SLURM[:3]]
    # The uninterrupted reference, on one thread like the SLURM cell (cpus_per_task=1); the teacher is
    # cached first, so that both runs load the same cached teacher.
    for stage in ("teacher", "student"):
        ref = run_cli([f"stage={stage}", *cell, f"hydra.run.dir={tmp_path / stage}"], cwd=tmp_path,
                      env={"OMP_NUM_THREADS": "1"}, timeout=300)
        assert ref.returncode == 0, ref.stderr[-3000:]

    sweep, output = tmp_path / "sweep", tmp_path / "sweep.out"
    with open(output, "w") as out:
        master = subprocess.Popen([sys.executable, str(TRAIN_SCRIPT), "-m", *cell, "hydra/launcher=slurm",
                                   "hydra.launcher.cpus_per_task=1", f"hydra.sweep.dir={sweep}"], cwd=tmp_path,
                                  env=slurm.env, stdout=out, stderr=subprocess.STDOUT)
    try:
        checkpoint = cell_dir(sweep, cell, "alpha=0.5") / "checkpoint.pt"

        def epochs_done() -> int:
            try:
                return torch.load(checkpoint, weights_only=True)["epoch"] if checkpoint.exists() else 0
            except (RuntimeError, EOFError, OSError):
                return 0

        wait_for(lambda: epochs_done() >= 2, 240, "the cell's second checkpoint")
        (job_id,) = [p.name for p in (sweep / ".submitit").iterdir() if p.name.isdigit()]
        slurm.command("scancel", "--signal=USR2", job_id)  # what SLURM sends before a time limit
        wait_for(lambda: job_field(slurm, job_id, "Restarts") == "1"
                 and job_field(slurm, job_id, "JobState") == "PENDING", 60, "submitit to requeue the job")
        assert epochs_done() < 30, "the cell finished before the signal; raise trainer.epochs"
        # Skip most of SLURM's 2-minute requeue delay, but not all: a start in the same second as the kill is
        # refused ("Job credential revoked", the credential's time has a one-second grain) and fails the job.
        slurm.command("scontrol", "update", f"JobId={job_id}", "StartTime=now+3")
        try:
            master.wait(timeout=300)
        except subprocess.TimeoutExpired:
            pytest.fail("the requeued cell did not finish in 300 s:\n" + slurm.logs()
                        + "".join(p.read_text()[-2000:] for p in (sweep / ".submitit").glob("*/*_log.*")))
    finally:
        if master.poll() is None:
            master.kill()
    assert master.returncode == 0, output.read_text()[-4000:]

    log = (checkpoint.parent / "train.log").read_text()
    assert "resumed from" in log
    assert "Requeued job" in "".join(p.read_text() for p in (sweep / ".submitit").glob("*/*_log.*"))
    resumed, reference = read_results(checkpoint.parent / "results.json"), read_results(tmp_path / "student" / "results.json")
    assert resumed["status"] == "completed"

    def curve(history: list[dict]) -> list[tuple]:
        return [(h["epoch"], h["train/loss"], h["test/top1"]) for h in history]

    assert curve(resumed["history"]) == curve(reference["history"])
    assert resumed["final_top1"] == reference["final_top1"]


def test_failed_cell_fails_its_job_and_the_sweep(slurm, tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", "alpha=0", "aug=none", "trainer.batch_size=64,100000", "trainer.epochs=1", *ON_SLURM,
            f"hydra.sweep.dir={sweep}"]
    out = run_cli(args, cwd=tmp_path, env=slurm.env, timeout=300)
    assert out.returncode == 1, out.stdout[-2000:] + out.stderr[-2000:]
    assert "1 of 2 cells failed" in out.stderr
    assert re.search(r"#1 .*trainer\.batch_size=100000.*ValueError: trainer\.batch_size=100000", out.stderr)

    good_dir, bad_dir = (cell_dir(sweep, args, f"trainer.batch_size={n}") for n in (64, 100000))
    good, bad = read_results(good_dir / "results.json"), read_results(bad_dir / "results.json")
    assert good["status"] == "completed"
    assert bad["status"] == "failed" and "Traceback" in bad["traceback"]
    assert "ValueError" in (bad_dir / "train.log").read_text()
    (err_log,) = (sweep / ".submitit").glob("*_1/*_1_0_log.err")
    assert "Traceback" in err_log.read_text() and "ValueError" in err_log.read_text()
    array_id = err_log.parent.name.split("_")[0]
    # The sweep returns as soon as both results are written, a moment before SLURM sees the jobs end.
    final = {"0": "COMPLETED", "1": "FAILED"}
    wait_for(lambda: all(job_field(slurm, f"{array_id}_{i}", "JobState") == state for i, state in final.items()),
             30, f"SLURM to record {final}")


def test_detached_submit_returns_at_once_and_the_grid_follows_the_teacher(slurm, tmp_path):
    sweep = tmp_path / "sweep"
    out = subprocess.run([sys.executable, "-m", "kd.runs.submit", "--detach", "alpha=0,0.5", "aug=none", "trainer.epochs=1",
                          *ON_SLURM, f"hydra.sweep.dir={sweep}"], cwd=tmp_path, env=slurm.env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    teacher = json.loads((sweep / "teacher" / "submitted.json").read_text())
    grid = json.loads((sweep / "submitted.json").read_text())
    assert f"squeue --me -j {teacher['array']},{grid['array']}" in out.stdout
    assert f"kd-report {sweep}" in out.stdout
    assert not list(sweep.glob("*/results.json"))  # returned before any cell ran: they wait for the teacher
    (script,) = (sweep / ".submitit").glob("*/*_submission.sh")
    assert f"#SBATCH --dependency=afterok:{teacher['array']}" in script.read_text()
    assert "#SBATCH --kill-on-invalid-dep=yes" in script.read_text()

    wait_for(lambda: len(list(sweep.glob("*/results.json"))) == 2, 240, "the grid's two cells")
    (teacher_result,) = collect_sweep(sweep / "teacher")
    cells = collect_sweep(sweep)
    assert teacher_result["status"] == "completed" and all(r["status"] == "completed" for r in cells)
    assert min(r["started_at"] for r in cells) >= teacher_result["ended_at"]  # afterok: the teacher first
    report = subprocess.run([sys.executable, "-m", "kd.report", str(sweep)], capture_output=True, text=True)
    assert report.returncode == 0 and "missing" not in report.stdout, report.stdout + report.stderr


def test_a_cell_trains_data_parallel_over_two_tasks_of_one_job(slurm, tmp_path):
    """hydra.launcher.tasks_per_node=2: the pack is one job of two tasks, each a gloo rank (submitit's environment
    gives rank, world size and master address); rank 0 alone writes the cell's results."""
    sweep = tmp_path / "sweep"
    args = ["-m", "alpha=0", "aug=none", "trainer.epochs=2", *ON_SLURM, "hydra.launcher.tasks_per_node=2",
            "hydra.launcher.cpus_per_task=1", "trainer.devices=2", f"hydra.sweep.dir={sweep}"]
    out = subprocess.run([sys.executable, str(TRAIN_SCRIPT), *args], cwd=tmp_path, env=slurm.env,
                         capture_output=True, text=True, timeout=540)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (result,) = collect_sweep(sweep)
    assert result["status"] == "completed"
    assert result["distributed"]["world_size"] == 2 and result["distributed"]["backend"] == "gloo"
    (script,) = (sweep / ".submitit").glob("*/*_submission.sh")
    assert "#SBATCH --ntasks-per-node=2" in script.read_text()
    logs = "".join(p.read_text() for p in (sweep / ".submitit").glob("*/*_0_log.*"))
    assert "data-parallel: rank 0 of 2 (gloo)" in logs
