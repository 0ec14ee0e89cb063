"""ATen ops dispatched per training step: the CPU's proxy for a GPU step's kernel launches, in one command.

    python benchmarks/ops.py                  # resnet32x4 -> resnet8x4, batch 64, ~3 min on 2 CPU cores
    python benchmarks/ops.py --quick          # resnet8 -> resnet8, batch 8: a smoke run of seconds (CI runs it)
    python benchmarks/ops.py --json ops.json  # also every count, op by op, and any host sync by name

A GPU step of these small networks is launch-bound (on an H200 a packed aug=none step took 24.6 ms, one
student's forward and backward about 0.2-0.5 ms of kernels), so its time follows how many ops it dispatches,
and a CPU counts them exactly, load or no load. For aug none, fc and fcra (in the form CUDA runs), one cell
(alpha 0.5) and packs of the grid's 5 alphas (trainer.pack_mode loop and stacked), it runs kd's own step
(make_pack / make_batches / make_teaching / train_one_epoch, as `fit` builds them) on CIFAR-shaped random uint8
images under kd/training/sync_guard.py's OpRecord, the record of the CPU tests' sync guard, and counts the ops of each
step after the warm-up one (the first also builds the optimizer's momentum and the augmentation's tables). The
teacher runs live, so that the rows differ by the augmentation alone: its ops per training image are those of
one cell's step with it less those with aug none, over the batch size. One more row runs aug=none as kd does
by default, the teacher's logits cached. Rows marked "epoch" run trainer.augment_scope=epoch: the whole split is
augmented once per epoch (DevicePipeline.begin_epoch, its ops counted apart: their number does not depend on the
split's size) and the step only slices it; their ops per training image add that pass's ops over CIFAR's 50,000
training images. torch.compile stays off (its graphs hide their ops from the count).
"""
from __future__ import annotations

import argparse
import copy
import itertools
import json
import time

import torch
from hydra.utils import instantiate

from bench_pipeline import GRID_ALPHAS, Setup, compose_config, synthetic_splits
from gpu import describe, pair_networks  # this script's folder is on sys.path when it runs
from kd.training.engine import train_one_epoch
from kd.training.sync_guard import OpRecord

AUGS = ("none", "fc", "fcra")
WAYS = {"1 cell": ("loop", (0.5,)), "5 looped": ("loop", GRID_ALPHAS), "5 stacked": ("stacked", GRID_ALPHAS)}
# Row: (aug, the teacher's logits cached, trainer.augment_scope). The cache is kd's default for aug=none: they are
# computed once, not per step; the other rows run the teacher live, so that they differ by the augmentation alone.
ROWS = {**{aug: (aug, False, "batch") for aug in AUGS}, "none, logits cached": ("none", True, "batch"),
        **{f"{aug}, epoch": (aug, False, "epoch") for aug in AUGS[1:]}}
EPOCH_IMAGES = 50_000  # CIFAR's training split: what an epoch's augmentation pass is spread over
PACK_TARGET = 2.0  # ops of a packed 5-cell step / one cell's step (aug=none)
AUG_TARGET = 0.1  # augmentation ops per training image, fc and fcra each


