"""Packing: a grid's cells one at a time vs the cells of a pack (its alphas) trained together.

    python benchmarks/bench_packing.py                    # CPU: the README's digits grid, 3 ways (~12 min)
    python benchmarks/bench_packing.py --contended                  # a pack alone vs two copies sharing the CPU

The default runs the README's quickstart command for real, three ways in alternating order: kd's
default (packed, loop), packed with trainer.pack_mode=stacked, and hydra/launcher=basic (one cell at
a time), in fresh sweep dirs, the teacher cached first so all reuse it; it reports wall time and
the peak memory (max RSS) of each command.
In-process throughput on a GPU, packed and not: benchmarks/gpu.py.
"""
from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
GRID = ["alpha=0,0.25,0.5,0.75,1.0", "aug=none,fc,fcra", "data=digits"]  # the README's quickstart
WAYS = {"one cell at a time": ["hydra/launcher=basic"], "packed (loop, the default)": [],
        "packed (stacked)": ["trainer.pack_mode=stacked"]}


def run_measured(args: list[str], env: dict) -> tuple[float, float]:
    """(wall seconds, peak RSS in MiB) of `python kd/train.py <args>`, from the kernel's own accounting."""
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(REPO / "kd" / "train.py"), *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"kd/train.py {' '.join(args)} failed:\n{proc.stderr.read()[-3000:]}")
    return wall, usage.ru_maxrss / 1024


def bench_grid(rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "KD_HOME": f"{tmp}/home", "WANDB_MODE": "disabled"}
        print(f"CPU, {os.cpu_count()} cores; torch {torch.__version__}; load average {os.getloadavg()[0]:.1f}")
        teacher_s, _ = run_measured(["stage=teacher", "data=digits", "logger=none", f"hydra.run.dir={tmp}/t"], env)
        print(f"teacher trained and cached first ({teacher_s:.0f} s); both ways reuse it\n")
        print("| round | how | wall s | peak RSS MiB |\n|---|---|---|---|")
        times: dict[str, list[float]] = {name: [] for name in WAYS}
        for r in range(rounds):
            order = list(WAYS) if r % 2 == 0 else list(WAYS)[::-1]  # alternate who goes first
            for name in order:
                sweep = f"{tmp}/round{r}-way{list(WAYS).index(name)}"
                wall, rss = run_measured(["-m", *GRID, "logger=none", *WAYS[name], f"hydra.sweep.dir={sweep}"], env)
                times[name].append(wall)
                print(f"| {r + 1} | {name} | {wall:.0f} | {rss:.0f} |", flush=True)
        best = {k: min(v) for k, v in times.items()}
        print(f"\nbest of {rounds}, against one cell at a time ({best['one cell at a time']:.0f} s):")
        for name in ("packed (loop, the default)", "packed (stacked)"):
            print(f"  {name}: {best[name]:.0f} s, {best['one cell at a time'] / best[name]:.2f}x faster")
        print(f"load average at the end {os.getloadavg()[0]:.1f}")


def bench_contended(rounds: int) -> None:
    """One fcra pack of the README's quickstart alone, then two copies at once on the same cores, three ways in
    alternating rounds: kd's default (one thread per core, OpenMP's wait policy as PyTorch ships it), idle
    threads sleeping (OMP_WAIT_POLICY=PASSIVE, kd's former default) and the cores split (what kd's launchers do)."""
    pack = ["-m", "alpha=0,0.25,0.5,0.75,1.0", "aug=fcra", "data=digits", "logger=none", "trainer.epochs=20"]
    cores = len(os.sched_getaffinity(0))
    ways = {"one per core, OpenMP as PyTorch ships it (kd's default)": {},
            "one per core, idle threads sleep (OMP_WAIT_POLICY=PASSIVE)": {"OMP_WAIT_POLICY": "PASSIVE"},
            f"{max(1, cores // 2)} (OMP_NUM_THREADS = cores / 2)": {"OMP_NUM_THREADS": str(max(1, cores // 2))}}
    alone, two = {w: math.inf for w in ways}, {w: math.inf for w in ways}
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")}
        env.update(KD_HOME=f"{tmp}/home", WANDB_MODE="disabled")
        run_measured(["stage=teacher", "data=digits", "logger=none", f"hydra.run.dir={tmp}/t"], env)
        for r in range(rounds):  # alternating: a noisy minute slows every way alike
            for w, (label, extra) in enumerate(ways.items()):
                env_w = {**env, **extra}
                alone[label] = min(alone[label], run_measured([*pack, f"hydra.sweep.dir={tmp}/alone{w}-{r}"], env_w)[0])
                started = time.perf_counter()
                procs = [subprocess.Popen([sys.executable, str(REPO / "kd" / "train.py"), *pack,
                                           f"hydra.sweep.dir={tmp}/two{w}-{r}-{i}"], env=env_w,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i in range(2)]
                if any(p.wait() != 0 for p in procs):
                    raise SystemExit("a contended run failed")
                two[label] = min(two[label], time.perf_counter() - started)
    default = next(iter(ways))
    print(f"CPU, {cores} cores; torch {torch.__version__}; an fcra pack of the quickstart (5 cells, 20 epochs), "
          f"teacher cached; best of {rounds} alternating rounds\n")
    print("| threads per process | alone s | two at once s | two at once / alone | alone vs kd's default |")
    print("|---|---|---|---|---|")
    for label in ways:
        print(f"| {label} | {alone[label]:.1f} | {two[label]:.1f} | {two[label] / alone[label]:.2f}x | "
              f"{alone[label] / alone[default]:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contended", action="store_true", help="a pack alone vs two copies sharing the cores")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if args.contended:
        bench_contended(args.rounds)
        return
    bench_grid(args.rounds)


if __name__ == "__main__":
    main()
