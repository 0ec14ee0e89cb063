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


def start(args: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(TRAIN_SCRIPT), *args], cwd=cwd, stdout=log.open("w"),
                            stderr=subprocess.PIPE, text=True)


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
