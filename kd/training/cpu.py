"""The CPU a job runs on: what it is (results from another CPU differ in every digit), and whether it is free.

A CPU of another model or instruction set (torch's capability: AVX2, AVX512, ...) runs other kernels,
whose floating-point sums differ: the same command gives other digits, not other conclusions. The
model name and capability go to results.json's `environment`, which kd-report compares across cells.
"""
from __future__ import annotations

import logging
import os
import platform
from pathlib import Path
from typing import Optional

import torch

log = logging.getLogger(__name__)


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
    get = getattr(torch.backends.cpu, "get_cpu_capability", None)
    return get() if get is not None else None


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def warn_if_busy(threads: int) -> Optional[float]:
    """One warning when other work already loads the cores this job's `threads` will use; the load it saw."""
    try:
        load = os.getloadavg()[0]
    except OSError:  # not on every platform
        return None
    others = max(0.0, load - 1.0)  # this process, starting up, is one of the runnable ones
    cores = usable_cores()
    if others >= 1.0 and others + threads > cores:
        log.warning("the machine is busy: load average %.1f on %d core(s) before this job's %d thread(s) start; "
                    "they will share the cores, which can make this job several times slower (and its spinning "
                    "threads slow the others). Run it when the machine is free, or set OMP_WAIT_POLICY=PASSIVE to "
                    "make idle threads sleep (slower alone, fairer shared).", load, cores, threads)
    return load
