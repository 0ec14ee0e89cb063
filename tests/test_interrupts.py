"""Ctrl-C and SIGTERM mid-epoch, sent to a real `python kd/train.py -m` process: one line says what was kept and
the command that resumes; that command, run as printed, finishes the same sweep."""
from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import FAST, TRAIN_SCRIPT
from kd.runs.results import collect_sweep

GRID = [a for a in FAST if not a.startswith("trainer.epochs")] + ["alpha=0,0.5", "aug=none", "trainer.epochs=12"]


def as_a_terminal_starts_it() -> None:
    """Ctrl-C's default action, as a shell gives its foreground job: a process started in the background of a
    non-interactive shell (`cmd &` in a script, as a CI may run pytest) inherits SIGINT ignored, and so would its
    kd child, which then trains on through the test's Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(args: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(TRAIN_SCRIPT), *args], cwd=cwd, stdout=log.open("w"),
                            stderr=subprocess.PIPE, text=True, preexec_fn=as_a_terminal_starts_it)


def wait_for(log: Path, text: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)


@pytest.mark.chaos
@pytest.mark.parametrize("sig, code, reason", [(signal.SIGINT, 130, "interrupted (Ctrl-C)"),
                                               (signal.SIGTERM, 143, "stopped by SIGTERM")])
def test_a_signal_mid_epoch_prints_what_was_kept_and_the_command_that_resumes(sig, code, reason, tmp_path,
                                                                             isolated_kd_home):
    log = tmp_path / "stdout.log"
    proc = start(["-m", *GRID], tmp_path, log)
    wait_for(log, "epoch 2/12", proc)
    proc.send_signal(sig)
    stderr = proc.communicate(timeout=120)[1]
    assert proc.returncode == code, stderr[-3000:]
    assert "Traceback" not in stderr
    (sweep,) = (tmp_path / "multirun").glob("*/*")
    head, command = stderr.strip().splitlines()[-2:]
    assert head.startswith(f"kd: {reason}; cells: 2 interrupted") and head.endswith(f"in {sweep.relative_to(tmp_path)}. "
                                                                                    "Resume with:")
    assert [r["status"] for r in collect_sweep(sweep)] == ["interrupted"] * 2
    if sig == signal.SIGTERM:  # the job's own log says it too (a scheduler's kill used to leave no trace)
        assert "SIGTERM received: 2 cell(s) stop here" in log.read_text()
        assert all(json.loads((Path(r["job_dir"]) / "results.json").read_text())["error"].startswith("Terminated")
                   for r in collect_sweep(sweep))

    args = shlex.split(command)
    assert args[:2] == ["python", os.path.relpath(TRAIN_SCRIPT, tmp_path)] or args[1] == str(TRAIN_SCRIPT)
    resumed = subprocess.run([sys.executable, *args[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stdout.count("resumed from") == 2  # both cells continue from their checkpoints, in the same dir
    assert [r["status"] for r in collect_sweep(sweep)] == ["completed"] * 2
    assert len(list((tmp_path / "multirun").glob("*/*"))) == 1


def test_the_resume_command_names_the_output_dir_once():
    from kd.runs.interrupts import resume_command

    assert resume_command(["kd/train.py", "alpha=0.5", "hydra.run.dir=old"], Path("outputs/x"), multirun=False) == (
        "python kd/train.py alpha=0.5 hydra.run.dir=outputs/x")
    assert resume_command(["/venv/bin/kd-train", "-m", "aug=none,fc", "seed=0"], Path("multirun/a b"), True) == (
        "kd-train -m aug=none,fc seed=0 'hydra.sweep.dir=multirun/a b'")


def test_what_was_kept_counts_cells_never_started_and_those_with_no_epoch_to_resume(tmp_path):
    """The line once counted only cells with a results.json and promised each 'its last finished epoch', also
    when the teacher was the one interrupted and no cell had finished an epoch."""
    from omegaconf import OmegaConf

    from kd.runs.interrupts import what_was_kept
    from kd.runs.results import write_results

    OmegaConf.save({"hydra": {"overrides": {"task": ["alpha=0,0.5,1.0", "aug=none,fc", "data=digits"]}}},
                   tmp_path / "multirun.yaml")  # as Hydra writes it when a multirun starts: 6 cells
    cells = {"alpha=0,aug=none": "completed", "alpha=0.5,aug=none": "interrupted", "alpha=1.0,aug=none": "interrupted"}
    for name, status in cells.items():
        (tmp_path / name).mkdir()
        write_results(tmp_path / name, {"stage": "student", "status": status})
    (tmp_path / "alpha=0.5,aug=none" / "checkpoint.pt").write_bytes(b"an epoch's checkpoint")
    kept = what_was_kept(tmp_path, multirun=True)
    assert kept.startswith("cells: 1 interrupted (each resumes from its last finished epoch), 1 interrupted before "
                           "finishing an epoch (each starts again from its first"), kept
    assert kept.endswith("1 completed (skipped), 3 not started"), kept

    for name in cells:  # the teacher was training: every cell of the pack stopped before its first epoch
        write_results(tmp_path / name, {"stage": "student", "status": "interrupted"})
    (tmp_path / "alpha=0.5,aug=none" / "checkpoint.pt").unlink()
    kept = what_was_kept(tmp_path, multirun=True)
    assert "last finished epoch" not in kept.split(";")[0] and "a teacher that was training resumes" in kept, kept
