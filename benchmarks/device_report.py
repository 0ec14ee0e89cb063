"""device_check.sh's last step: its steps' outputs as one results JSON, `<date>-<gpu>.json`, and a short table.

    python benchmarks/device_report.py --work <the run's work dir> --out <dir> --commit <sha> [--dry]

Reads what the steps left in the work dir (steps.tsv, tests.xml, gpu_benchmark.json, multirun.json, profile.json;
a step that did not finish leaves its part null) and writes <out>/<date>-<gpu>.json, e.g. 2026-12-06-nvidia-h200.json
(a dry run on a CPU: <date>-cpu-dry.json, gpu null: its figures are the CPU's, in tiny form). To keep a GPU's
results, copy that file into benchmarks/results/ and commit it.
"""
from __future__ import annotations

import argparse
import json
import re
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import torch

from kd.runs.provenance import environment

AUGS = ("none", "fc", "fcra")


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def test_counts(path: Path) -> dict | None:
    """passed/failed/errors/skipped from pytest's JUnit XML."""
    if not path.is_file():
        return None
    suites = ElementTree.parse(path).getroot()
    suite = suites if suites.tag == "testsuite" else suites.find("testsuite")
    n = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    return {"passed": n["tests"] - n["failures"] - n["errors"] - n["skipped"], "failed": n["failures"],
            "errors": n["errors"], "skipped": n["skipped"]}


def way_rates(bench: dict) -> tuple[dict, dict]:
    """({way letter: {aug: cell-images/s, "teacher": ...}}, {way letter: projected grid hours}); None where a
    measurement did not run or failed."""
    def rate(result: dict | None) -> float | None:
        return None if result is None or "error" in result else result["cell_images_per_s"]

    ways = sorted({w for per_aug in (bench["rates"]["teacher"], *bench["rates"]["cells"].values()) for w in per_aug})
    rates = {w[0]: {**{aug: rate(bench["rates"]["cells"][aug].get(w)) for aug in AUGS},
                    "teacher": rate(bench["rates"]["teacher"].get(w))} for w in ways}
    hours = {w[0]: None if not s else s / 3600 for w, s in bench.get("projected_grid_s", {}).items()}
    return rates, hours


def steps(path: Path) -> dict:
    rows = [line.split("\t") for line in path.read_text().splitlines()] if path.is_file() else []
    return {name: {"exit": int(rc), "seconds": int(s), "limit_s": int(limit)} for name, rc, s, limit in rows}


def num(value: float | None, fmt: str = "{:.0f}") -> str:
    return "-" if value is None else fmt.format(value)


def percent(fraction: float | None) -> str:
    return "-" if fraction is None else f"{100 * fraction:.0f}%"


def table(r: dict) -> str:
    lines = [f"kd device check {r['date']}, commit {r['commit']}: {r['measured_on']}"]
    if r["dry"]:
        lines.append("DRY RUN: the steps in tiny form on a CPU; every figure below is this CPU's, none a GPU's")
    lines.append("steps: " + ", ".join(f"{name} exit {s['exit']} in {s['seconds']} s (limit {s['limit_s']})"
                                       for name, s in r["steps"].items()))
    t = r["cuda_tests"]
    lines.append("cuda tests: " + ("no result" if t is None else
                                   f"{t['passed']} passed, {t['failed']} failed, {t['errors']} errors, "
                                   f"{t['skipped']} skipped"))
    if r["ways"]:
        lines += ["", f"cell-images/s, {r['ways_pair']}, batch {r['ways_batch_size']} (a: the conventional loop); "
                      f"projected: the 15-cell x 240-epoch grid + its teacher", "",
                  "| way | none | fc | fcra | teacher | projected grid |", "|---|---|---|---|---|---|"]
        for w, rates in r["ways"].items():
            lines.append(f"| {w} | " + " | ".join(num(rates[k]) for k in (*AUGS, "teacher")) +
                         f" | {num(r['projected_grid_hours'][w], '{:.1f} h')} |")
    m = r["multirun"]
    if m is not None and "compile_s" in m:
        lines += ["", f"multirun ({m['cells']} digits cells + teacher, {m['epochs']} epochs, {m['device']}): wall "
                      f"{m['wall_s']:.1f} s, first epochs' extra (compile, warm-up) {num(m['compile_s'], '{:.1f} s')}"
                      f" ({percent(m['compile_share'])})"]
    p = r["profile"]
    if p is not None:
        lines += ["", f"profile: {p['pair']}, aug {p['aug']}, batch {p['batch_size']}, {p['steps']} steps per way "
                      f"(under the profiler: slower than gpu.py's rates)", "",
                  "| way | step | kernels/step | GPU busy | kernel ms/step | host ms/step | CPU ms/step | recompiles "
                  "| cudagraph skips | top kernel or op |", "|---|---|---|---|---|---|---|---|---|---|"]
        for w, s in p["ways"].items():
            if "error" in s:
                lines.append(f"| {w} | failed: {s['error'][:80]} |")
                continue
            top = (s["top_kernels"] or s["top_cpu_ops"] or [{"name": "-"}])[0]["name"][:40]
            lines.append(f"| {w} | {s['step']} | {num(s['kernels_per_step'])} | {percent(s['gpu_busy_fraction'])} | "
                         f"{num(s['kernel_ms_per_step'], '{:.2f}')} | {s['host_ms_per_step']:.1f} | "
                         f"{s['cpu_ms_per_step']:.1f} | {s['compile']['recompiles']} | "
                         f"{s['compile']['cudagraph_skips']} | {top} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--commit", required=True)
    parser.add_argument("--dry", action="store_true", help="a CPU's dry run: gpu null, the file named cpu-dry")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.dry else "cpu")
    env = environment(device)
    bench = read_json(args.work / "gpu_benchmark.json")
    rates, hours = way_rates(bench) if bench is not None else ({}, {})
    result = {
        "gpu": env["gpu"], "date": time.strftime("%Y-%m-%d"), "commit": args.commit, "dry": args.dry,
        "measured_on": env["device"] + (" (dry run: tiny sizes)" if args.dry else ""),
        "steps": steps(args.work / "steps.tsv"),
        "cuda_tests": test_counts(args.work / "tests.xml"),
        "ways": rates, "projected_grid_hours": hours,
        "ways_pair": None if bench is None else bench["pair"],
        "ways_batch_size": None if bench is None else bench["batch_size"],
        "multirun": read_json(args.work / "multirun.json"),
        "profile": read_json(args.work / "profile.json"),
        "gpu_benchmark": bench,
        "environment": env,
    }
    name = "cpu-dry" if args.dry else re.sub(r"[^a-z0-9]+", "-", (env["gpu"] or "cpu").lower()).strip("-")
    path = args.out / f"{result['date']}-{name}.json"
    path.write_text(json.dumps(result, indent=2))
    print(table(result))
    print(f"\nresults: {path}")


if __name__ == "__main__":
    main()
