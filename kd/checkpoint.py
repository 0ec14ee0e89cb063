"""Crash-safe checkpoints: written to a temp file, fsynced, then renamed over the last good one.

Loading uses `weights_only=True`, so a checkpoint can never run code.
"""
from __future__ import annotations

import os
import pickle
import random
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, or for another model; the message says which file and the fix."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint that torch cannot read at all (cut short, emptied, overwritten): set_aside keeps it."""


def set_aside(path: Path) -> Path:
    """Rename a file kd cannot read to `<name>.corrupt-<UTC time>` beside it, so that the work it held is redone
    while the file stays for whoever wants to look into it: kd never deletes what it could not read."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    kept = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while kept.exists():  # two in one second: never replace an earlier one
        kept, n = path.with_name(f"{path.name}.corrupt-{stamp}-{n}"), n + 1
    path.rename(kept)
    return kept


def save_atomic(obj: Any, path: Path) -> None:
    """Write `obj` so that `path` always holds either the old or the complete new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:  # a full disk, a lost mount (torch's zip writer raises RuntimeError)
        tmp.unlink(missing_ok=True)
        raise CheckpointError(
            f"could not write {path} ({type(err).__name__}: {err}); the previous {path.name}, if any, is "
            f"intact. Free space (or fix the dir) and rerun the same command to resume from it."
        ) from err
    except BaseException:  # Ctrl-C or a signal mid-write: leave no half-written temp file
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def load_checkpoint(path: Path, what: str, fix: str) -> dict:
    """Load a checkpoint dict with `weights_only=True`, turning any failure into a clear error."""
    if not path.is_file():
        raise CheckpointError(f"{what} {path} does not exist. {fix}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's own text suggests weights_only=False, the one thing not to do with a file one did not write.
        refused = re.search(r"GLOBAL (\S+)", str(err))
        if refused is not None:
            raise CheckpointError(
                f"{what} {path} holds a pickled Python object ({refused.group(1).rstrip('.')}), not only tensors; "
                f"kd loads checkpoints with weights_only=True and refuses it, as unpickling it could run code. {fix}"
            ) from None
        raise CorruptCheckpointError(f"{what} {path} is truncated or corrupt (not a torch checkpoint). {fix}") from None
    except Exception as err:  # a bad file fails torch.load in many ways (even a KeyError for some bytes)
        reason = ": ".join(filter(None, [type(err).__name__, str(err).split(". ")[0]]))  # torch's first sentence
        raise CorruptCheckpointError(f"{what} {path} is truncated or corrupt ({reason}). {fix}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{what} {path} holds a {type(state).__name__}, not a kd checkpoint dict. {fix}")
    return state


def rng_state(generator: torch.Generator) -> dict:
    """Every random state a run draws from, so that a resumed run continues the same stream."""
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generator": generator.get_state(),
    }


def set_rng_state(state: dict, generator: torch.Generator) -> None:
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])
    generator.set_state(state["generator"])
