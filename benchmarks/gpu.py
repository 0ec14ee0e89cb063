"""The paper's grid on one GPU: images/s and the projected full-grid time, four ways, in one command.

    python benchmarks/gpu.py                  # a GPU (H100/H200: under 8 minutes), resnet32x4 -> resnet8x4
    python benchmarks/gpu.py --quick          # a CPU smoke run in about a minute (CI runs it, so it never rots)

Per aug level (none, fc, fcra), through kd's own functions on CIFAR-shaped random uint8 data:
(a) conventional: trainer.pipeline=dataloader (per-image PIL in 4 DataLoader workers), fp32, no compile,
    the teacher run on every step, one cell per process;
(b) kd's defaults, one cell per process (bf16, channels_last, torch.compile on CUDA);
(c) kd packed: the 5 alpha cells of the aug level in one process, sharing the batch and the teacher;
(d) packed + graph capture (trainer.graph_capture=true: CUDA graphs through torch.compile).
The teacher's own training (resnet32x4, 240 epochs, its fc recipe) is timed the (a), (b) and (d) ways.
The projection is the 15-cell x 240-epoch x 50,000-image grid plus the teacher, evaluation excluded.
Prints a Markdown table and writes everything to --json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch

from bench_pipeline import (EPOCH_IMAGES, GRID_ALPHAS, GRID_EPOCHS, Setup, compose_config, pipeline_overrides,
                            synthetic_splits)  # this script's folder is on sys.path when it runs

AUGS = ("none", "fc", "fcra")
WAYS = {  # name: (overrides, cells per process)
    "a conventional": ("conventional", 1),
    "b kd defaults": ([], 1),
    "c kd packed": ([], len(GRID_ALPHAS)),
    "d packed + capture": (["trainer.graph_capture=true"], len(GRID_ALPHAS)),
}
TEACHER_WAYS = ("a conventional", "b kd defaults", "d packed + capture")  # the teacher is a pack of one


def way_configs(way: str, model: list[str], alphas: tuple[float, ...], args) -> list:
    kind, _ = WAYS[way]
    overrides = (pipeline_overrides("conventional", args.device, args.workers, []) if kind == "conventional"
                 else [f"trainer.device={args.device}", *kind])
    return [compose_config([*model, *overrides, f"trainer.batch_size={args.batch_size}", f"alpha={a}"])
            for a in alphas]


def measure(cfgs: list, splits, device: torch.device, args) -> dict:
    """Best of the rounds (a busy machine slows a round, never speeds it), with how the step ran."""
    setup = Setup(cfgs, splits, device)
    rate = max(setup.images_per_s(args.warmup, args.steps) for _ in range(args.rounds))
    return {"cell_images_per_s": rate, "cells": len(cfgs), "step": setup.plan.mode or "eager",
            "why": setup.plan.why}


def describe(device: torch.device) -> dict:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"CPU ({platform.processor() or platform.machine()}), {len(os.sched_getaffinity(0))} cores"
    return {"device": name, "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--pair", default="resnet32x4:resnet8x4", help="teacher:student")
    parser.add_argument("--steps", type=int, default=100, help="timed train steps per round")
    parser.add_argument("--warmup", type=int, default=30, help="untimed steps first (covers torch.compile)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=4, help="DataLoader workers of (a)")
    parser.add_argument("--json", default="gpu_benchmark.json", help="where the full results go")
    parser.add_argument("--quick", action="store_true", help="CPU smoke: resnet8 pair, 2 steps, 1 round")
    args = parser.parse_args()
    if args.quick:
        args.pair, args.steps, args.warmup, args.rounds, args.workers = "resnet8:resnet8", 2, 1, 1, 2
    device = torch.device(args.device)
    teacher, student = args.pair.split(":")
    started = time.perf_counter()
    splits = synthetic_splits((args.warmup + args.steps) * args.batch_size, [0.5] * 3, [0.25] * 3)
    info = {**describe(device), "pair": args.pair, "batch_size": args.batch_size, "steps": args.steps,
            "warmup": args.warmup, "rounds": args.rounds, "date": time.strftime("%Y-%m-%d")}
    print(f"{info['device']}; torch {info['torch']}, CUDA {info['cuda']}; {teacher}->{student}, batch "
          f"{args.batch_size}; best of {args.rounds} rounds of {args.warmup} warmup + {args.steps} timed steps")

    # The teacher's own training: the same step with the teacher as the model, CE only, its recipe's fc.
    rates: dict = {"teacher": {}, "cells": {aug: {} for aug in AUGS}}
    for way in TEACHER_WAYS:
        cfgs = way_configs(way, [f"model={teacher}", f"teacher={teacher}", "aug=fc"], (0.0,), args)
        rates["teacher"][way] = measure(cfgs, splits, device, args)
    for aug in AUGS:
        model = [f"model={student}", f"teacher={teacher}", f"aug={aug}"]
        for way, (_, k) in WAYS.items():
            alphas = GRID_ALPHAS if k > 1 else (0.5,)
            rates["cells"][aug][way] = measure(way_configs(way, model, alphas, args), splits, device, args)

    print(f"\ncell-images/s (training images per second, summed over the cells one process trains; the teacher "
          f"trains with fc):\n")
    print("| | " + " | ".join(WAYS) + " |\n|---" * 1 + "|---" * len(WAYS) + "|")
    for aug in AUGS:
        print(f"| {aug} | " + " | ".join(f"{rates['cells'][aug][w]['cell_images_per_s']:.0f}" for w in WAYS) + " |")
    print("| teacher | " + " | ".join(f"{rates['teacher'][w]['cell_images_per_s']:.0f}" if w in rates["teacher"]
                                      else "(as b)" for w in WAYS) + " |")
    grid = {}
    for way in WAYS:
        teacher_way = way if way in rates["teacher"] else "b kd defaults"
        seconds = GRID_EPOCHS * EPOCH_IMAGES / rates["teacher"][teacher_way]["cell_images_per_s"]
        seconds += sum(len(GRID_ALPHAS) * GRID_EPOCHS * EPOCH_IMAGES / rates["cells"][aug][way]["cell_images_per_s"]
                       for aug in AUGS)
        grid[way] = seconds
    print("| projected grid, teacher included | " + " | ".join(f"{grid[w] / 3600:.2f} h" for w in WAYS) + " |")
    print("| x faster than (a) | " + " | ".join(f"{grid['a conventional'] / grid[w]:.1f}x" for w in WAYS) + " |")
    for way in WAYS:
        r = rates["cells"]["fc"][way]
        print(f"{way}: step {r['step']} ({r['why']})")
    if device.type == "cuda":
        info["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        print(f"peak GPU memory {info['peak_gpu_memory_gib']:.1f} GiB")
    info["wall_s"] = time.perf_counter() - started
    print(f"benchmark wall time {info['wall_s']:.0f} s; results in {args.json}")
    with open(args.json, "w") as f:
        json.dump({**info, "rates": rates, "projected_grid_s": grid}, f, indent=2)


if __name__ == "__main__":
    main()
