"""Which device a job trains on, why, and which speed switches take effect there.

`trainer.device=auto` picks CUDA when torch can use it, else the CPU; the choice and its reason are
logged at the start of every job, and a CPU fallback on a CUDA build of torch (a driver too old for
the installed CUDA, a node without its GPU) is a warning, not a silent 100x slowdown. bf16 autocast
and torch.compile are CUDA-only: what a job records is what it ran with, not what it asked for.
"""
from __future__ import annotations

import logging
import os
import re
import warnings
from typing import Any

import torch
from omegaconf import DictConfig

from kd.training.capture import plan_compile

log = logging.getLogger(__name__)

VALID_DEVICES = "auto, cpu, cuda, cuda:N (N a GPU index), mps"
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


class DeviceError(ValueError):
    """trainer.device names no device kd can train on here."""


def _cuda_unavailable_reason() -> str | None:
    """None if torch can use CUDA; else why not, as far as torch says (its init warning, if any)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if torch.cuda.is_available():
            return None
    said = [str(w.message).strip() for w in caught]
    if said:
        return "; ".join(said)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return f"no usable GPU among CUDA_VISIBLE_DEVICES {visible!r}"
    return "no NVIDIA driver or GPU found"


def check_device(name: str, here: bool = True) -> None:
    """Refuse a trainer.device that is no device name, or (`here`) names a device this machine lacks; a sweep
    checked where it is submitted (a SLURM login node without a GPU) checks the name only."""
    if not _DEVICE.fullmatch(name):
        raise DeviceError(f"trainer.device={name} is not a device; use one of {VALID_DEVICES}")
    if not here:
        return
    if name.startswith("cuda"):
        reason = _cuda_unavailable_reason()
        if reason is not None:
            raise DeviceError(f"trainer.device={name} but torch cannot use CUDA here ({reason}); use "
                              f"trainer.device=cpu or auto")
        index = torch.device(name).index
        if index is not None and index >= torch.cuda.device_count():
            raise DeviceError(f"trainer.device={name} but only {torch.cuda.device_count()} CUDA device(s) are "
                              f"visible; use cuda:0..cuda:{torch.cuda.device_count() - 1}")
    if name == "mps" and not torch.backends.mps.is_available():
        raise DeviceError("trainer.device=mps but torch cannot use MPS here; use trainer.device=cpu or auto")


def resolve_device(name: str) -> tuple[torch.device, str]:
    """The device for trainer.device=`name` (checked by check_device) and why it was chosen, in words.

    Logs the choice; a CPU chosen by auto on a CUDA build of torch is a warning.
    """
    check_device(name)
    if name != "auto":
        device, why = torch.device(name), f"trainer.device={name}"
    else:
        reason = _cuda_unavailable_reason()
        if reason is None:
            device, why = torch.device("cuda"), "trainer.device=auto found CUDA"
        elif torch.version.cuda is not None:
            device = torch.device("cpu")
            why = (f"trainer.device=auto: torch {torch.__version__} is a CUDA build but torch.cuda.is_available() "
                   f"is False: {reason}; the run continues on the CPU")
            log.warning("device: cpu (%s)", why)
            return device, why
        else:
            device, why = torch.device("cpu"), f"trainer.device=auto: torch {torch.__version__} has no CUDA"
    log.info("device: %s (%s)", describe_device(device), why)
    return device, why


def describe_device(device: torch.device) -> str:
    """'cuda:0 (NVIDIA H200)' or 'cpu'."""
    if device.type != "cuda":
        return str(device)
    index = device.index if device.index is not None else torch.cuda.current_device()
    return f"cuda:{index} ({torch.cuda.get_device_name(index)})"


def speed_switches(trainer: DictConfig, device: torch.device) -> dict[str, Any]:
    """The speed switches as they take effect on `device` (bf16 and compile are CUDA-only), for the record."""
    cuda = device.type == "cuda"
    plan = plan_compile(trainer, device)
    return {"bf16": bool(trainer.bf16) and cuda, "compile": plan.mode is not None, "graph_capture": plan.captures,
            "channels_last": bool(trainer.channels_last),
            "cudnn_benchmark": bool(trainer.cudnn_benchmark) and cuda and not trainer.deterministic}
