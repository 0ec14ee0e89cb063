"""Where a result came from: kd's version and commit, the library versions, the machine, the times.

Recorded in every results.json and W&B config, so that two tables that disagree can be traced to a
torch upgrade, a dirty checkout or a node with another GPU (kd-report warns when a sweep's cells differ).
"""
from __future__ import annotations

import datetime
import importlib.metadata
import platform
import socket
import subprocess
from pathlib import Path
from typing import Any, Optional

import torch
import torchvision

from kd.training.cpu import cpu_capability, cpu_model

REPO = Path(__file__).resolve().parents[2]
# What must agree between the cells of one table for their numbers to be comparable bit for bit.
# The CPU's model, its vector capability and the thread count change floating-point results too (other kernels,
# other summation orders), as do the GPU and its compute capability.
VERSION_KEYS = ("kd_version", "git_commit", "git_dirty", "python", "torch", "torchvision", "cuda", "cudnn",
                "cpu_model", "cpu_capability", "cpu_threads", "gpu", "gpu_capability")


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _git(*args: str) -> Optional[str]:
    try:
        out = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def kd_version() -> str:
    """kd's installed version; for a checkout run from PYTHONPATH that pip never installed (a borrowed GPU machine's
    copy), its git commit; "not installed" when it is neither."""
    try:
        return importlib.metadata.version("kd")
    except importlib.metadata.PackageNotFoundError:
        return _git("rev-parse", "HEAD") or "not installed"


def environment(device: torch.device) -> dict[str, Any]:
    """The software and machine a job runs on."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "kd_version": kd_version(),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": None if status is None else bool(status),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({cpu_model()})",
        "cpu_model": cpu_model(),
        "cpu_capability": cpu_capability(),
        "cpu_threads": torch.get_num_threads(),
        **gpu_info(device),
        "host": socket.gethostname(),
    }


def gpu_info(device: torch.device) -> dict[str, Any]:
    """The GPU's name, compute capability and driver (None on a CPU job)."""
    if device.type != "cuda":
        return {"gpu": None, "gpu_capability": None, "gpu_driver": None}
    major, minor = torch.cuda.get_device_capability(device)
    driver = _nvidia_smi("--query-gpu=driver_version", "--format=csv,noheader")
    return {"gpu": torch.cuda.get_device_name(device), "gpu_capability": f"{major}.{minor}",
            "gpu_driver": driver.splitlines()[0] if driver else None}


def _nvidia_smi(*args: str) -> Optional[str]:
    try:
        out = subprocess.run(["nvidia-smi", *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None
