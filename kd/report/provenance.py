"""Where a sweep's numbers came from, as kd-report prints it: its teachers and the environment its cells share,
with a warning where cells that one table compares differ (kd/runs/provenance.py records each cell's)."""
from __future__ import annotations

from typing import Any

from kd.report.axes import split_by_axes
from kd.runs.provenance import VERSION_KEYS


def sweep_provenance(students: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """(lines naming the sweep's teachers and environment, warnings where its cells differ)."""
    done = [r for r in students if r.get("status") == "completed"]
    teachers: dict[str, dict] = {}
    per_table_seed: dict[tuple[str, int], set[str]] = {}
    for label, part in split_by_axes(done):  # a grid over pair= or teacher= has a teacher per table, by design
        for r in part:
            if r.get("teacher_sha256"):
                teachers.setdefault(r["teacher_sha256"], r)
                per_table_seed.setdefault((label, int(r["seed"])), set()).add(r["teacher_sha256"])
    lines = [f"teacher {r['teacher']} (seed {r['seed']}): test top-1 {r['teacher_top1']:.2f}%, sha256 {sha[:12]}, "
             f"{r.get('teacher_format', 'kd')} format, {r['teacher_checkpoint']}"
             for sha, r in sorted(teachers.items(), key=lambda kv: kv[1]["seed"])]
    warnings = []
    mixed = {key: shas for key, shas in per_table_seed.items() if len(shas) > 1}
    if mixed:  # each seed has its own teacher; within a seed every cell of one table must share it
        (label, seed), shas = min(mixed.items())
        warnings.append(f"the cells of seed {seed}{f' in the table {label}' if label else ''} used {len(shas)} "
                        f"different teachers (above); their differences mix the students' with the teachers'")
    envs = [r["environment"] for r in done if "environment" in r]
    if envs:
        common = {k: envs[0].get(k) for k in VERSION_KEYS if all(e.get(k) == envs[0].get(k) for e in envs)}
        lines.append("environment: " + ", ".join(f"{k} {v}" for k, v in common.items()))
        for key in VERSION_KEYS:
            values = sorted({str(e.get(key)) for e in envs})
            if len(values) > 1:
                warnings.append(f"the cells ran under different {key}: {', '.join(values)} (a resumed or requeued "
                                f"cell on another node?); their numbers are not comparable bit for bit")
        devices = sorted({str(e.get("device")) for e in envs})
        lines.append(f"device(s): {', '.join(devices)}")
    return lines, warnings
