"""Where a training step's time goes, way by way ((a)-(d) of gpu.py): a torch.profiler summary of a few steps.

    python benchmarks/profile_step.py                     # a GPU: resnet32x4 -> resnet8x4, aug fc, the four ways
    python benchmarks/profile_step.py --quick             # CPU smoke (CPU activity only): resnet8 pair, seconds
    python benchmarks/profile_step.py --json profile.json --trace-dir traces/   # also each way's Chrome trace

Each way's step is built as gpu.py measures it (its configs, bench_pipeline's Setup: kd's own make_pack /
make_batches / make_teaching / train_one_epoch), warmed up (torch.compile, cuDNN's search, CUDA graph capture),
then `--steps` steps run under the profiler, each inside a `kd step <i>` annotation that also covers making its
batch. Per way it reports:
- kernels per step and the GPU's busy fraction: the union of the intervals of the kernels launched in the window,
  over the window (from the first step's start on the host to the end of the last step or of its last kernel,
  whichever is later; the GPU is idle when it opens). Memory copies are not kernels and do not count as busy;
- the top-10 kernels by device time, and the top-10 host ops by self CPU time;
- the host's wall time and the process's CPU time per step (both with the profiler's own overhead: take step
  rates from gpu.py, the split of the time from here);
- what torch.compile did from the way's setup to its last step (torch._dynamo.utils.counters): frames compiled,
  recompiles (guard failures), graph breaks, cudagraph skips.
On a CPU only the host's side exists: the GPU fields are null.
"""
from __future__ import annotations

import argparse
import collections
import json
import tempfile
import time
from pathlib import Path

import torch
import torch._dynamo.utils as dynamo_utils
from torch.profiler import ProfilerActivity, profile, record_function

from bench_pipeline import Setup, sync, synthetic_splits  # this script's folder is on sys.path when it runs
from gpu import WAYS, describe, measured_configs, pair_networks
from kd.training.engine import train_one_epoch

STEP = "kd step"  # the annotation around each profiled step
TOP = 10


def annotated(batches, steps: int, clock: list):
    """The first `steps` batches, each step (its batch's making included) inside one annotation; `clock` gets
    (wall, process CPU) at each step's start and once more at the last one's end."""
    it = iter(batches)
    for i in range(steps):
        clock.append((time.perf_counter(), time.process_time()))
        with record_function(f"{STEP} {i}"):
            yield next(it)
    clock.append((time.perf_counter(), time.process_time()))


def compile_counts() -> dict:
    """What torch.compile has done so far in this process (a snapshot; a way's counts are the difference)."""
    counters = dynamo_utils.counters
    return {"frames_compiled": counters["frames"]["ok"],
            "recompiles": sum(len(v) for v in dynamo_utils.guard_failures.values()),
            "graph_breaks": sum(counters["graph_break"].values()),
            "cudagraph_skips": counters["inductor"]["cudagraph_skips"]}


