"""How far a stacked pack's results sit from the loop's, beside how far another seed moves them.

    python benchmarks/stacked_agreement.py                       # digits, seeds 0-2, 5/20/60 epochs (~15 min, 2 cores)
    python benchmarks/stacked_agreement.py --seeds 0 1 --epochs 5 --quick   # a smoke run (seconds)

`trainer.pack_mode=stacked` is not bit-identical to the default loop (float reassociation in the grouped
network), so its cells end elsewhere. Whether that matters is a question of scale: this runs the grid
`alpha=0,0.5,1.0 aug=none,fc` on digits in both modes, for several seeds and lengths, and prints, per length,
the final top-1 differences loop vs stacked (same seed) next to the differences between two seeds of the loop
(same mode), in test images of the 360 and in points. A stacked pack is as good as the loop where the first
column is no larger than the second.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GRID = ["alpha=0,0.5,1.0", "aug=none,fc", "data=digits", "logger=none"]
MODES = {"loop": [], "stacked": ["trainer.pack_mode=stacked"]}


def final_top1s(sweep: Path) -> dict[str, float]:
    """{"alpha=..,aug=..": final test top-1} of one finished sweep (the cell, whatever else its dir name holds)."""
    found = {",".join(part for part in p.parent.name.split(",") if part.startswith(("alpha=", "aug="))):
             json.loads(p.read_text())["final_top1"] for p in sweep.glob("*/results.json")}
    if not found:
        raise SystemExit(f"no results.json under {sweep}")
    return found


def run_sweep(args: list[str], sweep: Path, env: dict) -> dict[str, float]:
    proc = subprocess.run([sys.executable, str(REPO / "kd" / "train.py"), "-m", *GRID, *args,
                           f"hydra.sweep.dir={sweep}"], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"kd/train.py {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return final_top1s(sweep)


def summary(diffs_points: list[float], test_size: int) -> str:
    """'mean / max' of absolute differences, in test images and in points."""
    images = [abs(d) * test_size / 100 for d in diffs_points]
    return (f"{statistics.mean(images):.1f} / {max(images):.0f} images "
            f"({statistics.mean(map(abs, diffs_points)):.2f} / {max(map(abs, diffs_points)):.2f} pts)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, nargs="+", default=[5, 20, 60])
    parser.add_argument("--quick", action="store_true", help="a 1-epoch teacher (smoke run: meaningless numbers)")
    parser.add_argument("--json", type=Path, help="also write every cell's top-1 here")
    opts = parser.parse_args()
    if len(opts.seeds) < 2:
        parser.error("--seeds needs at least two seeds: the seed-to-seed spread is the yardstick")
    test_size = 360  # conf/data/digits.yaml: 360 held-out test images
    quick = ["teacher.epochs=1", "teacher.min_top1=0"] if opts.quick else []
    print(f"digits, grid {' '.join(GRID[:2])}; seeds {opts.seeds}; final test top-1 of each cell (360 test images)\n")
    print("| epochs | loop vs stacked, same seed: mean / max | loop, seed vs seed: mean / max "
          "| stacked, seed vs seed: mean / max | mean top-1 loop | mean top-1 stacked |")
    print("|---|---|---|---|---|---|")
    everything = {}
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "KD_HOME": f"{tmp}/home", "WANDB_MODE": "disabled"}
        for epochs in opts.epochs:
            top1 = {(mode, seed): run_sweep([f"trainer.epochs={epochs}", f"seed={seed}", *quick, *extra],
                                            Path(tmp) / f"e{epochs}-{mode}-s{seed}", env)
                    for seed in opts.seeds for mode, extra in MODES.items()}
            everything[epochs] = {f"{mode} seed={seed}": cells for (mode, seed), cells in top1.items()}
            cells = sorted(top1["loop", opts.seeds[0]])
            modes = [top1["loop", s][c] - top1["stacked", s][c] for s in opts.seeds for c in cells]
            seeds = {mode: [top1[mode, a][c] - top1[mode, b][c] for a, b in itertools.combinations(opts.seeds, 2)
                            for c in cells] for mode in MODES}
            means = {mode: statistics.mean(top1[mode, s][c] for s in opts.seeds for c in cells) for mode in MODES}
            print(f"| {epochs} | {summary(modes, test_size)} | {summary(seeds['loop'], test_size)} "
                  f"| {summary(seeds['stacked'], test_size)} | {means['loop']:.2f} | {means['stacked']:.2f} |",
                  flush=True)
    print(f"\n{len(cells)} cells x {len(opts.seeds)} seeds per length; 'seed vs seed' pairs every two seeds per cell.")
    if opts.json:
        opts.json.write_text(json.dumps(everything, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
