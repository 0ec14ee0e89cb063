"""The cost of a train step under each distiller, relative to Hinton's KD, side by side on one device.

    python benchmarks/bench_distillers.py                      # CPU: resnet32x4 -> resnet8x4, fc, ~2 min
    python benchmarks/bench_distillers.py --device cuda --steps 100 --warmup 30 --pair wrn40_2-wrn16_2

Each distiller trains one cell (alpha 0.5, a pack of one) through kd's own make_pack / make_teaching /
train_one_epoch on synthetic CIFAR-shaped data; rounds alternate between the distillers so that a noisy
machine slows all of them alike, and the best round counts. KD and DKD read logits only; FitNet and AT
also make the student and the teacher return their stage features (FitNet adds its regressor's step).
"""
from __future__ import annotations


import torch

from bench_pipeline import step_arguments, Setup, compose_config, synthetic_splits

LOSSES = ("kd", "dkd", "fitnet", "at")


def main() -> None:
    parser = step_arguments(__doc__)
    args = parser.parse_args()
    device = torch.device(args.device)
    base = compose_config([])
    splits = synthetic_splits((args.warmup + args.steps) * args.batch_size, base.data.mean, base.data.std)
    setups = {loss: Setup([compose_config([f"pair={args.pair}", f"loss={loss}", "alpha=0.5", f"aug={args.aug}",
                                           f"trainer.device={args.device}", f"trainer.batch_size={args.batch_size}"])],
                          splits, device) for loss in LOSSES}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"{args.pair}, aug={args.aug}, batch {args.batch_size}, {name}, torch {torch.__version__}; best of "
          f"{args.rounds} alternating rounds of {args.warmup} warmup + {args.steps} timed steps")
    best = {loss: 0.0 for loss in LOSSES}
    for _ in range(args.rounds):
        for loss, setup in setups.items():
            best[loss] = max(best[loss], setup.images_per_s(args.warmup, args.steps))
    print("\n| distiller | images/s | step time vs KD |")
    print("|---|---|---|")
    for loss in LOSSES:
        print(f"| {loss} | {best[loss]:.0f} | {best['kd'] / best[loss]:.2f}x |")


if __name__ == "__main__":
    main()
