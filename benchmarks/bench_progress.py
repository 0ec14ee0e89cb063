"""The progress line's cost against a digits epoch: what `kd.training.progress.PackProgress.epoch_done` adds per epoch.

    python benchmarks/bench_progress.py          # a few seconds

It reads the clock and, at most every 10 s, formats and logs one line; it never touches the device. The
digits epoch it is compared with is one fc pack epoch of the README's quickstart (5 cells), timed here
through kd's own loop on the real digits data.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from hydra.utils import instantiate

from bench_pipeline import compose_config
from kd.training import progress
from kd.training.capture import EAGER
from kd.training.engine import Cell, autocast_for, make_batches, make_teaching, train_one_epoch
from kd.training.students import make_pack

CALLS = 100_000


def epoch_done_s() -> float:
    """Seconds per epoch_done call, its logging included at the rate a real pack logs (at most every 10 s)."""
    logging.getLogger("kd.training.progress").setLevel(logging.WARNING)  # formatting is still paid when a line is due
    tracker = progress.PackProgress("pack", 5, 0, CALLS + 1)
    started = time.perf_counter()
    for epoch in range(CALLS):
        tracker.epoch_done(epoch, 1000.0)
    return (time.perf_counter() - started) / CALLS


def digits_epoch_s() -> float:
    """One training epoch of a 5-cell fc pack of the quickstart on digits (the median of 5)."""
    cfgs = [compose_config(["data=digits", f"alpha={a}", "aug=fc"]) for a in (0, 0.25, 0.5, 0.75, 1.0)]
    splits = instantiate(cfgs[0].data)
    device = torch.device("cpu")
    cells = [Cell(c, Path("unused"), {}, lambda row, step: None, "", "") for c in cfgs]
    teacher = instantiate(cfgs[0].teacher.arch, num_classes=splits.num_classes).eval()
    example = torch.zeros((2, *splits.train_images.shape[1:]))
    update = make_pack(cells, splits.num_classes, device, EAGER, teacher, example)
    autocast = autocast_for(device, False)
    aug = instantiate(cfgs[0].aug)
    batches = make_batches(cfgs[0], splits, "train", aug, device, shuffle=True)
    teaching = make_teaching(cfgs[0], teacher, splits, aug, batches, {s.view for s in update.students if s.alpha > 0},
                             device, autocast)
    times = []
    for epoch in range(5):
        started = time.perf_counter()
        train_one_epoch(update, batches, teaching, autocast, epoch, set())
        times.append(time.perf_counter() - started)
    return sorted(times)[2]


def main() -> None:
    call, epoch = epoch_done_s(), digits_epoch_s()
    print(f"CPU, {torch.get_num_threads()} threads, torch {torch.__version__}\n")
    print("| | seconds | share of a digits epoch |\n|---|---|---|")
    print(f"| one progress update (epoch_done) | {call:.2e} | {call / epoch:.1e} |")
    print(f"| one digits epoch, fc pack of 5 cells (training only) | {epoch:.3f} | 1 |")


if __name__ == "__main__":
    main()