def count(cfgs: list, aug: str, splits, device: torch.device, warmup: int, steps: int) -> dict:
    """The ops per step of the pack of `cfgs`, and the host syncs among them (which should be none)."""
    augmentation = instantiate(cfgs[0].aug, form="select") if aug == "fcra" else None
    setup = Setup(cfgs, splits, device, augmentation)
    setup.batches.begin_epoch(0)  # first, as the first step does for the others: builds RandAugment's tables once
    with OpRecord() as epoch_pass:  # augment_scope=epoch: the split's augmentation, once per epoch; else nothing
        setup.batches.begin_epoch(0)
    record = OpRecord()
    with record.watch(itertools.islice(setup.batches, warmup + steps), skip=warmup) as batches:
        train_one_epoch(setup.update, batches, setup.teaching, setup.autocast, 0, set(), setup.plan)
    grouped = getattr(setup.update, "grouped", None) is not None  # a stacked pack as one network (grouped.py)
    return {"cells": len(cfgs), "steps": record.steps, "grouped": grouped, "ops_per_step": record.total / record.steps,
            "ops_per_cell_step": record.total / record.steps / len(cfgs),
            "ops_per_epoch_pass": epoch_pass.total,
            "host_syncs_per_step": sum(record.syncs.values()) / record.steps, "host_syncs": dict(record.syncs),
            "ops": {op: n / record.steps for op, n in record.counts.most_common()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--pair", default="resnet32x4-resnet8x4",
                        help="a benchmark pair (conf/pair/: vgg13-vgg8, ...) or teacher:student")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=1, help="uncounted steps first")
    parser.add_argument("--steps", type=int, default=2, help="counted steps (each dispatches the same ops)")
    parser.add_argument("--json", default=None, help="where to write every count, op by op")
    parser.add_argument("--quick", action="store_true", help="smoke run: resnet8 -> resnet8, batch 8, 1 step")
    args = parser.parse_args()
    if args.quick:
        args.pair, args.batch_size, args.steps = "resnet8:resnet8", 8, 1
    started = time.perf_counter()
    torch.set_num_threads(1)  # the counts do not depend on threads, and one does not stall on a shared machine
    device = torch.device(args.device)
    teacher, student = pair_networks(args.pair)
    splits = synthetic_splits((args.warmup + args.steps) * args.batch_size, [0.5] * 3, [0.25] * 3)
    info = {**describe(device), "pair": f"{teacher}->{student}", "batch_size": args.batch_size,
            "warmup": args.warmup, "steps": args.steps, "date": time.strftime("%Y-%m-%d")}
    print(f"{info['device']}; torch {info['torch']}; {teacher}->{student}, batch {args.batch_size}, CIFAR-shaped "
          f"uint8, {splits.num_classes} classes; ops per step over {args.steps} step(s) after {args.warmup} warm-up")

    rows: dict = {row: {} for row in ROWS}
    for row, (aug, cached, scope) in ROWS.items():
        cfg = compose_config([f"model={student}", f"teacher={teacher}", f"aug={aug}", f"trainer.device={args.device}",
                              f"trainer.batch_size={args.batch_size}", "trainer.compile=false",
                              f"trainer.teacher_logit_cache={cached}", f"trainer.augment_scope={scope}"])
        for way, (mode, alphas) in WAYS.items():
            cfgs = [copy.deepcopy(cfg) for _ in alphas]  # a compose per cell would take longer than the counting
            for c, alpha in zip(cfgs, alphas):
                c.alpha, c.trainer.pack_mode = alpha, mode
            rows[row][way] = count(cfgs, aug, splits, device, args.warmup, args.steps)
    per_image = {row: {way: (rows[row][way]["ops_per_step"] - rows["none"][way]["ops_per_step"]) / args.batch_size
                       + rows[row][way]["ops_per_epoch_pass"] / EPOCH_IMAGES for way in WAYS}
                 for row, (aug, cached, _) in ROWS.items() if aug != "none"}
    packed = {row: {way: rows[row][way]["ops_per_step"] / rows[row]["1 cell"]["ops_per_step"]
                    for way in ("5 looped", "5 stacked")} for row in ("none", "none, logits cached")}

    print_table(rows, per_image, packed)
    print(f"wall time {time.perf_counter() - started:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**info, "rows": rows, "aug_ops_per_image": per_image, "packed_over_one_cell": packed,
                       "targets": {"packed_over_one_cell": PACK_TARGET, "aug_ops_per_image": AUG_TARGET}}, f, indent=2)
        print(f"results in {args.json}")
    syncing = [f"{aug}, {way}" for aug, ways in rows.items() for way, r in ways.items() if r["host_syncs"]]
    if syncing:
        raise SystemExit(f"host syncs in the step of {', '.join(syncing)} (their names are in the JSON)")


def print_table(rows: dict, per_image: dict, packed: dict) -> None:
    print("\nATen ops per training step (and per cell-step in a pack of 5); augmentation ops per training image "
          f"(one cell's step with the aug less that with none, over the batch, plus an epoch's augmentation pass over "
          f"{EPOCH_IMAGES:,} images):\n")
    print("| aug | 1 cell | 5 looped | per cell | 5 stacked | per cell | ops per epoch pass | aug ops per image "
          "| host syncs per step |")
    print("|---" * 9 + "|")
    for row, ways in rows.items():
        counts = " | ".join(f"{r['ops_per_step']:.0f}" + ("" if r["cells"] == 1 else f" | {r['ops_per_cell_step']:.0f}")
                            for r in ways.values())
        epoch = ways["1 cell"]["ops_per_epoch_pass"]
        image = f"{per_image[row]['1 cell']:.3f}" if row in per_image else "-"
        print(f"| {row} | {counts} | {epoch or '-'} | {image} "
              f"| {max(r['host_syncs_per_step'] for r in ways.values()):g} |")
    grouped = all(ways["5 stacked"]["grouped"] for ways in rows.values())
    print(f"\nthe stacked packs ran {'as one grouped network' if grouped else 'vmapped (not all grouped)'}; targets:")
    for row, ratios in packed.items():
        print(f"  packed 5-cell step / one cell's step, aug={row}: " + ", ".join(
            f"{way.split()[1]} {ratio:.2f}x" for way, ratio in ratios.items()) + f" (target <= {PACK_TARGET:g}x)")
    for row, ways in per_image.items():
        print(f"  augmentation ops per training image, {row}: {ways['1 cell']:.3f} (target <= {AUG_TARGET:g})")


if __name__ == "__main__":
    main()
