"""Upload (or list) every offline W&B run of a sweep, the teachers' included.

    kd-sync <sweep dir>           # wandb sync of every run not uploaded yet (or a single run's dir)
    kd-sync <sweep dir> --list    # print the run dirs (synced ones marked) and upload nothing

`wandb sync <sweep dir>` misses the teachers: a teacher trains in its cache (KD_HOME/teachers/<name>.work),
outside any sweep, so that every sweep can reuse it; each student's results.json names that dir
(teacher_work_dir). A resumed job has one offline run dir per attempt, all of the same run: only the newest,
which re-logged the checkpointed epochs and so holds the whole history, is uploaded. Once uploaded, each
distilling student's use of its teacher's artifact is declared through W&B's public API (kd/tracking/lineage.py),
which offline runs cannot do.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Optional

from kd.runs.results import collect_sweep
from kd.tracking.lineage import declare_teacher_uses, teacher_uses
from kd.tracking.wandb_tracker import RUN_FILE, is_synced, newest_attempt, offline_run_dirs


def sweep_job_dirs(sweep_dir: Path) -> list[Path]:
    """The sweep's job dirs that opened a W&B run (finished or not), then the teachers' work dirs they used; a
    single run's dir is its own job dir."""
    jobs = sorted(p.parent for p in [*sweep_dir.glob(RUN_FILE), *sweep_dir.glob(f"*/{RUN_FILE}")])
    teachers = sorted({Path(r["teacher_work_dir"]) for r in collect_sweep(sweep_dir)
                       if r.get("teacher_work_dir") is not None})  # absent: alpha=0, unfinished, a given checkpoint
    return jobs + teachers


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="kd-sync", description=__doc__.split("\n")[0])
    parser.add_argument("sweep_dir", type=Path, help="a multirun dir: one job dir per grid cell")
    parser.add_argument("--list", action="store_true", help="only print the offline run dirs, one a line")
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        print(f"kd-sync: error: {args.sweep_dir} is not a directory; pass a sweep dir (e.g. multirun/<date>/<time>)",
              file=sys.stderr)
        return 2
    jobs = sweep_job_dirs(args.sweep_dir)
    runs = [d for job in jobs for d in offline_run_dirs(job)]
    newest = {d for job in jobs if (d := newest_attempt(job)) is not None}
    if args.list:
        print("\n".join(f"{d}{' (synced)' if is_synced(d) else ''}{'' if d in newest else ' (older attempt: skipped)'}"
                        for d in runs))
        return 0
    todo = [str(d) for d in runs if d in newest and not is_synced(d)]
    older = len(runs) - len(newest)
    if older:
        print(f"kd-sync: {older} older attempt(s) of resumed runs skipped: each run's newest attempt holds its whole "
              f"history (uploading both would log its first epochs twice)")
    if not todo:
        print(f"kd-sync: no offline run left to upload in {args.sweep_dir} ({len(runs)} already synced)")
        return 0
    code = subprocess.run([sys.executable, "-m", "wandb", "sync", *todo]).returncode
    uploaded = [job for job in jobs if str(newest_attempt(job)) in todo]
    uses = teacher_uses(uploaded)
    if code == 0 and uses:  # online now: each student's use of its teacher, which offline runs could not declare
        declared = declare_teacher_uses(uses)
        print(f"kd-sync: declared {declared} of {len(uses)} student run(s)' use of their teacher's artifact "
              f"(W&B's lineage graph: teacher -> student)")
    return code


if __name__ == "__main__":
    sys.exit(main())
