"""Ctrl-C and SIGTERM: one line that says what was kept and the command that resumes, instead of a traceback.

A SIGTERM (what `kill`, a scheduler or a container runtime sends) ends Python at once by default: no log line,
no status in results.json. Here it raises `Terminated`, a SystemExit, so that it takes Ctrl-C's path: each
cell writes results.json with status `interrupted`, keeps its last finished epoch's checkpoint, and its W&B run
is marked preempting. Where something else already handles SIGTERM (submitit's requeue on SLURM) it is left alone.
"""
from __future__ import annotations

import contextlib
import os
import shlex
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Iterator, Optional

from kd.runs.results import RESULTS_FILE, CorruptResultsError, collect_sweep, read_results
from kd.runs.search import is_search

SIGINT_EXIT, SIGTERM_EXIT = 130, 143  # 128 + the signal's number, as a shell reports them


class Terminated(SystemExit):
    """SIGTERM, raised where the process was, so that every `finally` runs and results.json is written."""

    def __init__(self) -> None:
        super().__init__(SIGTERM_EXIT)

    def __str__(self) -> str:
        return "SIGTERM received"


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within it, SIGTERM raises Terminated; a handler someone else installed (submitit's) stays in place."""
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def terminate(signum, frame) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process as usual
        raise Terminated()

    signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def resume_command(argv: list[str], output_dir: Path, multirun: bool) -> str:
    """The command that was run, with its output dir named: rerun as typed, a dated sweep dir would be a new one."""
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    program = argv[0]
    relative = os.path.relpath(program)
    script = program if relative.startswith("..") else relative  # kd/train.py from a checkout, else its full path
    prefix = ["python", script] if program.endswith(".py") else [Path(program).name]
    kept = [a for a in argv[1:] if not a.startswith((f"{key}=", f"+{key}=", f"++{key}="))]
    return shlex.join([*prefix, *kept, f"{key}={output_dir}"])


def what_was_kept(output_dir: Path, multirun: bool) -> str:
    """`cells: 2 interrupted (each resumes from its last finished epoch), 1 completed (skipped), 12 not started`,
    from the results files, the cells' checkpoints and the sweep's grid."""
    if multirun:
        results = [r for r in collect_sweep(output_dir) if r.get("stage") != "teacher"]
        total = grid_size(output_dir)
    else:
        path = output_dir / RESULTS_FILE
        try:
            results = [{**read_results(path), "job_dir": str(output_dir)}] if path.is_file() else []
        except CorruptResultsError:
            results = [{"status": "corrupt", "job_dir": str(output_dir)}]
        total = 1
    resumable = sum(r.get("status") == "interrupted" and (Path(r["job_dir"]) / "checkpoint.pt").is_file()
                    for r in results)
    statuses = Counter(r.get("status", "running") for r in results)
    parts = [f"{resumable} interrupted (each resumes from its last finished epoch)" if resumable else "",
             f"{statuses['interrupted'] - resumable} interrupted before finishing an epoch (each starts again from "
             "its first; a teacher that was training resumes from its own last epoch)"
             if statuses["interrupted"] > resumable else "",
             f"{statuses['completed']} completed (skipped)" if statuses["completed"] else "",
             *(f"{n} {status}" for status, n in sorted(statuses.items()) if status not in ("interrupted", "completed")),
             f"{total - len(results)} not started" if total is not None and total > len(results) else ""]
    parts = [p for p in parts if p]
    return "cells: " + ", ".join(parts) if results else "no cell had started"


def grid_size(sweep_dir: Path) -> Optional[int]:
    """How many cells the sweep's command makes (Hydra's own expansion of multirun.yaml); None if unknown."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf import OmegaConf

    saved = sweep_dir / "multirun.yaml"
    if not saved.is_file():
        return None
    config = OmegaConf.load(saved)
    if OmegaConf.select(config, "hydra.mode") is not None and is_search(config.hydra):  # its cells are its trials
        return int(config.hydra.sweeper.n_trials)
    overrides = list(config.hydra.overrides.task)
    try:
        (cells,) = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(overrides), None)
    except HydraException:  # another sweeper's grid: its size is its own
        return None
    return len(cells)


def interrupted_message(reason: str, argv: list[str], output_dir: Optional[Path], multirun: bool) -> str:
    if output_dir is None:  # stopped before Hydra made the output dir: nothing was written
        return f"kd: {reason} before any job started; nothing was written."
    return (f"kd: {reason}; {what_was_kept(output_dir, multirun)} in {output_dir}. Resume with:\n"
            f"  {resume_command(argv, output_dir, multirun)}")


def exit_code(err: BaseException) -> int:
    return SIGTERM_EXIT if isinstance(err, Terminated) else SIGINT_EXIT


def reason_of(err: BaseException) -> str:
    return "stopped by SIGTERM" if isinstance(err, Terminated) else "interrupted (Ctrl-C)"


def report_and_exit(err: BaseException, output_dir: Optional[Path], multirun: bool) -> None:
    print(interrupted_message(reason_of(err), sys.argv, output_dir, multirun), file=sys.stderr)
    sys.exit(exit_code(err))
