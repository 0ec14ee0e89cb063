"""A real kd grid (`python -m kd.train -m`), timed end to end, with the share of it its first epochs took.

    python benchmarks/multirun.py --device cuda            # digits, 2 alphas x 2 augs, 3 epochs, teacher included
    python benchmarks/multirun.py --quick                  # CPU smoke: 8x8 digits, 2 epochs (seconds)

The grid is `data=digits alpha=0,0.5 aug=none,fc logger=none` (2 packs of 2 cells) with a teacher trained from
scratch in the run's own cache (teacher.cache_dir), so that every run does the same work; the compile caches
(TORCHINDUCTOR_CACHE_DIR, TRITON_CACHE_DIR) are the environment's. kd does not log torch.compile's time, so it
is read off the epochs: a pack's first epoch compiles its step and its evaluation (and on CUDA searches cuDNN's
kernels), the later ones do not; first epoch - mean of the later ones, summed over the packs and the teacher, is
the compile (and warm-up) time. A pack's epoch is its shared training pass (`train_time_s`, the same in each
of its cells) and every cell's evaluation (each cell's `eval_time_s`). Everything else in the wall time (Python
and CUDA start, the data,
the epochs themselves) is the rest.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from kd.runs.overrides import swept_keys
from kd.runs.results import collect_sweep

GRID = ["data=digits", "alpha=0,0.5", "aug=none,fc", "logger=none", "teacher.min_top1=0"]


def first_epoch_extra(epoch_s: list[float]) -> float | None:
    """The first epoch's time beyond a later one's (their mean); None with a single epoch."""
    if len(epoch_s) < 2:
        return None
    return epoch_s[0] - sum(epoch_s[1:]) / len(epoch_s[1:])


def pack_epochs(sweep: Path) -> dict[str, list[float]]:
    """Each pack's epoch times (its training pass and all its cells' evaluations), keyed by the swept values its
    cells share (all but alpha)."""
    swept = swept_keys(sweep) - {"alpha"}
    packs: dict[str, list[list[float]]] = {}
    for result in collect_sweep(sweep):
        key = ",".join(f"{k}={v}" for k, v in sorted(result["overrides"].items()) if k in swept)
        packs.setdefault(key, []).append([(row["train_time_s"], row["eval_time_s"]) for row in result["history"]])
    return {key: [rows[0][0] + sum(evaluation for _, evaluation in rows) for rows in zip(*cells)]
            for key, cells in packs.items()}


def teacher_epochs(cache: Path) -> list[float]:
    """The teacher's epoch times, from its work checkpoint in the run's teacher cache."""
    (work,) = cache.glob("*.work/checkpoint.pt")
    return [row["epoch_time_s"] for row in torch.load(work, map_location="cpu", weights_only=False)["history"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--epochs", type=int, default=3, help="of every cell and of the teacher (>= 2 to split off "
                        "the first epoch's compile)")
    parser.add_argument("--json", default="multirun.json")
    parser.add_argument("--work-dir", default=None, help="where the sweep and its teacher go (default: a new tmp dir)")
    parser.add_argument("--quick", action="store_true", help="CPU smoke: 8x8 digits, 2 epochs")
    parser.add_argument("overrides", nargs="*", help="more Hydra overrides for the grid")
    args = parser.parse_args()
    extra = ["data.image_size=8"] if args.quick else []
    if args.quick:
        args.epochs = 2
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="kd-multirun-"))
    sweep, cache = work / "sweep", work / "teachers"
    command = [sys.executable, "-m", "kd.train", "-m", *GRID, *extra, f"trainer.device={args.device}",
               f"trainer.epochs={args.epochs}", f"teacher.epochs={args.epochs}", f"teacher.cache_dir={cache}",
               f"hydra.sweep.dir={sweep}", *args.overrides]
    print(" ".join(command), flush=True)
    started = time.perf_counter()
    done = subprocess.run(command)
    wall = time.perf_counter() - started
    out = {"command": command, "device": args.device, "epochs": args.epochs, "exit": done.returncode, "wall_s": wall}
    if done.returncode == 0:
        packs = {"teacher": teacher_epochs(cache), **pack_epochs(sweep)}
        extras = [first_epoch_extra(times) for times in packs.values()]
        compile_s = None if None in extras else sum(extras)
        out.update(packs={key: {"epoch_s": times, "first_epoch_extra_s": x}
                          for (key, times), x in zip(packs.items(), extras)},
                   cells=len(collect_sweep(sweep)), epochs_s=sum(sum(times) for times in packs.values()),
                   compile_s=compile_s, compile_share=None if compile_s is None else compile_s / wall)
        share = "-" if compile_s is None else f"{compile_s:.1f} s ({100 * compile_s / wall:.0f}%)"
        print(f"multirun: {out['cells']} cells in {len(packs) - 1} packs + the teacher, {args.epochs} epochs each: "
              f"wall {wall:.1f} s, first epochs' extra (compile, warm-up) {share}")
    Path(args.json).write_text(json.dumps(out, indent=2))
    if done.returncode != 0:
        raise SystemExit(f"the multirun failed (exit {done.returncode}); its output is above")


if __name__ == "__main__":
    main()
