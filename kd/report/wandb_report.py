"""`kd-report --wandb`: the sweep's comparison as a W&B Report over its runs (wandb-workspaces' reports API).

The Report is built by `build_report` without contacting W&B, and saved by `publish`.
Its panels read the runs from the server, so runs logged offline must be uploaded first.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import wandb
import wandb_workspaces.reports.v2 as wr
from wandb_workspaces import expr

from kd.report.diagnostics import format_diagnostics, has_diagnostics
from kd.report.table import GAINS_LEGEND, METRICS, format_tables
from kd.tracking.wandb_tracker import is_synced, newest_attempt, read_run_file

API_TIMEOUT_S = 30  # fail fast without a reachable server instead of retrying


class ReportError(RuntimeError):
    """The W&B report could not be built or published; the message says why."""


REPORT_FILE = "wandb_report.json"  # in the sweep dir: the report's URL and id, so that a rerun updates it in place


def sweep_runs(students: list[dict[str, Any]]) -> dict[str, Any]:
    """The sweep's W&B runs as the tracker recorded them in the job dirs: their project and entity, the ids of
    the finished cells (exactly those the panels show), the cells that did not finish, and the offline ones.

    A cell that fell back to offline mode recorded no entity: it uploads to the same project as the others."""
    runs = [(r, info) for r in students if (info := read_run_file(Path(r["job_dir"]))) is not None]
    if not runs:
        raise ReportError("no job of this sweep logged to W&B (no wandb_run.json in its job dirs; logger=none?)")
    projects = {info["project"] for _, info in runs}
    entities = {info["entity"] for _, info in runs} - {None}
    if len(projects) > 1 or len(entities) > 1:
        raise ReportError(f"the sweep's runs are in several W&B projects: {sorted(projects)}, entities "
                          f"{sorted(entities)}; report each project's runs from their own sweep dir")
    return {"project": projects.pop(), "entity": entities.pop() if entities else None,
            "ids": sorted(info["id"] for r, info in runs if r.get("status") == "completed"),
            "unfinished": sorted(Path(r["job_dir"]).name for r, _ in runs if r.get("status") != "completed"),
            "groups": sorted({info["group"] for _, info in runs if info.get("group")}),
            "offline": sorted(str(d) for r, _ in runs if (d := newest_attempt(Path(r["job_dir"]))) is not None
                              and not is_synced(d))}


def build_report(students: list[dict[str, Any]], sweep_dir: Path, runs: dict[str, Any], runs_entity: str,
                 report_entity: str, alpha: float, metric: str, claims: str = "") -> wr.Report:
    """The Report object over exactly the sweep's finished runs (by id): the gains table, top-1 by aug and
    alpha, the per-epoch curves at `alpha` when the grid has it, and `claims` (claims.md's text). `runs_entity`
    is where the runs are, `report_entity` where the report goes."""
    cells = expr.And(expr.Metric("ID").isin(runs["ids"]), expr.Metric("State") == "finished")
    # The flat keys kd records (kd/runs/job.py: describe); seeds form one group, and runs of another distiller or
    # teacher-student pair never join one (keys that do not vary group nothing away).
    by_cell = wr.Runset(entity=runs_entity, project=runs["project"], name="grid cells", filters=cells,
                        groupby=["config.model", "config.teacher", "config.loss", "config.teacher_view", "config.aug",
                                 "config.alpha"])
    text = format_tables(students, metric) + "\n\n`*` best cell. " + GAINS_LEGEND
    if runs["unfinished"]:
        text += "\n\nNot in the panels (failed, interrupted or unfinished): " + ", ".join(runs["unfinished"])
    blocks = [
        wr.H2(f"Students' {METRICS[metric]} (%) by augmentation and alpha ({metric})"),
        wr.MarkdownBlock(text=text),
        wr.PanelGrid(runsets=[by_cell], panels=[
            wr.BarPlot(title=f"{metric} per (augmentation, alpha), mean and spread over seeds", metrics=[metric],
                       groupby_aggfunc="mean", groupby_rangefunc="stddev"),
            wr.ScatterPlot(title=f"{metric} by alpha", x=wr.Config("alpha"), y=metric),
        ]),
    ]
    if has_diagnostics(students):  # why the gains are what they are (kd/report/diagnostics.py)
        blocks += [wr.H2("Why: the teacher's T. stddev, its views, and the students' fidelity"),
                   wr.MarkdownBlock(text=format_diagnostics(students, metric)),
                   wr.PanelGrid(runsets=[by_cell], panels=[
                       wr.ScatterPlot(title="students' final test loss against the teacher's T. stddev (final epoch)",
                                      x="diag/t_stddev", y="test/loss")])]
    alphas = sorted({float(r["alpha"]) for r in students if r.get("status") == "completed"})
    if alpha in alphas:
        curves = wr.Runset(entity=runs_entity, project=runs["project"], name=f"every augmentation at alpha={alpha:g}",
                           filters=expr.And(cells, expr.Config("alpha") == alpha),
                           groupby=["config.model", "config.teacher", "config.loss", "config.teacher_view",
                                    "config.aug"])
        blocks += [wr.H2(f"Test top-1 per epoch at alpha={alpha:g}, per augmentation"),
                   wr.PanelGrid(runsets=[curves], panels=[
                       wr.LinePlot(title=f"test top-1 per epoch, alpha={alpha:g}", x="epoch", y=["test/top1"],
                                   title_x="epoch", title_y="test top-1 (%)", groupby_aggfunc="mean",
                                   groupby_rangefunc="stddev")])]
    else:
        blocks.append(wr.MarkdownBlock(text=f"No per-epoch curves: the grid has no finished cell at alpha={alpha:g} "
                                            f"(its alphas: {', '.join(f'{a:g}' for a in alphas)}); pick one with --alpha."))
    if claims:
        blocks.append(wr.MarkdownBlock(text=claims))
    return wr.Report(project=runs["project"], entity=report_entity,
                     title=f"KD x augmentation gains: {' '.join(sweep_dir.resolve().parts[-2:])}"[:128],
                     description=f"kd sweep {sweep_dir.resolve()}", blocks=blocks)


def publish(students: list[dict[str, Any]], sweep_dir: Path, alpha: float, metric: str,
            entity: str | None = None, claims: str = "") -> str:
    """Save the Report to W&B (updating the sweep's earlier one in place) and return its URL. `entity` is the
    report's only: the panels look for the runs where they are."""
    runs = sweep_runs(students)
    if runs["offline"]:
        print(f"note: {len(runs['offline'])} runs of this sweep were logged offline; the report shows them once "
              f"uploaded: kd-sync {sweep_dir}")
    saved = sweep_dir / REPORT_FILE
    try:
        api = wandb.Api(timeout=API_TIMEOUT_S)  # also proves the server reachable
        runs_entity = runs["entity"] if runs["entity"] is not None else api.default_entity
        try:
            api.project(runs["project"], entity=runs_entity).id  # a request (.name is only the argument)
        except Exception:  # never uploaded: say what to do, not the server's "project not found"
            raise ReportError(f"W&B has no project {runs_entity}/{runs['project']} yet: upload the sweep's runs "
                              f"first (kd-sync {sweep_dir}), then rerun kd-report --wandb") from None
        report = build_report(students, sweep_dir, runs, runs_entity, entity or runs_entity, alpha, metric, claims)
        if saved.is_file():  # one report per sweep: saved under the earlier one's id, W&B replaces it in place
            report.id = json.loads(saved.read_text())["id"]
        report.save()
        saved.write_text(json.dumps({"url": report.url, "id": report.id}, indent=2))
        return report.url
    except ReportError:
        raise
    except Exception as err:  # no credentials, no network, server errors: all end the same way for the user
        raise ReportError(f"could not publish the W&B report ({type(err).__name__}: {err})") from None
