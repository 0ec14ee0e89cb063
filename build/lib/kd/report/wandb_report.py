"""`kd-report --wandb`: the sweep's comparison as a W&B Report over its runs (wandb-workspaces' reports API).

The Report is built by `build_report` without contacting W&B, and saved by `publish`.
Its panels read the runs from the server, so runs logged offline must be uploaded first.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import wandb
import wandb_workspaces.reports.v2 as wr
from wandb_workspaces import expr

from kd.report.table import GAINS_LEGEND, METRICS, format_tables
from kd.tracking.wandb_tracker import is_synced, offline_run_dirs, read_run_file

API_TIMEOUT_S = 30  # fail fast without a reachable server instead of retrying


class ReportError(RuntimeError):
    """The W&B report could not be built or published; the message says why."""


def sweep_runs(students: list[dict[str, Any]]) -> dict[str, Any]:
    """Project, entity and groups of the sweep's W&B runs, as the tracker recorded them in the job dirs."""
    runs = [info for r in students if (info := read_run_file(Path(r["job_dir"]))) is not None]
    if not runs:
        raise ReportError("no job of this sweep logged to W&B (no wandb_run.json in its job dirs; logger=none?)")
    projects = {(info["project"], info["entity"]) for info in runs}
    if len(projects) > 1:
        raise ReportError(f"the sweep's runs are in several W&B projects: {sorted(map(str, projects))}")
    [(project, entity)] = projects
    return {"project": project, "entity": entity, "groups": sorted({info["group"] for info in runs}),
            "offline": sorted(str(d) for r in students for d in offline_run_dirs(Path(r["job_dir"])) if not is_synced(d))}


def build_report(students: list[dict[str, Any]], sweep_dir: Path, project: str, entity: str, groups: list[str],
                 alpha: float, metric: str) -> wr.Report:
    """The Report object: the gains table, top-1 by aug and alpha, and the per-epoch curves at `alpha`."""
    cells = [expr.Metric("Group").isin(groups), expr.Metric("JobType") == "student"]
    # Grouped by the flat config keys kd.train records beside the whole config (aug: fcra, alpha: 0.5)
    by_cell = wr.Runset(entity=entity, project=project, name="grid cells", filters=cells,
                        groupby=["config.aug", "config.alpha"])  # seeds of a cell form one group
    curves = wr.Runset(entity=entity, project=project, name=f"every augmentation at alpha={alpha:g}",
                       filters=[*cells, expr.Config("alpha") == alpha], groupby=["config.aug"])
    return wr.Report(
        project=project, entity=entity, title=f"KD x augmentation gains: {sweep_dir.name}"[:128],
        description=f"kd sweep {sweep_dir}",
        blocks=[
            wr.H2(f"Students' {METRICS[metric]} (%) by augmentation and alpha ({metric})"),
            wr.MarkdownBlock(text=format_tables(students, metric)
                             + "\n\n`*` best cell. " + GAINS_LEGEND),
            wr.PanelGrid(runsets=[by_cell], panels=[
                wr.BarPlot(title=f"{metric} per (augmentation, alpha), mean ± std over seeds",
                           metrics=[wr.SummaryMetric(metric)], groupby_aggfunc="mean", groupby_rangefunc="stddev"),
                wr.ScatterPlot(title=f"{metric} by alpha", x=wr.Config("alpha"), y=wr.SummaryMetric(metric)),
            ]),
            wr.H2(f"Test top-1 per epoch at alpha={alpha:g}, per augmentation"),
            wr.PanelGrid(runsets=[curves], panels=[
                wr.LinePlot(title=f"test top-1 per epoch, alpha={alpha:g}", x="epoch", y=["test/top1"],
                            title_x="epoch", title_y="test top-1 (%)", groupby_aggfunc="mean",
                            groupby_rangefunc="stddev"),
            ]),
        ],
    )


def publish(students: list[dict[str, Any]], sweep_dir: Path, alpha: float, metric: str,
            entity: str | None = None) -> str:
    """Save the Report to W&B and return its URL."""
    runs = sweep_runs(students)
    if runs["offline"]:
        print(f"note: {len(runs['offline'])} runs of this sweep were logged offline; the report shows them once "
              f"uploaded: kd-sync {sweep_dir}")
    try:
        default_entity = wandb.Api(timeout=API_TIMEOUT_S).default_entity  # also proves the server reachable
        if entity is None:
            entity = runs["entity"] if runs["entity"] is not None else default_entity
        report = build_report(students, sweep_dir, runs["project"], entity, runs["groups"], alpha, metric)
        report.save()
        return report.url
    except Exception as err:  # no credentials, no network, server errors: all end the same way for the user
        raise ReportError(f"could not publish the W&B report ({type(err).__name__}: {err})") from None
