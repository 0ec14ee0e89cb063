"""Accuracy parity: kd's device pipeline vs the conventional DataLoader pipeline on the digits quickstart.

    python benchmarks/parity.py                      # 3 seeds x 3 aug levels x 2 pipelines, CPU minutes
    python benchmarks/parity.py --seeds 0 1 2 3 4 --alpha 0.9 -- trainer.epochs=30   # extra Hydra overrides after --

Both pipelines train the same student from the same cached teacher (one per seed) with
the digits recipe in conf/data/digits.yaml; only `trainer.pipeline` differs. Their random
streams differ, so the comparison is of the mean final top-1 over seeds. Exits non-zero if
a gap exceeds the tolerance.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

from hydra import compose, initialize_config_dir

from kd.train import train

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
PIPELINES = ("device", "dataloader")


def run(overrides: list[str], out_dir: Path) -> float:
    """Final test top-1 (%) of one run of `python kd/train.py data=digits <overrides>`."""
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("config", overrides=["data=digits", "logger=none", *overrides, f"out_dir={out_dir}"])
    return float(train(cfg)["final_top1"])


def spread(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--augs", nargs="+", default=["none", "fc", "fcra"], choices=["none", "fc", "fcra"])
    parser.add_argument("--alpha", type=float, default=0.5, help="KD weight of every run (teacher used if > 0)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tolerance", type=float, default=1.0, help="allowed |mean top-1 gap| in points")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run, e.g. trainer.epochs=30")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="kd-parity-"))
    os.environ["KD_HOME"] = str(work)  # a fresh teacher cache: teachers are trained here, once per seed
    top1: dict[tuple[str, str], list[float]] = {}
    for seed in args.seeds:
        for aug in args.augs:
            for pipeline in PIPELINES:
                overrides = [f"aug={aug}", f"alpha={args.alpha}", f"seed={seed}", f"trainer.pipeline={pipeline}",
                             f"trainer.device={args.device}", *args.overrides]
                acc = run(overrides, work / f"{aug}-{pipeline}-seed{seed}")
                top1.setdefault((aug, pipeline), []).append(acc)
                print(f"seed {seed} aug={aug} pipeline={pipeline}: top-1 {acc:.2f}%", flush=True)

    print(f"\nmean final top-1 (%) over seeds {args.seeds}, alpha={args.alpha}, digits quickstart recipe")
    print("| aug | device (kd) | dataloader | device - dataloader | within |")
    print("|---|---|---|---|---|")
    ok = True
    for aug in args.augs:
        dev, ref = top1[aug, "device"], top1[aug, "dataloader"]
        gap = statistics.mean(dev) - statistics.mean(ref)
        within = abs(gap) <= args.tolerance
        ok &= within
        print(f"| {aug} | {statistics.mean(dev):.2f} ± {spread(dev):.2f} "
              f"| {statistics.mean(ref):.2f} ± {spread(ref):.2f} | {gap:+.2f} "
              f"| {'yes' if within else 'NO'} (±{args.tolerance:g}) |")
    print(f"(± is the standard deviation over seeds; runs in {work})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