def union_length(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total


def kernel_summary(trace: dict, steps: int) -> dict:
    """Kernels per step, GPU busy fraction and the top kernels, from a Chrome trace's events (times in us)."""
    events = trace["traceEvents"]
    spans = sorted((e["ts"], e["ts"] + e["dur"]) for e in events
                   if e.get("cat") == "user_annotation" and e.get("name", "").startswith(STEP))
    start, host_end = spans[0][0], spans[-1][1]
    # The kernels these steps launched: the launch (a CUDA runtime or driver call) lies in the window, and its
    # correlation id is the kernel's. A CUDA graph's kernels carry their cudaGraphLaunch's id.
    launched = {e["args"]["correlation"] for e in events if e.get("cat") in ("cuda_runtime", "cuda_driver")
                and start <= e["ts"] <= host_end and "correlation" in e.get("args", {})}
    kernels = [e for e in events if e.get("cat") == "kernel" and e["args"].get("correlation") in launched]
    end = max([host_end] + [k["ts"] + k["dur"] for k in kernels])
    by_name: dict = collections.defaultdict(lambda: [0.0, 0])
    for k in kernels:
        by_name[k["name"]][0] += k["dur"]
        by_name[k["name"]][1] += 1
    top = sorted(by_name.items(), key=lambda item: -item[1][0])[:TOP]
    return {"window_ms": (end - start) / 1e3,
            "kernels_per_step": len(kernels) / steps,
            "gpu_busy_fraction": union_length([(k["ts"], k["ts"] + k["dur"]) for k in kernels]) / (end - start),
            "kernel_ms_per_step": sum(k["dur"] for k in kernels) / steps / 1e3,
            "top_kernels": [{"name": name[:120], "ms_per_step": us / steps / 1e3, "calls_per_step": n / steps}
                            for name, (us, n) in top]}


def profile_way(cfgs: list, splits, device: torch.device, warmup: int, steps: int, trace_path: Path) -> dict:
    before = compile_counts()
    setup = Setup(cfgs, splits, device)
    setup.images_per_s(warmup, 1)  # compiles, searches cuDNN's kernels, captures: the profile sees steady steps
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    clock: list = []
    sync(device)  # the GPU is idle when the window opens
    with profile(activities=activities) as prof:
        train_one_epoch(setup.update, annotated(setup.batches, steps, clock), setup.teaching, setup.autocast, 0,
                        set(), setup.plan)
        sync(device)
    after = compile_counts()
    prof.export_chrome_trace(str(trace_path))
    ops = [e for e in prof.key_averages() if not e.key.startswith(STEP)]
    top_ops = sorted(ops, key=lambda e: -e.self_cpu_time_total)[:TOP]
    result = {
        "cells": len(cfgs), "step": setup.plan.mode or "eager", "steps": steps,
        "host_ms_per_step": (clock[-1][0] - clock[0][0]) / steps * 1e3,
        "cpu_ms_per_step": (clock[-1][1] - clock[0][1]) / steps * 1e3,
        "top_cpu_ops": [{"name": e.key, "self_cpu_ms_per_step": e.self_cpu_time_total / steps / 1e3,
                         "calls_per_step": e.count / steps} for e in top_ops],
        "compile": {k: after[k] - before[k] for k in after},
        "window_ms": None, "kernels_per_step": None, "gpu_busy_fraction": None, "kernel_ms_per_step": None,
        "top_kernels": [],
    }
    if device.type == "cuda":
        result.update(kernel_summary(json.loads(trace_path.read_text()), steps))
    del setup  # stops (a)'s DataLoader workers before the next way starts
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--pair", default="resnet32x4-resnet8x4",
                        help="a benchmark pair (conf/pair/) or teacher:student, as gpu.py takes it")
    parser.add_argument("--aug", default="fc", choices=["none", "fc", "fcra"])
    parser.add_argument("--ways", nargs="+", default=[w[0] for w in WAYS], choices=[w[0] for w in WAYS])
    parser.add_argument("--steps", type=int, default=5, help="profiled steps per way")
    parser.add_argument("--warmup", type=int, default=20, help="steps first (torch.compile, CUDA graph capture)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=4, help="DataLoader workers of (a)")
    parser.add_argument("--json", default="profile.json")
    parser.add_argument("--trace-dir", default=None, help="keep each way's Chrome trace here (default: dropped)")
    parser.add_argument("--quick", action="store_true", help="CPU smoke: resnet8 pair, batch 16, 2 + 2 steps")
    args = parser.parse_args()
    if args.quick:
        args.pair, args.batch_size, args.warmup, args.steps, args.workers = "resnet8:resnet8", 16, 2, 2, 2
    started = time.perf_counter()
    device = torch.device(args.device)
    teacher, student = pair_networks(args.pair)
    splits = synthetic_splits((args.warmup + 1 + args.steps) * args.batch_size, [0.5] * 3, [0.25] * 3)
    trace_dir = Path(args.trace_dir or tempfile.mkdtemp(prefix="kd-profile-"))
    trace_dir.mkdir(parents=True, exist_ok=True)
    out = {**describe(device), "pair": f"{teacher}->{student}", "aug": args.aug, "batch_size": args.batch_size,
           "warmup": args.warmup, "steps": args.steps, "date": time.strftime("%Y-%m-%d"), "ways": {}}
    print(f"{out['device']}; torch {out['torch']}; {teacher}->{student}, aug {args.aug}, batch {args.batch_size}; "
          f"{args.steps} profiled steps per way after {args.warmup} + 1 warm-up")
    failed = []
    for way in (w for w in WAYS if w[0] in args.ways):
        cfgs = measured_configs(way, args.aug, teacher, student, args)
        try:
            result = profile_way(cfgs, splits, device, args.warmup, args.steps, trace_dir / f"{way[0]}.json")
        except Exception as err:  # noqa: BLE001 (reported in the table and the JSON, never hidden)
            result = {"error": f"{type(err).__name__}: {err}"}
            failed.append(result["error"])
        torch._dynamo.reset()  # each way compiles afresh, as in gpu.py
        out["ways"][way[0]] = {"way": way, **result}
        print(f"{way}: {result.get('error') or line(result)}", flush=True)
        Path(args.json).write_text(json.dumps(out, indent=2))  # what is measured survives a killed run
    out["wall_s"] = time.perf_counter() - started
    Path(args.json).write_text(json.dumps(out, indent=2))
    print(f"profile wall time {out['wall_s']:.0f} s; results in {args.json}; traces in {trace_dir}")
    if failed:
        raise SystemExit(f"{len(failed)} way(s) failed; the first: {failed[0]}")


def line(r: dict) -> str:
    gpu = (f"{r['kernels_per_step']:.0f} kernels/step, GPU busy {100 * r['gpu_busy_fraction']:.0f}%, "
           if r["kernels_per_step"] is not None else "")
    c = r["compile"]
    return (f"{r['step']}; {gpu}host {r['host_ms_per_step']:.1f} ms/step, CPU {r['cpu_ms_per_step']:.1f} ms/step; "
            f"{c['frames_compiled']} frames compiled, {c['recompiles']} recompiles, "
            f"{c['cudagraph_skips']} cudagraph skips")


if __name__ == "__main__":
    main()
