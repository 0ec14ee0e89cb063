"""A student's lineage to its teacher, declared once its runs are online.

Offline (kd's default on compute nodes) wandb refuses `use_artifact`, so a distilling student's run only names
its teacher's artifact in its config (`teacher_artifact`). After `kd-sync` uploads the runs, W&B's public API
can declare that use (`Run.use_artifact`), which draws the edge teacher -> student in W&B's lineage graph.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import wandb

from kd.runs.results import RESULTS_FILE, CorruptResultsError, read_results
from kd.tracking.wandb_tracker import read_run_file, teacher_alias, teacher_artifact_name


def teacher_uses(job_dirs: list[Path]) -> list[dict[str, Any]]:
    """Each distilling student's run and the teacher artifact it used, from its run file and results.json."""
    uses = []
    for job in job_dirs:
        info, results = read_run_file(job), job / RESULTS_FILE
        if info is None or info.get("job_type") != "student" or not results.is_file():
            continue
        try:
            result = read_results(results)
        except CorruptResultsError as err:
            print(f"kd-sync: {err}; the teacher its run used is not declared")
            continue
        if not result.get("teacher_sha256") or not result.get("teacher_checkpoint"):
            continue  # alpha = 0: the teacher never taught it
        uses.append({"job_dir": job, "run": info["id"], "project": info["project"], "entity": info.get("entity"),
                     "artifact": f"{teacher_artifact_name(Path(result['teacher_checkpoint']))}:"
                                 f"{teacher_alias(result['teacher_sha256'])}"})
    return uses


def declare_teacher_uses(uses: list[dict[str, Any]], api: Optional[Any] = None,
                         warn: Callable[[str], None] = print) -> int:
    """Declare each use through W&B's public API; a failure is one warning (the upload itself stands). Returns
    how many were declared."""
    api = api or wandb.Api()
    declared = 0
    for use in uses:
        entity = use["entity"] or api.default_entity
        try:
            run = api.run(f"{entity}/{use['project']}/{use['run']}")
            run.use_artifact(api.artifact(f"{entity}/{use['project']}/{use['artifact']}", type="model"))
            declared += 1
        except Exception as err:  # wandb's public API raises its own and requests' errors
            warn(f"kd-sync: warning: could not declare that run {use['run']} ({use['job_dir']}) used the teacher "
                 f"artifact {use['artifact']}: {type(err).__name__}: {err}")
    return declared
