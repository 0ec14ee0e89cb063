"""Each job's machine-readable results file, and reading a sweep's worth of them."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

from kd.runs.overrides import cell_overrides

RESULTS_FILE = "results.json"


class CorruptResultsError(ValueError):
    """A results.json that is not a JSON object (cut short, emptied: kd writes it atomically, a disk or a copy
    does not); the message names the file."""


def write_results(out_dir: Path, results: dict[str, Any]) -> Path:
    """Atomically write `results.json` so a reader never sees half a file."""
    path = Path(out_dir) / RESULTS_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=2, sort_keys=True))
    os.replace(tmp, path)
    return path


def read_results(path: Path) -> dict[str, Any]:
    """A results file's contents; CorruptResultsError, naming the file, where they are not a JSON object."""
    text = Path(path).read_bytes()
    try:
        results = json.loads(text)
    except ValueError as err:  # JSONDecodeError, or bytes that are no text
        raise CorruptResultsError(f"{path} is truncated or corrupt ({len(text)} bytes; not JSON: {err})") from None
    if not isinstance(results, dict):
        raise CorruptResultsError(f"{path} is corrupt (a JSON {type(results).__name__}, not kd's results object)")
    return results


def set_aside_corrupt_results(out_dir: Path) -> Optional[str]:
    """Keep an unreadable results.json aside (its cell then runs again); what was done, in words, or None."""
    from kd.checkpoint import set_aside  # imports torch: kd/train.py reads results before torch may load

    path = Path(out_dir) / RESULTS_FILE
    if not path.is_file():
        return None
    try:
        read_results(path)
    except CorruptResultsError as err:
        return f"{err}; kept as {set_aside(path)}, and the cell runs again (resuming its checkpoint.pt if intact)"
    return None


def collect_sweep(sweep_dir: Path) -> list[dict[str, Any]]:
    """All results files directly under the sweep's job dirs, each tagged with its job dir and its swept
    keys (`overrides`: kd/runs/overrides.py). An unreadable one is `{"status": "corrupt", "error": ...}` with
    its job dir and overrides, and no stage: what reads a sweep's cells passes over it, and can name it."""
    found = []
    for path in sorted(Path(sweep_dir).glob(f"*/{RESULTS_FILE}")):
        try:
            result = read_results(path)
        except CorruptResultsError as err:
            result = {"status": "corrupt", "error": str(err)}
        result["job_dir"] = str(path.parent)
        result["overrides"] = cell_overrides(path.parent)
        found.append(result)
    return found
