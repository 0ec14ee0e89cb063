"""The cost of the diagnostics (kd/training/diagnostics.py), side by side on one device: a train step with them (as kd
runs it) against the same step without, and a test evaluation with the student-teacher fidelity against one
without.

    python benchmarks/bench_diagnostics.py                     # CPU: resnet32x4 -> resnet8x4, fc, ~2 min
    python benchmarks/bench_diagnostics.py --device cuda --steps 100 --warmup 30

Both steps are kd's own make_pack / make_teaching / train_one_epoch on synthetic CIFAR-shaped data; the
baseline's Teaching runs the teacher on the same view but updates no statistics. Rounds alternate between
the two so that a noisy machine slows both alike; the best round counts.
"""
from __future__ import annotations

import time

import torch

from bench_pipeline import step_arguments, NUM_CLASSES, Setup, compose_config, sync, synthetic_splits
from kd.data.augment import NoAugment
from kd.data.datasets import ImageSplits
from kd.training.engine import autocast_for, evaluate, make_batches, test_logits
from kd.training.teacher_views import Teaching


class WithoutDiagnostics(Teaching):
    """kd's Teaching minus its per-step statistics: the baseline the diagnostics' cost is measured against."""

    def step(self, wanted: set, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> dict:
        out = {}
        for view in wanted:
            x, _, i = self.views.inputs(view, images, labels, indices)
            out[view] = self.fns[view](x, i)
        return out

    def read(self) -> dict:
        return {}


def eval_seconds(setup: Setup, splits: ImageSplits, with_fidelity: bool) -> float:
    """One evaluation of the student on the test split, with or without its fidelity to the teacher."""
    batches = make_batches(setup.cfg, splits, "test", NoAugment(), setup.device, shuffle=False)
    autocast = autocast_for(setup.device, setup.cfg.trainer.bf16)
    teacher = test_logits(setup.teaching.fns[next(iter(setup.teaching.fns))].model, batches, splits, autocast) \
        if with_fidelity else None
    sync(setup.device)
    started = time.perf_counter()
    evaluate(setup.update.students[0].model, batches, autocast, "test", teacher)
    sync(setup.device)
    return time.perf_counter() - started


def main() -> None:
    parser = step_arguments(__doc__)
    parser.add_argument("--test-images", type=int, default=2000)
    args = parser.parse_args()
    device = torch.device(args.device)
    cfg = compose_config([f"pair={args.pair}", "alpha=0.5", f"aug={args.aug}", f"trainer.device={args.device}",
                          f"trainer.batch_size={args.batch_size}"])
    train = synthetic_splits((args.warmup + args.steps) * args.batch_size, cfg.data.mean, cfg.data.std)
    test = synthetic_splits(args.test_images, cfg.data.mean, cfg.data.std, seed=1)
    splits = ImageSplits("synthetic", train.train_images, train.train_labels, test.train_images, test.train_labels,
                         NUM_CLASSES, train.mean, train.std)
    setups = {"with": Setup([cfg], splits, device), "without": Setup([cfg], splits, device)}
    setups["without"].teaching.__class__ = WithoutDiagnostics
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"{args.pair}, aug={args.aug}, batch {args.batch_size}, {name}, torch {torch.__version__}; best of "
          f"{args.rounds} alternating rounds of {args.warmup} warmup + {args.steps} timed steps, and of "
          f"{args.rounds} test evaluations on {args.test_images} images")
    best = {key: 0.0 for key in setups}
    evals = {True: float("inf"), False: float("inf")}
    for _ in range(args.rounds):
        for key, setup in setups.items():
            best[key] = max(best[key], setup.images_per_s(args.warmup, args.steps))
        for fidelity in evals:
            evals[fidelity] = min(evals[fidelity], eval_seconds(setups["with"], splits, fidelity))
    print("\n| | without diagnostics | with | cost |")
    print("|---|---|---|---|")
    print(f"| train step, images/s | {best['without']:.0f} | {best['with']:.0f} | "
          f"{100 * (best['without'] / best['with'] - 1):+.1f}% |")
    print(f"| test evaluation, s | {evals[False]:.3f} | {evals[True]:.3f} | "
          f"{100 * (evals[True] / evals[False] - 1):+.1f}% |")


if __name__ == "__main__":
    main()
