"""What `kd-report --wandb` sends W&B, captured at wandb's one request point, on a real digits sweep.

No W&B server exists here: `wandb.apis.public.service_api.ServiceApi.send_api_request` (through which the
public API, and wandb-workspaces' reports with it, sends every GraphQL request in wandb 0.31) is replaced by
a fake that answers each request the way W&B's server is documented to and records what was sent. What a
real server then does with the report (renders its panels) is not tested.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import wandb
from wandb.apis.public.service_api import ServiceApi
from wandb.proto.wandb_api_pb2 import ApiResponse

from conftest import run_cli
from test_wandb_tracker import FAST_WANDB, read_offline_run
from kd.report.cli import main
from kd.report.wandb_report import REPORT_FILE
from kd.report.wandb_report import sweep_runs
from kd.report.wandb_run import REPORT_RUN_DIR, grid_tables, log_report_run
from kd.runs.results import collect_sweep
from kd.tracking.wandb_tracker import RUN_FILE, newest_attempt, read_run_file

VIEWER = "me"  # the entity the fake server says the API key belongs to


class FakeServer:
    """Answers the requests kd-report's publish makes, keeps each report it is sent, records every request."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict]] = []  # (operation, variables)
        self.artifact_id = "QXJ0aWZhY3Q6NDI="  # the teacher artifact's id on this server
        self.views: dict[str, dict] = {}

    def __call__(self, api: ServiceApi, request, timeout=None) -> ApiResponse:
        response = ApiResponse()
        kind = request.WhichOneof("request")
        if kind == "auth_request":
            response.auth_response.authenticate_response.default_entity = VIEWER
            return response
        if kind == "features_request":  # a server that enables none of W&B's optional features
            response.features_response.SetInParent()
            return response
        assert kind == "graphql_request", kind
        query, variables = request.graphql_request.query, json.loads(request.graphql_request.variables_json)
        operation = re.search(r"(?:query|mutation)\s+(\w+)", query).group(1)
        self.requests.append((operation, variables))
        response.graphql_response.data_json = json.dumps(self.answer(operation, variables))
        return response

    def answer(self, operation: str, v: dict) -> dict:
        project = {"__typename": "Project", "id": "UHJvamVjdDox", "name": "kd", "entityName": VIEWER,
                   "createdAt": "2026-01-01T00:00:00", "isBenchmark": False, "user": None}
        if operation == "GetDefaultEntity":
            return {"viewer": {"id": "VXNlcjox", "entity": VIEWER}}
        if operation == "GetProject":
            return {"project": project}
        if operation == "ProjectInternalId":
            return {"project": {"id": project["id"], "internalId": "p1"}}
        if operation == "GetProjects":
            return {"models": {"edges": [{"node": project, "cursor": "c"}],
                               "pageInfo": {"__typename": "PageInfo", "endCursor": "c", "hasNextPage": False}}}
        if operation == "upsertView":
            view_id = v["id"] or f"VmlldzoxMD{len(self.views)}="
            inserted = view_id not in self.views
            self.views[view_id] = {"id": view_id, "type": v["type"], "name": v["name"], "displayName": v["displayName"],
                                   "description": v["description"], "spec": v["spec"], "updatedAt": "2026-01-01T00:00:00",
                                   "project": {"id": project["id"], "name": v["projectName"], "entityName": v["entityName"]}}
            return {"upsertView": {"view": self.views[view_id], "inserted": inserted}}
        if operation == "Run":  # the public API's run, as W&B's RunFragment has it
            return {"project": {"run": {
                "projectId": "1", "id": "UnVuOjE=", "tags": [], "name": v["name"], "displayName": v["name"],
                "sweepName": None, "state": "finished", "config": "{}", "group": None, "jobType": "student",
                "commit": None, "readOnly": False, "createdAt": "2026-01-01T00:00:00", "heartbeatAt": None,
                "description": None, "notes": None, "systemMetrics": "{}", "summaryMetrics": "{}",
                "historyLineCount": 1, "user": {"name": VIEWER, "username": VIEWER}, "historyKeys": None}}}
        if operation == "ArtifactMembershipByName":  # the teacher's artifact, as its teacher run logged it
            name, alias = v["name"].split(":")
            project_info = {"id": project["id"], "internalId": "1", "name": v["project"],
                            "entity": {"name": v["entity"]}}
            collection = {"__typename": "ArtifactSequence", "name": name, "project": project_info}
            alias_node = {"__typename": "ArtifactAlias", "id": "QWxpYXM6MQ==", "alias": alias}
            return {"project": {"artifactCollectionMembership": {
                "__typename": "ArtifactCollectionMembership", "id": "TWVtYmVyc2hpcDox", "versionIndex": 0,
                "createdAt": "2026-01-01T00:00:00", "aliases": [alias_node], "artifactCollection": collection,
                "artifact": {
                    "__typename": "Artifact", "id": self.artifact_id, "artifactSequence": collection,
                    "versionIndex": 0, "artifactType": {"name": "model"}, "description": None, "metadata": "{}",
                    "ttlDurationSeconds": -1, "ttlIsInherited": True, "tags": [], "historyStep": None,
                    "state": "COMMITTED", "size": 1, "digest": "d" * 32, "digestAlgorithm": "MANIFEST_MD5",
                    "commitHash": "c" * 12, "fileCount": 1, "createdAt": "2026-01-01T00:00:00",
                    "updatedAt": "2026-01-01T00:00:00", "aliases": [{
                        **alias_node, "artifactCollection": collection}]}}}}
        if operation == "UseArtifact":
            return {"useArtifact": {"artifact": {"id": v["artifactID"]}}}
        raise AssertionError(f"kd sent a request the fake server does not know: {operation} {v}")

    def saved_specs(self) -> list[tuple[dict, dict]]:
        """(the upsertView variables, its report spec) of every report saved."""
        return [(v, json.loads(v["spec"])) for op, v in self.requests if op == "upsertView"]


