"""Throughput of the KD train step: the conventional pipeline vs kd's, side by side on one device.

    python benchmarks/bench_pipeline.py                        # CPU defaults, ~3.5 min on 2 cores
    python benchmarks/bench_pipeline.py --device cuda --steps 200 --warmup 50

(a) conventional: per-image PIL transforms in DataLoader workers (num_workers = cores), fp32,
    the teacher run on every step (kd's `trainer.pipeline=dataloader`, every fast switch off);
(b) kd: the split on the device as uint8 with per-image augmentation there, teacher logits
    cached for aug=none, no teacher at alpha=0, channels_last, and on CUDA also bf16,
    torch.compile and cudnn benchmark (kd's defaults).
Both run kd's own `make_batches` / `make_teacher_fn` / `train_one_epoch` on synthetic
CIFAR-shaped uint8 data (no download). Timing excludes evaluation and teacher training.
"""
from __future__ import annotations

import argparse
import itertools
import os
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig

import kd.train  # noqa: F401  (registers the config schemas)
from kd.data.datasets import ImageSplits
from kd.training.capture import plan_compile
from kd.training.engine import Cell, autocast_for, make_batches, make_teaching, train_one_epoch
from kd.training.students import make_pack

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
EPOCH_IMAGES = 50_000  # CIFAR-100's training split
GRID_EPOCHS = 240
GRID_ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)  # x 3 aug levels = the 15-cell grid
NUM_CLASSES = 100


def compose_config(overrides: list[str]) -> DictConfig:
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        return compose("config", overrides=["logger=none", *overrides])


def synthetic_splits(num_images: int, mean: list[float], std: list[float], seed: int = 0) -> ImageSplits:
    """Random CIFAR-shaped uint8 images: the speed of a step does not depend on what the pixels show."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (num_images, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, NUM_CLASSES, (num_images,), generator=g)
    return ImageSplits("synthetic", images, labels, images[:0], labels[:0], NUM_CLASSES, tuple(mean), tuple(std))


class TimedBatches:
    """The first `warmup + steps` batches; the clock starts when batch `warmup` is asked for."""

    def __init__(self, batches, warmup: int, steps: int, device: torch.device) -> None:
        self.batches, self.warmup, self.steps, self.device = batches, warmup, steps, device
        self.started = float("nan")

    def __iter__(self):
        for i, batch in enumerate(itertools.islice(self.batches, self.warmup + self.steps)):
            if i == self.warmup:
                sync(self.device)
                self.started = time.perf_counter()
            yield batch


def step_arguments(doc: str) -> argparse.ArgumentParser:
    """The options of a side-by-side step benchmark of one pair (bench_distillers.py, bench_diagnostics.py)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--pair", default="resnet32x4-resnet8x4", help="a conf/pair/ option")
    parser.add_argument("--aug", default="fc")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    return parser


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Setup:
    """A pack's KD train step (one cell per config; a single cell is a pack of one), built once through kd's
    own functions as `kd.training.engine.fit` builds it, and timed in rounds."""

    def __init__(self, cfgs: list[DictConfig], splits: ImageSplits, device: torch.device, aug=None) -> None:
        cfg = cfgs[0]
        self.cfg, self.device, self.k = cfg, device, len(cfgs)
        self.plan = plan_compile(cfg.trainer, device)
        cells = [Cell(c, Path("unused"), {}, lambda row, step: None, "", "") for c in cfgs]
        teacher = None
        if any(c.alpha > 0 for c in cfgs):
            teacher = instantiate(cfg.teacher.arch, num_classes=NUM_CLASSES).to(device).eval()
        example = torch.zeros((2, *splits.train_images.shape[1:]), device=device)  # what a distiller's parts fit
        self.update = make_pack(cells, NUM_CLASSES, device, self.plan, teacher, example, splits.split("train")[1])
        aug = instantiate(cfg.aug) if aug is None else aug  # another: fcra in the form CUDA runs (ops.py)
        self.autocast = autocast_for(device, cfg.trainer.bf16)
        features = any(s.alpha > 0 and s.distiller.needs_features for s in self.update.students)
        self.batches = make_batches(cfg, splits, "train", aug, device, shuffle=True)
        views = {s.view for s in self.update.students if s.alpha > 0}
        sync(device)
        started = time.perf_counter()
        self.teaching = make_teaching(cfg, teacher, splits, aug, self.batches, views, device, self.autocast, self.plan,
                                      features)
        sync(device)
        self.cache_s = time.perf_counter() - started  # ~0 unless it built the aug=none logit cache

    def images_per_s(self, warmup: int, steps: int) -> float:
        """Training images per second summed over the pack's cells: the grid's progress rate."""
        torch.backends.cudnn.benchmark = self.cfg.trainer.cudnn_benchmark
        timed = TimedBatches(self.batches, warmup, steps, self.device)
        train_one_epoch(self.update, timed, self.teaching, self.autocast, 0, set(), self.plan)
        sync(self.device)
        return self.k * steps * self.cfg.trainer.batch_size / (time.perf_counter() - timed.started)


