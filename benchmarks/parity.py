"""Accuracy parity on the digits recipe: two settings that should not change accuracy, seed by seed.

    python benchmarks/parity.py                      # pipelines: kd's device pipeline vs DataLoader, CPU minutes
    python benchmarks/parity.py --compare speed --device cuda    # a GPU: bf16 + compile + channels_last vs fp32
    python benchmarks/parity.py --seeds 0 1 2 3 4 --alpha 0.9 -- trainer.epochs=30   # extra Hydra overrides after --

`--compare pipeline`: `trainer.pipeline=device` vs `dataloader`. `--compare speed`: kd's GPU
defaults (bf16 autocast, torch.compile, channels_last) vs all three off (fp32, as the public
benchmarks train), on CIFAR-shaped 32x32 digits with resnet8x4. Both arms train the same
student from the same cached teacher (one per seed) with the digits recipe
(conf/data/digits.yaml). Per aug level it prints each arm's mean final top-1 and the paired
difference (per seed) with its 95% interval (kd.report.stats). Exits non-zero if a mean gap exceeds the
tolerance.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

from hydra import compose, initialize_config_dir

from kd.report.stats import paired
from kd.runs.job import train

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
ARMS = {  # what is compared: two named override lists, and what both arms share
    "pipeline": ({"device (kd)": ["trainer.pipeline=device"], "dataloader": ["trainer.pipeline=dataloader"]}, []),
    "speed": ({"bf16+compile+NHWC": [],
               "fp32": ["trainer.bf16=false", "trainer.compile=false", "trainer.channels_last=false"]},
              ["data.image_size=32", "model=resnet8x4"]),
}


def run(overrides: list[str], out_dir: Path) -> float:
    """Final test top-1 (%) of one run of `python kd/train.py data=digits <overrides>`."""
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("config", overrides=["data=digits", "logger=none", *overrides, f"out_dir={out_dir}"])
    return float(train(cfg)["final_top1"])


def spread(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compare", choices=list(ARMS), default="pipeline", help="which two settings to compare")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--augs", nargs="+", default=["none", "fc", "fcra"], choices=["none", "fc", "fcra"])
    parser.add_argument("--alpha", type=float, default=0.5, help="KD weight of every run (teacher used if > 0)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tolerance", type=float, default=1.0, help="allowed |mean top-1 gap| in points")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run, e.g. trainer.epochs=30")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="kd-parity-"))
    os.environ["KD_HOME"] = str(work)  # a fresh teacher cache: teachers are trained here, once per seed
    arms, shared = ARMS[args.compare]
    top1: dict[tuple[str, str], dict[int, float]] = {}
    for seed in args.seeds:
        for aug in args.augs:
            for arm, arm_overrides in arms.items():
                overrides = [f"aug={aug}", f"alpha={args.alpha}", f"seed={seed}", f"trainer.device={args.device}",
                             *shared, *arm_overrides, *args.overrides]
                acc = run(overrides, work / f"{aug}-{list(arms).index(arm)}-seed{seed}")
                top1.setdefault((aug, arm), {})[seed] = acc
                print(f"seed {seed} aug={aug} {arm}: top-1 {acc:.2f}%", flush=True)

    first, second = arms
    print(f"\nfinal top-1 (%) over seeds {args.seeds}, alpha={args.alpha}, digits recipe {' '.join(shared)} "
          f"{' '.join(args.overrides)}, device {args.device}")
    print(f"| aug | {first} | {second} | paired difference | mean gap within ±{args.tolerance:g} |")
    print("|---|---|---|---|---|")
    ok = True
    for aug in args.augs:
        a, b = top1[aug, first], top1[aug, second]
        gap = statistics.mean(a.values()) - statistics.mean(b.values())
        within = abs(gap) <= args.tolerance
        ok &= within
        print(f"| {aug} | {statistics.mean(a.values()):.2f} ± {spread(list(a.values())):.2f} "
              f"| {statistics.mean(b.values()):.2f} ± {spread(list(b.values())):.2f} "
              f"| {paired(a, b).format(signed=True)} | {'yes' if within else 'NO'} |")
    print(f"(arm columns: mean ± standard deviation over seeds; paired difference: mean ± 95% half-width; "
          f"runs in {work})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
