"""Each job's machine-readable results file, and reading a sweep's worth of them."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from kd.runs.overrides import cell_overrides

RESULTS_FILE = "results.json"


def write_results(out_dir: Path, results: dict[str, Any]) -> Path:
    """Atomically write `results.json` so a reader never sees half a file."""
    path = Path(out_dir) / RESULTS_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=2, sort_keys=True))
    os.replace(tmp, path)
    return path


def read_results(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def collect_sweep(sweep_dir: Path) -> list[dict[str, Any]]:
    """All results files directly under the sweep's job dirs, each tagged with its job dir and its swept
    keys (`overrides`: kd/runs/overrides.py)."""
    found = []
    for path in sorted(Path(sweep_dir).glob(f"*/{RESULTS_FILE}")):
        result = read_results(path)
        result["job_dir"] = str(path.parent)
        result["overrides"] = cell_overrides(path.parent)
        found.append(result)
    return found
