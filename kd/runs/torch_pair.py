"""torch and torchvision must be a matching pair: checked before Hydra starts, said in one message.

A torchvision built for another torch fails on import (`operator torchvision::nms does not exist`), which
Hydra reports as `Error locating target 'kd.runs.checks.CheckEveryCell'`, far from the cause. Each torchvision
release goes with one torch release: torchvision 0.(m + 15) with torch 2.m (torchvision's README table, from
torch 2.5 / torchvision 0.20 on).
"""
from __future__ import annotations

import re
from importlib import metadata
from typing import Optional

MINOR_OFFSET = 15  # torchvision 0.20 <-> torch 2.5, ..., 0.29 <-> 2.14


def base_version(text: str) -> str:
    """`2.14.1+cu130` -> `2.14.1`."""
    return text.split("+", 1)[0]


def matching_torchvision(torch_version: str) -> Optional[str]:
    """`2.14.1` -> `0.29`: the torchvision minor release built for this torch; None outside the rule's range."""
    m = re.match(r"2\.(\d+)", base_version(torch_version))
    return f"0.{int(m.group(1)) + MINOR_OFFSET}" if m and int(m.group(1)) >= 5 else None


def matching_torch(torchvision_version: str) -> Optional[str]:
    """`0.29.1` -> `2.14`."""
    m = re.match(r"0\.(\d+)", base_version(torchvision_version))
    return f"2.{int(m.group(1)) - MINOR_OFFSET}" if m and int(m.group(1)) >= 20 else None


def mismatch_message(torch_version: str, torchvision_version: str, error: str) -> str:
    tv_for_torch, torch_for_tv = matching_torchvision(torch_version), matching_torch(torchvision_version)
    fixes = []
    if tv_for_torch is not None:
        fixes.append(f"pip install 'torchvision=={tv_for_torch}.*' (for the installed torch {torch_version})")
    if torch_for_tv is not None:
        fixes.append(f"pip install 'torch=={torch_for_tv}.*' (for the installed torchvision {torchvision_version})")
    how = " or ".join(fixes) or "install a torch and torchvision released together"
    return (f"kd: torchvision {torchvision_version} does not work with torch {torch_version}: {error}. They must "
            f"be a matching pair: {how}. On a CPU-only machine add --index-url https://download.pytorch.org/whl/cpu "
            f"to both.")


def check_torch_pair() -> None:
    """Import torch and torchvision as kd's jobs will; on failure, exit naming both versions and the fix."""
    try:
        import torch  # noqa: F401
        import torchvision  # noqa: F401
    except Exception as err:  # whatever the import raises (RuntimeError for a missing operator, ImportError, ...)
        versions = {}
        for name in ("torch", "torchvision"):
            try:
                versions[name] = metadata.version(name)
            except metadata.PackageNotFoundError:
                raise SystemExit(f"kd: {name} is not installed ({err}); pip install -e . installs it") from None
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SystemExit(mismatch_message(versions["torch"], versions["torchvision"], first_line)) from None
