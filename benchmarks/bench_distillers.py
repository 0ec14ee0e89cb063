"""The cost of a train step under each distiller, relative to Hinton's KD, side by side on one device.

    python benchmarks/bench_distillers.py                      # CPU: resnet32x4 -> resnet8x4, fc, ~2 min
    python benchmarks/bench_distillers.py --device cuda --steps 100 --warmup 30 --pair wrn40_2-wrn16_2

Each distiller of conf/loss/ trains one cell (alpha 0.5, a pack of one) through kd's own make_pack /
make_teaching / train_one_epoch on synthetic CIFAR-shaped data; rounds alternate between the distillers so that
a noisy machine slows all of them alike, and the best round counts. KD and DKD read logits only; the feature
distillers also make the student and the teacher return their stage features, and most train learned parts
(connectors, embeddings: their parameters and buffers, CRD's memory banks included, are the "learned state"
column; on CUDA also the peak memory of the step). CRD's banks hold one row per training image: here the
synthetic split's, on CIFAR-100 50,000. A modifier's rows sit beside their plain distiller's: CTKD's learned
temperature on KD (`ctkd`, `ctkd_ls`) and on DKD (`dkd+ctkd`). `--losses ctkd,dkd,dkd+ctkd` times only those
(and KD, the reference). MLKD also draws its strong view of each batch and runs the student (forward and
backward) and the teacher on it: about twice KD's step by construction, as its authors' trainer.
"""
from __future__ import annotations


import torch

from bench_pipeline import step_arguments, Setup, compose_config, synthetic_splits
from kd.paths import CONF_DIR

MODIFIED = {"dkd+ctkd": ["loss=dkd", "loss.learned_temperature=true"]}  # a modifier on a distiller without a YAML of it
ROWS = {"kd": ["loss=kd"], **{p.stem: [f"loss={p.stem}"] for p in sorted((CONF_DIR / "loss").glob("*.yaml"))
                              if p.stem != "kd"}, **MODIFIED}


def main() -> None:
    parser = step_arguments(__doc__)
    parser.add_argument("--losses", default=",".join(ROWS), help="comma-separated rows to time; kd always")
    args = parser.parse_args()
    unknown = set(args.losses.split(",")) - set(ROWS)
    if unknown:
        parser.error(f"--losses: no row {sorted(unknown)}; the rows are {', '.join(ROWS)}")
    losses = ["kd", *(loss for loss in ROWS if loss in args.losses.split(",") and loss != "kd")]
    device = torch.device(args.device)
    base = compose_config([])
    splits = synthetic_splits((args.warmup + args.steps) * args.batch_size, base.data.mean, base.data.std)
    setups = {loss: Setup([compose_config([f"pair={args.pair}", *ROWS[loss], "alpha=0.5", f"aug={args.aug}",
                                           f"trainer.device={args.device}", f"trainer.batch_size={args.batch_size}"])],
                          splits, device) for loss in losses}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"{args.pair}, aug={args.aug}, batch {args.batch_size}, {name}, torch {torch.__version__}; best of "
          f"{args.rounds} alternating rounds of {args.warmup} warmup + {args.steps} timed steps")
    best = {loss: 0.0 for loss in losses}
    peak = {loss: 0 for loss in losses}
    for _ in range(args.rounds):
        for loss, setup in setups.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            best[loss] = max(best[loss], setup.images_per_s(args.warmup, args.steps))
            if device.type == "cuda":
                peak[loss] = max(peak[loss], torch.cuda.max_memory_allocated(device))
    learned = {loss: learned_state_mb(setup) for loss, setup in setups.items()}
    print("\n| distiller | images/s | step time vs KD | learned state (MB) |" + (" peak memory vs KD |" if peak["kd"] else ""))
    print("|---|---|---|---|" + ("---|" if peak["kd"] else ""))
    for loss in losses:
        memory = f" {peak[loss] / peak['kd']:.2f}x |" if peak["kd"] else ""
        print(f"| {loss} | {best[loss]:.0f} | {best['kd'] / best[loss]:.2f}x | {learned[loss]:.2f} |{memory}")


def learned_state_mb(setup: Setup) -> float:
    """The distiller's own parameters and buffers (connectors, embeddings, memory banks), in MB."""
    (student,) = setup.update.students
    return sum(t.numel() * t.element_size() for t in [*student.distiller.parameters(), *student.distiller.buffers()]) / 1e6


if __name__ == "__main__":
    main()
