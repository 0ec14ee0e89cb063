"""The CPU a job runs on: what it is (results from another CPU differ in every digit), and whether it is free.

A busy machine: beside other work, OpenMP's idle threads spin waiting for each other while the cores run
something else, which made a 2-core quickstart beside one nice'd process about 10x slower than alone. When
the load average says the cores are taken, kd makes idle threads sleep instead (OMP_WAIT_POLICY=PASSIVE, set
before torch loads), which changes no result: the thread count, and so every digit, stay those of a free machine.

A CPU of another model or instruction set (torch's capability: AVX2, AVX512, ...) runs other kernels,
whose floating-point sums differ: the same command gives other digits, not other conclusions. The
model name and capability go to results.json's `environment`, which kd-report compares across cells.
"""
from __future__ import annotations

import logging
import os
import platform
import time
from pathlib import Path
from typing import Optional

log = logging.getLogger(__name__)
PROC = Path("/proc")  # Linux: a dir per process, its threads under task/


def cpu_model() -> str:
    """The processor's marketing name (/proc/cpuinfo on Linux), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_capability() -> Optional[str]:
    """The vector instructions torch's CPU kernels use here (e.g. AVX2, AVX512); None on an old torch."""
    import torch  # here, not at the top: share_cores_when_busy runs before torch may load

    get = getattr(torch.backends.cpu, "get_cpu_capability", None)
    return get() if get is not None else None


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def other_load() -> Optional[float]:
    """The load average less this process (starting up, it is one of the runnable ones); None where unknown."""
    try:
        return max(0.0, os.getloadavg()[0] - 1.0)
    except OSError:  # not on every platform
        return None


def runnable_others(samples: int = 5, interval_s: float = 0.02) -> Optional[int]:
    """Other tasks (threads) running or ready to run right now at this process's priority or above (Linux's
    /proc/<pid>/task/<tid>/stat), the least of a few samples so that a passing short command does not count; None
    where /proc is missing. A nice'd task is left out: the scheduler gives it next to no time beside this job, and
    making this job's threads sleep for it only slowed the job (benchmarks/README.md)."""
    if not PROC.is_dir():
        return None
    own_nice = os.getpriority(os.PRIO_PROCESS, 0)
    counts = []
    for _ in range(samples):
        count = 0
        for stat in PROC.glob("[0-9]*/task/[0-9]*/stat"):
            if stat.parts[-4] == str(os.getpid()):
                continue
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):  # the task ended while we looked
                continue
            count += fields[0] == "R" and int(fields[16]) <= own_nice
        counts.append(count)
        time.sleep(interval_s)
    return min(counts)


def load_at_start() -> Optional[float]:
    """Other work on the cores as a job starts: the tasks runnable right now at this job's priority (the load
    average trails a competitor that began less than a minute ago, and counts nice'd ones); where /proc is
    missing, the load average."""
    now = runnable_others()
    return float(now) if now is not None else other_load()


def is_busy(others: Optional[float], threads: int) -> bool:
    return others is not None and others >= 1.0 and others + threads > usable_cores()


def share_cores_when_busy(threads: int) -> Optional[str]:
    """Before torch loads: on a busy machine, and unless the user chose a wait policy, make OpenMP's idle threads
    sleep; return the one line that says so (None when nothing changed)."""
    if "OMP_WAIT_POLICY" in os.environ:
        return None
    others = load_at_start()
    if not is_busy(others, threads):
        return None
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return (f"kd: the machine is busy (other work worth {others:.1f} of {usable_cores()} core(s)): idle threads "
            f"will sleep instead of spinning (OMP_WAIT_POLICY=PASSIVE), so that this job and the other work share the "
            f"cores; no result changes. Set OMP_WAIT_POLICY=ACTIVE to keep them spinning.")


def warn_if_busy(threads: int) -> Optional[float]:
    """One warning when other work already loads the cores this job's `threads` will use; the load it saw."""
    others = other_load()
    if not is_busy(others, threads):
        return None if others is None else others + 1.0
    sleeping = os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE"
    advice = ("its idle threads sleep (OMP_WAIT_POLICY=PASSIVE), which keeps the slowdown to the cores' share"
              if sleeping else "run it when the machine is free, or set OMP_WAIT_POLICY=PASSIVE to make idle threads "
              "sleep (slower alone, fairer shared)")
    log.warning("the machine is busy: load average %.1f on %d core(s) before this job's %d thread(s) start; they "
                "will share the cores, which can make this job several times slower; %s.", others + 1.0,
                usable_cores(), threads, advice)
    return others + 1.0