def pipeline_overrides(kind: str, device: str, workers: int, kd_overrides: list[str]) -> list[str]:
    if kind == "conventional":
        return ["trainer.pipeline=dataloader", f"trainer.num_workers={workers}", "trainer.bf16=false",
                "trainer.channels_last=false", "trainer.compile=false", "trainer.cudnn_benchmark=false",
                "trainer.teacher_logit_cache=false", f"trainer.device={device}"]
    return ["trainer.pipeline=device", f"trainer.device={device}", *kd_overrides]


def fmt_hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument("--pairs", nargs="+", default=["resnet32:resnet8", "resnet32x4:resnet8x4"],
                        help="teacher:student pairs")
    parser.add_argument("--augs", nargs="+", default=["none", "fc", "fcra"], choices=["none", "fc", "fcra"])
    parser.add_argument("--steps", type=int, default=6, help="timed train steps per round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before each round (~50 on a GPU, "
                        "to cover torch.compile)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per setting; the best counts")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)),
                        help="DataLoader workers of the conventional pipeline (default: the cores)")
    parser.add_argument("--kd-overrides", nargs="*", default=[],
                        help="Hydra overrides for kd's side only, for ablations, e.g. trainer.channels_last=false")
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op threads of the training process (default: torch's, one per core); "
                        "1 is steadier when other jobs share the cores")
    args = parser.parse_args()

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    base = compose_config([])
    splits = synthetic_splits((args.warmup + args.steps) * args.batch_size, base.data.mean, base.data.std)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {os.cpu_count()} cores"
    print(f"device: {name}; torch {torch.__version__}; threads {torch.get_num_threads()}; "
          f"batch {args.batch_size}; best of {args.rounds} rounds of {args.warmup} warmup + {args.steps} timed steps; "
          f"conventional workers {args.workers}; kd overrides {args.kd_overrides or 'none'}; "
          f"load average {os.getloadavg()[0]:.1f}")
    header = ("| pair | aug | conventional img/s | kd img/s | kd/conv | conventional s/epoch | kd s/epoch "
              "| kd alpha=0 s/epoch | kd cache s (once) |")
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    grids = {}
    for pair in args.pairs:
        teacher, student = pair.split(":")
        conv_total = kd_total = 0.0
        for aug in args.augs:
            common = [f"model={student}", f"teacher={teacher}", f"aug={aug}", f"trainer.batch_size={args.batch_size}"]
            setups = {(kind, alpha): Setup([compose_config(
                common + pipeline_overrides(kind, args.device, args.workers, args.kd_overrides) + [f"alpha={alpha}"])],
                splits, device)
                for kind, alpha in (("conventional", 0.5), ("kd", 0.5), ("kd", 0.0))}
            rates = dict.fromkeys(setups, 0.0)
            for _ in range(args.rounds):  # interleaved, best of: a busy machine slows rounds, never speeds them
                for key, setup in setups.items():
                    rates[key] = max(rates[key], setup.images_per_s(args.warmup, args.steps))
            conv, kd_rate, kd0 = rates["conventional", 0.5], rates["kd", 0.5], rates["kd", 0.0]
            cache_s = setups["kd", 0.5].cache_s
            del setups  # stops the DataLoader's workers
            cache_epoch_s = cache_s * EPOCH_IMAGES / len(splits.train_labels)
            print(f"| {teacher}->{student} | {aug} | {conv:.0f} | {kd_rate:.0f} | {kd_rate / conv:.2f}x "
                  f"| {EPOCH_IMAGES / conv:.0f} | {EPOCH_IMAGES / kd_rate:.0f} | {EPOCH_IMAGES / kd0:.0f} "
                  f"| {cache_epoch_s:.0f} |", flush=True)
            # The public code bases run the teacher at every alpha; kd skips it at alpha=0.
            conv_total += len(GRID_ALPHAS) * GRID_EPOCHS * EPOCH_IMAGES / conv
            kd_total += sum(GRID_EPOCHS * EPOCH_IMAGES / (kd0 if a == 0 else kd_rate) for a in GRID_ALPHAS)
            kd_total += (len(GRID_ALPHAS) - 1) * cache_epoch_s
        grids[pair] = conv_total, kd_total
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f} (other jobs on the cores slow every figure)")
    print(f"Projected train time of the {len(GRID_ALPHAS) * len(args.augs)}-cell, {GRID_EPOCHS}-epoch grid "
          f"(one student seed, teacher already trained, evaluation excluded):")
    for pair, (conv_total, kd_total) in grids.items():
        print(f"  {pair.replace(':', '->')}: conventional {fmt_hours(conv_total)}, kd {fmt_hours(kd_total)} "
              f"({conv_total / kd_total:.2f}x)")


if __name__ == "__main__":
    main()
