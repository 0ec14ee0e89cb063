"""The paper's grid on one GPU: images/s and the projected full-grid time, four ways, in one command.

    python benchmarks/gpu.py                  # a GPU (H100/H200: under 8 minutes), resnet32x4 -> resnet8x4
    python benchmarks/gpu.py --pair vgg13-vgg8   # any of the benchmark's pairs (conf/pair/)
    python benchmarks/gpu.py --quick          # a CPU smoke run in about a minute (CI runs it, so it never rots)

Per aug level (none, fc, fcra), through kd's own functions on CIFAR-shaped random uint8 data:
(a) conventional: trainer.pipeline=dataloader (per-image PIL in 4 DataLoader workers), fp32, no compile,
    the teacher run on every step, one cell per process;
(b) kd's defaults, one cell per process (bf16, channels_last, torch.compile on CUDA);
(c) kd packed: the 5 alpha cells of the aug level in one process, sharing the batch and the teacher;
(d) stacked + graph capture: those 5 students as one grouped network (trainer.pack_mode=stacked,
    kd/training/grouped.py), compiled and captured as CUDA graphs (trainer.graph_capture=true).
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
    "d stacked + capture": (["trainer.pack_mode=stacked", "trainer.graph_capture=true"], len(GRID_ALPHAS)),
}
TEACHER_WAYS = ("a conventional", "b kd defaults", "d stacked + capture")  # the teacher is a pack of one


def way_configs(way: str, model: list[str], alphas: tuple[float, ...], args) -> list:
    kind, _ = WAYS[way]
    overrides = (pipeline_overrides("conventional", args.device, args.workers, []) if kind == "conventional"
                 else [f"trainer.device={args.device}", *kind])
    return [compose_config([*model, *overrides, f"trainer.batch_size={args.batch_size}", f"alpha={a}"])
            for a in alphas]


def measured_configs(way: str, aug: str | None, teacher: str, student: str, args) -> list:
    """What one measurement trains: the pack `way` makes of an aug level's cells, or with aug None the teacher's
    own training (the same step with the teacher as the model, CE only, its recipe's fc)."""
    if aug is None:
        return way_configs(way, [f"model={teacher}", f"teacher={teacher}", "aug=fc"], (0.0,), args)
    cells = WAYS[way][1]
    return way_configs(way, [f"model={student}", f"teacher={teacher}", f"aug={aug}"],
                       GRID_ALPHAS if cells > 1 else (0.5,), args)


def measure(cfgs: list, splits, device: torch.device, args) -> dict:
    """Best of the rounds (a busy machine slows a round, never speeds it), with how the step ran. A way that
    fails (a graph that cannot be captured, say) is recorded with its error, so the other ways still count."""
    started = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        setup = Setup(cfgs, splits, device)
        rate = max(setup.images_per_s(args.warmup, args.steps) for _ in range(args.rounds))
        result = {"cell_images_per_s": rate, "cells": len(cfgs), "step": setup.plan.mode or "eager",
                  "why": setup.plan.why}
        del setup  # stops (a)'s DataLoader workers before the next way starts
    except Exception as err:  # noqa: BLE001 (reported in the table and the JSON, never hidden)
        result = {"error": f"{type(err).__name__}: {err}"}
    result["seconds"] = time.perf_counter() - started  # compilation included: what a way costs to measure
    torch._dynamo.reset()  # each way compiles afresh: no cache hits or recompile limits carried over
    if device.type == "cuda":
        result["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        torch.cuda.empty_cache()
    return result


def rate_text(result: dict | None) -> str:
    if result is None:
        return "not run (budget)"
    return f"{result['cell_images_per_s']:.0f}" if "error" not in result else "failed"


def describe(device: torch.device) -> dict:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"CPU ({platform.processor() or platform.machine()}), {len(os.sched_getaffinity(0))} cores"
    return {"device": name, "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None}


def pair_networks(pair: str) -> tuple[str, str]:
    """(teacher, student) model options of a conf/pair/ option, or of `teacher:student`."""
    if ":" in pair:
        teacher, student = pair.split(":")
        return teacher, student
    from kd.training.teacher import arch_name

    cfg = compose_config([f"pair={pair}"])
    return arch_name(cfg.teacher.arch), arch_name(cfg.model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--pair", default="resnet32x4-resnet8x4",
                        help="a benchmark pair (conf/pair/: vgg13-vgg8, wrn40_2-wrn16_2, ...) or teacher:student")
    parser.add_argument("--steps", type=int, default=100, help="timed train steps per round")
    parser.add_argument("--warmup", type=int, default=30, help="untimed steps first (covers torch.compile)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=4, help="DataLoader workers of (a)")
    parser.add_argument("--json", default="gpu_benchmark.json", help="where the full results go")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="start no new measurement after this many seconds (a lent GPU's time is short); "
                        "the ways go column by column, so the finished ones are complete")
    parser.add_argument("--quick", action="store_true", help="CPU smoke: resnet8 pair, 2 steps, 1 round")
    args = parser.parse_args()
    if args.quick:
        args.pair, args.steps, args.warmup, args.rounds, args.workers = "resnet8:resnet8", 2, 1, 1, 2
    device = torch.device(args.device)
    teacher, student = pair_networks(args.pair)
    started = time.perf_counter()
    splits = synthetic_splits((args.warmup + args.steps) * args.batch_size, [0.5] * 3, [0.25] * 3)
    info = {**describe(device), "pair": args.pair, "batch_size": args.batch_size, "steps": args.steps,
            "warmup": args.warmup, "rounds": args.rounds, "date": time.strftime("%Y-%m-%d")}
    print(f"{info['device']}; torch {info['torch']}, CUDA {info['cuda']}; {teacher}->{student}, batch "
          f"{args.batch_size}; best of {args.rounds} rounds of {args.warmup} warmup + {args.steps} timed steps")

    # Column by column, (d) last: a budget that runs out leaves whole ways measured.
    rates: dict = {"teacher": {}, "cells": {aug: {} for aug in AUGS}}
    for way in WAYS:
        for aug in ([None] if way in TEACHER_WAYS else []) + list(AUGS):  # None: the teacher's own training
            if args.budget_s is not None and time.perf_counter() - started > args.budget_s:
                print(f"{way}, {aug or 'teacher'}: not run, past --budget-s {args.budget_s:.0f}", flush=True)
                continue
            result = measure(measured_configs(way, aug, teacher, student, args), splits, device, args)
            (rates["teacher"] if aug is None else rates["cells"][aug])[way] = result
            print(f"{way}, {aug or 'teacher'}: {rate_text(result)} cell-images/s "
                  f"({result.get('error') or result['step']}; {result['seconds']:.0f} s)", flush=True)
            write_json(args.json, info, rates, {}, started)  # what is measured survives a killed run

    print(f"\ncell-images/s (training images per second, summed over the cells one process trains; the teacher "
          f"trains with fc):\n")
    print("| | " + " | ".join(WAYS) + " |\n|---" * 1 + "|---" * len(WAYS) + "|")
    for aug in AUGS:
        print(f"| {aug} | " + " | ".join(rate_text(rates["cells"][aug].get(w)) for w in WAYS) + " |")
    print("| teacher | " + " | ".join(rate_text(rates["teacher"].get(w)) if w in TEACHER_WAYS else "(as b)"
                                      for w in WAYS) + " |")
    grid = {way: projected_grid_s(rates, way) for way in WAYS}
    print("| projected grid, teacher included | " + " | ".join(
        f"{grid[w] / 3600:.2f} h" if grid[w] else "-" for w in WAYS) + " |")
    base = grid["a conventional"]
    print("| x faster than (a) | " + " | ".join(f"{base / grid[w]:.1f}x" if base and grid[w] else "-"
                                                for w in WAYS) + " |")
    for way in WAYS:
        r = rates["cells"]["fc"].get(way)
        if r is not None:
            print(f"{way}: step {r.get('step', '-')} ({r.get('error') or r['why']})")
    results = [r for per_aug in (rates["teacher"], *rates["cells"].values()) for r in per_aug.values()]
    if device.type == "cuda":
        info["peak_gpu_memory_gib"] = max(r["peak_gpu_memory_gib"] for r in results)
        print(f"peak GPU memory {info['peak_gpu_memory_gib']:.1f} GiB (the most any one way took)")
    write_json(args.json, info, rates, grid, started)
    print(f"benchmark wall time {time.perf_counter() - started:.0f} s; results in {args.json}")
    failed = [r["error"] for r in results if "error" in r]
    if failed:
        raise SystemExit(f"{len(failed)} measurement(s) failed (their rows say 'failed'); the first: {failed[0]}")


def projected_grid_s(rates: dict, way: str) -> float | None:
    """The 15-cell grid plus its teacher, in seconds, at this way's rates; None where one is missing."""
    teacher = rates["teacher"].get(way if way in TEACHER_WAYS else "b kd defaults")
    cells = [rates["cells"][aug].get(way) for aug in AUGS]
    if any(r is None or "error" in r for r in [teacher, *cells]):
        return None
    seconds = GRID_EPOCHS * EPOCH_IMAGES / teacher["cell_images_per_s"]
    return seconds + sum(len(GRID_ALPHAS) * GRID_EPOCHS * EPOCH_IMAGES / r["cell_images_per_s"] for r in cells)


def write_json(path: str, info: dict, rates: dict, grid: dict, started: float) -> None:
    """Rewritten after every measurement: a run killed at its time limit still leaves what it measured."""
    with open(path, "w") as f:
        json.dump({**info, "wall_s": time.perf_counter() - started, "rates": rates,
                   "projected_grid_s": grid}, f, indent=2)


if __name__ == "__main__":
    main()