def runsets(spec: dict) -> list[dict]:
    return [rs for block in spec["blocks"] if block["type"] == "panel-grid" for rs in block["metadata"]["runSets"]]


@pytest.fixture(scope="module")
def digits_sweep(tmp_path_factory) -> Path:
    """A real 2-cell digits multirun (alpha 0 and 0.5, no 0.25) logged offline, with its own teacher."""
    root = tmp_path_factory.mktemp("capture")
    env = {"KD_HOME": str(root / "kd_home"), "KD_DATA_DIR": str(root / "kd_home" / "data"), "WANDB_MODE": "offline",
           "WANDB_SILENT": "true"}
    proc = run_cli(["-m", *FAST_WANDB, "teacher=resnet8", "alpha=0,0.5", "data.train_size=280"], cwd=root, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return next((root / "multirun").glob("*/*"))


@pytest.fixture
def server(monkeypatch) -> FakeServer:
    fake = FakeServer()
    monkeypatch.setattr(ServiceApi, "send_api_request", lambda api, request, timeout=None: fake(api, request, timeout))
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    yield fake
    wandb.teardown()


def publish_twice(sweep: Path, *args: str, capsys) -> str:
    assert main([str(sweep), "--wandb", *args]) == 0
    out = capsys.readouterr().out
    assert main([str(sweep), "--wandb", *args]) == 0
    return out


def test_the_report_selects_the_sweeps_finished_runs_and_is_updated_in_place(digits_sweep, server, tmp_path, capsys):
    sweep = Path(shutil.copytree(digits_sweep, tmp_path / "sweep"))
    online, offline = sorted(sweep.glob(f"*/{RUN_FILE}"))
    # one cell as an online run records itself; the other as kd's online-to-offline fallback does (no entity)
    online.write_text(json.dumps({**json.loads(online.read_text()), "entity": VIEWER}))
    assert json.loads(offline.read_text())["entity"] is None
    publish_twice(sweep, "--entity", "team", capsys=capsys)

    (first, first_spec), (second, second_spec) = server.saved_specs()  # one report per publish, not two per sweep
    ids = sorted(read_run_file(Path(r["job_dir"]))["id"] for r in collect_sweep(sweep) if r["stage"] == "student")
    for sent, spec in server.saved_specs():
        assert (sent["entityName"], sent["projectName"]) == ("team", "kd")  # --entity moves the report only
        cells, *more = runsets(spec)  # no curves run set: the grid has no alpha 0.25
        assert all(r == cells for r in more)  # the diagnostics' panel shows the same cells
        assert cells["project"] == {"name": "kd", "entityName": VIEWER, "id": "p1"}  # the runs' own entity
        assert cells["filters"]["filters"] == [
            {"key": {"section": "run", "name": "name"}, "op": "IN", "value": ids, "disabled": False},
            {"key": {"section": "run", "name": "state"}, "op": "=", "value": "finished", "disabled": False,
             "connector": "AND"}]
        assert "0.25" not in json.dumps(cells)
        texts = [b["content"] for b in spec["blocks"] if b["type"] == "markdown-block"]
        assert any("no finished cell at alpha=0.25" in t for t in texts)
        assert (sweep / "claims.md").read_text() in texts
    assert first["id"] is None and second["id"] is not None  # the second save names the first report
    assert list(server.views) == [second["id"]] and json.loads((sweep / REPORT_FILE).read_text())["id"] == second["id"]
    panels = [p for b in first_spec["blocks"] if b["type"] == "panel-grid"
              for p in b["metadata"]["panelBankSectionConfig"]["panels"]]
    assert [(p["viewType"], p["config"].get("metrics"), p["config"].get("yAxis")) for p in panels] == [
        ("Bar Chart", ["final_top1"], None), ("Scatter Plot", None, "summary:final_top1"),
        ("Scatter Plot", None, "summary:test/loss")]  # the alpha=0.5 cell's diagnostics: test loss vs T. stddev


def test_the_report_run_holds_the_grid_table_figures_and_claims(digits_sweep, server, tmp_path, capsys):
    sweep = Path(shutil.copytree(digits_sweep, tmp_path / "sweep"))
    out = publish_twice(sweep, capsys=capsys)
    assert f"logged offline in" in out and f"kd-sync {sweep}" in out
    # a new run per report, which replaces the earlier one (never uploaded); its id is the one recorded
    (latest,) = report_runs(sweep)
    assert latest == newest_attempt(sweep / REPORT_RUN_DIR)
    assert latest.name.endswith(read_run_file(sweep / REPORT_RUN_DIR)["id"])
    wb = read_offline_run(latest)
    cell = read_run_file(next(sweep.glob(f"*/{RUN_FILE}")).parent)
    assert (wb["run"]["job_type"], wb["run"]["project"], wb["run"]["run_group"]) == ("report", "kd", cell["group"])
    (logged,) = wb["history"]
    # wandb's record flattens a media value's keys: gains._type, gains.nrows, ...
    assert logged["gains._type"] == "table-file" and logged["gains.nrows"] == len(
        (sweep / "gains.csv").read_text().splitlines()) - 1
    assert logged["figures/top1_by_alpha._type"] == "image-file"
    assert logged["diagnostics._type"] == "table-file" and logged["diagnostics.nrows"] == 1  # alpha=0.5's cell
    (artifact,) = [a for a in wb["artifacts"] if a["type"] == "report"]  # beside wandb's own for the table
    assert sorted(e["path"] for e in artifact["manifest"]["contents"]) == [
        "claims.md", "diagnostics.csv", "diagnostics.md", "gains.csv", "gains.md"]
    listed = subprocess.run([sys.executable, "-m", "kd.tracking.sync", str(sweep), "--list"], capture_output=True,
                            text=True, check=True).stdout
    assert listed.count(REPORT_RUN_DIR) == 1 and str(latest) in listed  # kd-sync uploads it with the cells' runs


def report_runs(sweep: Path) -> list[Path]:
    return sorted((sweep / REPORT_RUN_DIR / "wandb").glob("offline-run-*"))


def test_a_new_report_run_replaces_the_one_never_uploaded_and_keeps_an_uploaded_one(digits_sweep, server, tmp_path,
                                                                                 capsys):
    sweep = Path(shutil.copytree(digits_sweep, tmp_path / "sweep"))
    assert main([str(sweep), "--wandb"]) == 0
    (first,) = report_runs(sweep)
    results = next(sweep.glob("alpha=0.5,*/results.json"))
    results.write_text(json.dumps({**json.loads(results.read_text()), "final_top1": 12.5}))  # a changed cell
    assert main([str(sweep), "--wandb"]) == 0
    (second,) = report_runs(sweep)  # the first, never uploaded, is gone
    assert second != first and second.name.endswith(read_run_file(sweep / REPORT_RUN_DIR)["id"])
    gains = logged_table(second, "gains")
    means = [row[gains["columns"].index("mean")] for row in gains["data"]]
    assert 12.5 in means  # the latest report's table
    # Uploaded, as `wandb sync` marks a run (wandb/cli/beta_sync.py: the .wandb file's path + ".synced"): it stays
    (wandb_file,) = second.glob("*.wandb")
    wandb_file.with_suffix(".wandb.synced").touch()
    assert main([str(sweep), "--wandb"]) == 0
    kept, third = sorted(report_runs(sweep), key=lambda d: d != second)
    assert kept == second and third.name.endswith(read_run_file(sweep / REPORT_RUN_DIR)["id"])
    listed = subprocess.run([sys.executable, "-m", "kd.tracking.sync", str(sweep), "--list"], capture_output=True,
                            text=True, check=True).stdout
    assert [line for line in listed.splitlines() if REPORT_RUN_DIR in line] == [str(third)]  # the one to upload
    capsys.readouterr()


@pytest.fixture(scope="module")
def two_aug_sweep(tmp_path_factory) -> Path:
    """A real quickstart-shaped digits multirun, offline: aug none and fc, alpha 0 and 0.5, so the diagnostics
    table has a row without a gain (none) above a row with one (fc)."""
    root = tmp_path_factory.mktemp("two_aug")
    env = {"KD_HOME": str(root / "kd_home"), "KD_DATA_DIR": str(root / "kd_home" / "data"), "WANDB_MODE": "offline",
           "WANDB_SILENT": "true"}
    args = [a for a in FAST_WANDB if not a.startswith("aug=")]
    proc = run_cli(["-m", *args, "teacher=resnet8", "alpha=0,0.5", "aug=none,fc", "data.train_size=280"],
                   cwd=root, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return next((root / "multirun").glob("*/*"))


def logged_table(run_dir: Path, key: str) -> dict:
    """A table the run logged, read back from the offline run's media files as W&B wrote them."""
    (path,) = (run_dir / "files" / "media" / "table").glob(f"{key}_*.table.json")
    return json.loads(path.read_text())


def test_the_report_run_logs_tables_whose_columns_mix_numbers_and_missing_values(two_aug_sweep, server, tmp_path,
                                                                                capsys):
    sweep = Path(shutil.copytree(two_aug_sweep, tmp_path / "sweep"))
    assert main([str(sweep), "--wandb"]) == 0, capsys.readouterr().err
    run_dir = newest_attempt(sweep / REPORT_RUN_DIR)
    diagnostics = logged_table(run_dir, "diagnostics")
    gain = diagnostics["columns"].index("gain")
    augs = [row[diagnostics["columns"].index("aug")] for row in diagnostics["data"]]
    assert augs == ["none", "fc"]  # every row, the one without a gain included
    assert diagnostics["data"][0][gain] is None and isinstance(diagnostics["data"][1][gain], float)
    gains = logged_table(run_dir, "gains")
    assert len(gains["data"]) == len((sweep / "gains.csv").read_text().splitlines()) - 1


def test_a_report_run_that_fails_midway_leaves_nothing_for_kd_sync(two_aug_sweep, server, tmp_path, capsys):
    sweep = Path(shutil.copytree(two_aug_sweep, tmp_path / "sweep"))
    assert main([str(sweep), "--wandb"]) == 0
    good = newest_attempt(sweep / REPORT_RUN_DIR)
    record = (sweep / REPORT_RUN_DIR / RUN_FILE).read_text()
    broken = sweep / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not an image")  # a figure W&B cannot read: the run fails midway
    students = [r for r in collect_sweep(sweep) if r["stage"] == "student"]
    with pytest.raises(Exception):
        log_report_run(grid_tables(students, "final_top1"), sweep, [broken, sweep / "gains.md"], "final_top1",
                       sweep_runs(students))
    assert newest_attempt(sweep / REPORT_RUN_DIR) == good  # the failed attempt's dir is gone
    assert (sweep / REPORT_RUN_DIR / RUN_FILE).read_text() == record  # the last good report is still the one synced
    listed = subprocess.run([sys.executable, "-m", "kd.tracking.sync", str(sweep), "--list"], capture_output=True,
                            text=True, check=True).stdout
    assert listed.count(REPORT_RUN_DIR) == 1 and str(good) in listed


def test_kd_sync_declares_each_students_use_of_its_teacher_once_online(digits_sweep, server):
    """After the upload, the student that distilled (alpha 0.5) declares its teacher's artifact through the public
    API, by the name and alias its teacher logged; the alpha=0 cell, which never ran the teacher, declares none."""
    from kd.tracking.lineage import declare_teacher_uses, teacher_uses
    from kd.tracking.sync import sweep_job_dirs

    uses = teacher_uses(sweep_job_dirs(digits_sweep))
    (use,) = uses
    student = next(r for r in collect_sweep(digits_sweep) if r["alpha"] == 0.5)
    assert use["run"] == read_run_file(Path(student["job_dir"]))["id"]
    assert use["artifact"] == f"teacher-{Path(student['teacher_checkpoint']).stem}:sha256-{student['teacher_sha256'][:12]}"
    warnings = []
    assert declare_teacher_uses(uses, warn=warnings.append) == 1, warnings
    (lookup,) = [v for op, v in server.requests if op == "ArtifactMembershipByName"]
    assert (lookup["entity"], lookup["project"], lookup["name"]) == (VIEWER, "kd", use["artifact"])
    (declared,) = [v for op, v in server.requests if op == "UseArtifact"]
    assert (declared["entityName"], declared["projectName"], declared["runName"]) == (VIEWER, "kd", use["run"])
    assert declared["artifactID"] == server.artifact_id
