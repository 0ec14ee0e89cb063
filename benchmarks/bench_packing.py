"""Packing: a grid's cells one at a time vs the cells of a pack (its alphas) trained together.

    python benchmarks/bench_packing.py                    # CPU: the README's digits grid, 3 ways (~12 min)
    python benchmarks/bench_packing.py --throughput --device cuda   # a GPU: images/s per cell, x4 pair
    python benchmarks/bench_packing.py --throughput --quick         # the same on a CPU in seconds (CI runs it)
    python benchmarks/bench_packing.py --contended                  # a pack alone vs two copies sharing the CPU

The default runs the README's quickstart command for real, three ways in alternating order: kd's
default (packed, loop), packed with trainer.pack_mode=stacked, and hydra/launcher=basic (one cell at
a time), in fresh sweep dirs, the teacher cached first so all reuse it; it reports wall time and
the peak memory (max RSS) of each command.
--throughput times the train step in-process through kd's own functions on CIFAR-shaped random
uint8 data: one cell alone (alpha=0.5) vs a pack of the 5 alphas, loop and stacked, per aug level.
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
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

import kd.train  # noqa: F401  (registers the config schemas)
from kd.data import ImageSplits
from kd.engine import Cell, LoopUpdate, autocast_for, make_batches, make_student, make_teacher_fn, train_one_epoch
from kd.stacking import StackedUpdate
from bench_pipeline import TimedBatches, sync  # this script's folder is on sys.path when it runs

REPO = Path(__file__).resolve().parents[1]
GRID = ["alpha=0,0.25,0.5,0.75,1.0", "aug=none,fc,fcra", "data=digits"]  # the README's quickstart
ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
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
    """One fcra pack of the digits grid alone, then two copies at once on the same cores, with torch's default
    threads (one per core) and with the cores split between the two (OMP_NUM_THREADS=cores/2)."""
    pack = ["-m", "alpha=0,0.25,0.5,0.75,1.0", "aug=fcra", "data=digits", "logger=none", "trainer.epochs=20"]
    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "KD_HOME": f"{tmp}/home", "WANDB_MODE": "disabled"}
        run_measured(["stage=teacher", "data=digits", "logger=none", f"hydra.run.dir={tmp}/t"], env)
        print(f"CPU, {cores} cores; torch {torch.__version__}; an fcra pack (5 cells, 20 epochs), teacher cached\n")
        print("| threads per process | alone s | two at once s | two at once / alone |\n|---|---|---|---|")
        for label, threads in (("default (one per core)", None), (f"{max(1, cores // 2)} (cores / 2)", cores // 2)):
            env_t = env if threads is None else {**env, "OMP_NUM_THREADS": str(max(1, threads))}
            alone = two = math.inf
            for r in range(rounds):
                alone = min(alone, run_measured([*pack, f"hydra.sweep.dir={tmp}/alone{label[0]}{r}"], env_t)[0])
                started = time.perf_counter()
                procs = [subprocess.Popen([sys.executable, str(REPO / "kd" / "train.py"), *pack,
                                           f"hydra.sweep.dir={tmp}/two{label[0]}{r}{i}"], env=env_t,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i in range(2)]
                if any(p.wait() != 0 for p in procs):
                    raise SystemExit("a contended run failed")
                two = min(two, time.perf_counter() - started)
            print(f"| {label} | {alone:.1f} | {two:.1f} | {two / alone:.2f}x |", flush=True)


def synthetic_splits(n: int, num_classes: int = 100) -> ImageSplits:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, num_classes, (n,), generator=g)
    return ImageSplits("synthetic", images, labels, images[:0], labels[:0], num_classes, (0.5,) * 3, (0.25,) * 3)


class Pack:
    """K cells' students (alphas), their update and the shared batches, built as kd.engine.fit builds them."""

    def __init__(self, overrides: list[str], alphas: tuple[float, ...], mode: str, splits: ImageSplits,
                 device: torch.device) -> None:
        with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf")):
            cfgs = [compose("config", overrides=["logger=none", f"trainer.device={device}", *overrides,
                                                 f"alpha={a}", f"trainer.pack_mode={mode}", "out_dir=unused"])
                    for a in alphas]
        students = [make_student(Cell(c, Path("unused"), {}, lambda row, step: None, "", ""), 100, device)
                    for c in cfgs]
        self.update = StackedUpdate(students, cfgs[0].optim) if mode == "stacked" and len(alphas) > 1 \
            else LoopUpdate(students)
        self.k, self.batch_size, self.device = len(alphas), cfgs[0].trainer.batch_size, device
        self.autocast = autocast_for(device, cfgs[0].trainer.bf16)
        aug = instantiate(cfgs[0].aug)
        teacher = instantiate(cfgs[0].teacher.arch, num_classes=100)
        self.teacher_fn = make_teacher_fn(cfgs[0], teacher, splits, aug, device, self.autocast)
        self.batches = make_batches(cfgs[0], splits, "train", aug, device, shuffle=True)

    def images_per_s_per_cell(self, warmup: int, steps: int) -> float:
        timed = TimedBatches(self.batches, warmup, steps, self.device)
        train_one_epoch(self.update, timed, self.teacher_fn, self.autocast, epoch=0, skip=set())
        sync(self.device)
        return self.k * steps * self.batch_size / (time.perf_counter() - timed.started)


def bench_throughput(device: torch.device, pair: str, steps: int, warmup: int, rounds: int) -> None:
    teacher, student = pair.split(":")
    splits = synthetic_splits((warmup + steps) * 64)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {os.cpu_count()} cores"
    print(f"device: {name}; torch {torch.__version__}; {teacher}->{student}, batch 64, kd's defaults; best of "
          f"{rounds} rounds of {warmup} warmup + {steps} timed steps")
    print("| aug | alone img/s | pack of 5, loop: img/s per cell | x | pack of 5, stacked: img/s per cell | x |")
    print("|---|---|---|---|---|---|")
    for aug in ("none", "fc", "fcra"):
        overrides = [f"model={student}", f"teacher={teacher}", f"aug={aug}"]
        setups = {"alone": Pack(overrides, (0.5,), "loop", splits, device),
                  "loop": Pack(overrides, ALPHAS, "loop", splits, device),
                  "stacked": Pack(overrides, ALPHAS, "stacked", splits, device)}
        rates = dict.fromkeys(setups, 0.0)
        for _ in range(rounds):  # interleaved, best of: a busy machine slows rounds, never speeds them
            for key, setup in setups.items():
                rates[key] = max(rates[key], setup.images_per_s_per_cell(warmup, steps))
        alone = rates["alone"]
        print(f"| {aug} | {alone:.0f} | {rates['loop']:.0f} | {rates['loop'] / alone:.2f}x | {rates['stacked']:.0f} "
              f"| {rates['stacked'] / alone:.2f}x |", flush=True)
    if device.type == "cuda":
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--throughput", action="store_true", help="in-process images/s instead of the CLI grid")
    parser.add_argument("--contended", action="store_true", help="a pack alone vs two copies sharing the cores")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--pair", default="resnet32x4:resnet8x4", help="teacher:student for --throughput")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps (cover torch.compile on a GPU)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="a CPU smoke run in seconds: resnet8 pair, 2 steps")
    args = parser.parse_args()
    if args.contended:
        bench_contended(args.rounds)
        return
    if not args.throughput:
        bench_grid(args.rounds)
        return
    if args.quick:
        args.pair, args.steps, args.warmup, args.rounds = "resnet8:resnet8", 2, 1, 1
    bench_throughput(torch.device(args.device), args.pair, args.steps, args.warmup, args.rounds)


if __name__ == "__main__":
    main()
