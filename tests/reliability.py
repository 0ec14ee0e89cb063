"""Helpers for the reliability tests (resume, bad input, safety): comparing runs, watching files."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import kd.training.engine
from kd.runs.locking import LOCK_FILE, OWNER_FILE

# A CPU result depends on the number of threads (reductions split differently), so every run that is
# compared with another uses one; it also keeps a run fast where the 2 cores are shared.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}
TIMING_KEYS = ("epoch_time_s", "train_time_s", "eval_time_s", "images_per_s")


@pytest.fixture
def one_torch_thread():
    """In-process runs in one thread, like the subprocesses; PyTorch's global switches restored after."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)


@pytest.fixture
def no_training(monkeypatch):
    """A bad input must be caught before the first training step (a teacher's included)."""
    def refuse(*args, **kwargs):
        raise AssertionError("training started despite a bad input")

    monkeypatch.setattr(kd.training.engine, "train_one_epoch", refuse)


def metrics(results: dict) -> dict:
    """Everything a run measured, without its wall-clock timings."""
    keys = ("final_top1", "final_top5", "best_top1", "teacher_top1")
    history = [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in results["history"]]
    return {**{k: results[k] for k in keys}, "history": history}


def saved_epoch(checkpoint: Path) -> int:
    """The epoch a run's checkpoint.pt holds (0 before the first); replaced by an atomic rename, never half read."""
    return torch.load(checkpoint, weights_only=True)["epoch"] if checkpoint.is_file() else 0


def same_weights(a: Path, b: Path) -> bool:
    """Whether two checkpoints hold bit-identical model weights."""
    sa, sb = (torch.load(p, weights_only=True)["model"] for p in (a, b))
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def snapshot(root: Path) -> dict[str, tuple[int, str]]:
    """Every file under `root` with its mtime and content hash: proof that nothing was written or deleted.

    The job dir's lock files are left out: taking the lock (to check a dir) is not writing a result."""
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(root.rglob("*")) if p.is_file() and p.name not in (LOCK_FILE, OWNER_FILE)}


def last_lines(text: str, n: int = 4) -> str:
    """What a user reads at the end of a failed command."""
    return "\n".join(text.strip().splitlines()[-n:])


def randomised(net: torch.nn.Module) -> torch.nn.Module:
    """Random BatchNorm statistics and affine parameters, so that a wrongly mapped BN shows in the logits."""
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    return net.eval()


def kill_after_checkpoint(script: Path, args: list[str], checkpoint: Path, epoch: int, log: Path, then: float) -> None:
    """Start `script <args>` and SIGKILL it `then` seconds after `checkpoint` holds `epoch` epochs."""
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, str(script), *args], env={**os.environ, **ONE_THREAD},
                                stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while proc.poll() is None and saved_epoch(checkpoint) < epoch:
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.02)
    time.sleep(then)
    proc.kill()  # SIGKILL
    proc.wait()
