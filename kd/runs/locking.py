"""One writer per job dir: a job holds an exclusive lock on its output dir for as long as it runs.

Two processes on one dir (a sweep launched twice, a requeued task whose old process still runs,
a resume typed while the first run trains) would otherwise both train and overwrite each other's
checkpoints. The lock is an OS file lock (filelock): a killed holder's lock is released by the OS,
so a stale lock file never blocks.
"""
from __future__ import annotations

import contextlib
import logging
import os
import socket
from pathlib import Path
from typing import Iterator

from filelock import FileLock, Timeout

log = logging.getLogger(__name__)

LOCK_FILE = ".kd.lock"
OWNER_FILE = ".kd.lock.owner"  # who holds it, for the message of the one that finds it taken


class JobDirBusyError(RuntimeError):
    """Another live process is training in this job dir."""


def _holder(out_dir: Path) -> str:
    try:
        return (out_dir / OWNER_FILE).read_text().strip()
    except OSError:
        return "a process that has not yet said who it is"


@contextlib.contextmanager
def exclusive_job_dir(out_dir: Path, wait: bool) -> Iterator[None]:
    """Hold `out_dir`'s lock; if another process holds it, stop at once, or (`wait`) wait for it and say so."""
    lock = FileLock(str(out_dir / LOCK_FILE))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        holder = _holder(out_dir)
        if not wait:
            raise JobDirBusyError(
                f"{out_dir} is in use by another kd run ({holder}), which is still training there. Wait for it "
                f"to finish (then rerun this command to resume or skip it), stop it, or use another "
                f"hydra.run.dir / hydra.sweep.dir for a new run."
            ) from None
        log.warning("%s is in use by another kd run (%s); waiting for it to finish, then this cell is skipped if "
                    "it completed (or resumed if it stopped)", out_dir, holder)
        lock.acquire()
    try:
        (out_dir / OWNER_FILE).write_text(f"pid {os.getpid()} on host {socket.gethostname()}\n")
        yield
    finally:
        lock.release()
