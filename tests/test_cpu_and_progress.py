"""CPUs as a newcomer meets them: results name the CPU that made them, a busy machine is named once, and a
running grid says how far it is and when it will end."""
from __future__ import annotations

import logging
import os
import re
import time

import pytest
import torch

from conftest import FAST, run_cli
from kd.training.cpu import cpu_capability, share_cores_when_busy, usable_cores, warn_if_busy
from kd.report.provenance import sweep_provenance
from kd.runs.provenance import environment
from kd.runs.results import collect_sweep
from reliability import ONE_THREAD


def test_the_environment_names_the_cpu_and_its_vector_capability():
    env = environment(torch.device("cpu"))
    assert env["cpu_model"] and env["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert env["cpu_threads"] == torch.get_num_threads() and env["gpu"] is None


def test_the_report_warns_when_cells_ran_on_cpus_of_another_capability():
    env = environment(torch.device("cpu"))
    cells = [{"status": "completed", "seed": 0, "environment": env},
             {"status": "completed", "seed": 0, "environment": {**env, "cpu_capability": "NO_AVX"}}]
    _, warnings = sweep_provenance(cells)
    (warning,) = [w for w in warnings if w.startswith("the cells ran under different cpu_capability")]
    assert "NO_AVX" in warning and cpu_capability() in warning


def test_a_busy_machine_is_named_once_and_a_free_one_not(monkeypatch, caplog):
    cores = len(os.sched_getaffinity(0))
    caplog.set_level(logging.WARNING, logger="kd.training.cpu")
    monkeypatch.setattr(os, "getloadavg", lambda: (1.0, 1.0, 1.0))  # this process alone
    warn_if_busy(cores)
    assert not caplog.records
    monkeypatch.setattr(os, "getloadavg", lambda: (cores + 1.0, 1.0, 1.0))  # `cores` other runnable processes
    warn_if_busy(cores)
    (record,) = caplog.records
    assert "the machine is busy" in record.getMessage() and "OMP_WAIT_POLICY=PASSIVE" in record.getMessage()


@pytest.mark.slow
def test_a_grid_prints_its_estimate_progress_with_eta_and_its_wall_time(tmp_path):
    out = tmp_path / "grid"
    done = run_cli(["-m", *FAST, "teacher=resnet8", "trainer.epochs=3", "alpha=0,0.5", "aug=none,fc",
                    f"hydra.sweep.dir={out}"], cwd=tmp_path, env=ONE_THREAD)
    assert done.returncode == 0, done.stderr[-3000:]
    log = done.stdout + done.stderr
    assert re.search(r"grid: 2 pack\(s\); estimated total ~\d+", log)
    assert re.search(r"progress: 3 of 3 epochs, 2 cell\(s\), \d+ images/s; pack 2/2 ends in \d+s; grid ends in ~\d+s", log)
    assert re.search(r"progress: \d of \d epochs, 1 cell\(s\), \d+ images/s; teacher ends in", log)
    assert re.search(r"this multirun took \d+", done.stdout)
    assert all(r["environment"]["cpu_capability"] == cpu_capability() for r in collect_sweep(out))


def test_a_grid_over_pairs_has_a_teacher_per_table_and_no_warning_but_one_table_with_two_does():
    def cell(pair: str, sha: str, aug: str) -> dict:
        return {"status": "completed", "seed": 0, "aug": aug, "alpha": 0.5, "teacher": pair.split("-")[0],
                "teacher_top1": 70.0, "teacher_sha256": sha, "teacher_checkpoint": f"{sha}.pt",
                "overrides": {"pair": pair, "aug": aug, "alpha": "0.5"}}

    pairs = [cell("vgg13-vgg8", "a" * 64, "none"), cell("vgg13-vgg8", "a" * 64, "fc"),
             cell("wrn40_2-wrn16_2", "b" * 64, "none"), cell("wrn40_2-wrn16_2", "b" * 64, "fc")]
    lines, warnings = sweep_provenance(pairs)
    assert not [w for w in warnings if "different teachers" in w] and sum("teacher " in line for line in lines) == 2
    pairs[1]["teacher_sha256"] = "c" * 64  # one table (vgg13-vgg8) whose cells learned from two teachers
    (warning,) = [w for w in sweep_provenance(pairs)[1] if "different teachers" in w]
    assert warning.startswith("the cells of seed 0 in the table pair=vgg13-vgg8 used 2 different teachers")


def test_a_busy_machine_makes_idle_threads_sleep_unless_the_user_chose(monkeypatch):
    from kd.training import cpu

    cores = usable_cores()
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setattr(cpu, "load_at_start", lambda: 0.0)  # this process alone
    assert share_cores_when_busy(cores) is None and "OMP_WAIT_POLICY" not in os.environ
    monkeypatch.setattr(cpu, "load_at_start", lambda: 1.0)  # one other process running
    line = share_cores_when_busy(cores)
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    assert line.startswith(f"kd: the machine is busy (other work worth 1.0 of {cores} core(s))")
    assert "no result changes" in line
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # the user's choice stands
    assert share_cores_when_busy(cores) is None and os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="Linux's /proc")
def test_a_process_that_just_started_spinning_counts_at_once_and_a_niced_one_not():
    """The load average needs a minute to show a new competitor; the runnable tasks show it now. A nice'd one gets
    next to no time beside a job, so it does not count."""
    import subprocess
    import sys

    from kd.training.cpu import runnable_others

    before = runnable_others()
    for nice, counted in ((0, 1), (19, 0)):
        spinner = subprocess.Popen(["nice", "-n", str(nice), sys.executable, "-c", "while True: pass"])
        try:
            time.sleep(0.5)
            assert runnable_others() >= before + counted if counted else runnable_others() <= before
        finally:
            spinner.kill()
            spinner.wait()


def test_kd_train_sets_the_wait_policy_before_torch_loads():
    """OpenMP reads OMP_WAIT_POLICY once, when torch loads: kd/train.py must not have loaded it by then."""
    import subprocess
    import sys

    code = ("import sys; sys.argv = ['kd/train.py']; import kd.train, kd.runs.interrupts, kd.runs.typed_overrides, "
            "kd.training.cpu; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
