"""logger=wandb: real offline W&B runs, read back with wandb's own reader (`wandb leet inspect`)."""
from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import wandb
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate

from conftest import CONF_DIR, FAST, TRAIN_SCRIPT, cell_dir, compose_config, run_cli
from reliability import saved_epoch
from kd.runs.results import RESULTS_FILE, collect_sweep, read_results
from kd.runs.job import train
from kd.runs.sweep_dir import SWEEP_ID_FILE, RecordSweepId
from kd.tracking.wandb_tracker import (MAX_GROUP_LEN, MAX_TAG_LEN, RUN_FILE, WandbTracker, fit_tag,
                                     newest_attempt, sweep_group)

WANDB = [sys.executable, "-m", "wandb"]
# After FAST, so that logger=wandb wins; no augmentation and two steps an epoch keep a job to seconds on a CPU.
FAST_WANDB = [*FAST, "logger=wandb", "aug=none", "data.test_fraction=0.8", "trainer.batch_size=256"]


@pytest.fixture(autouse=True)
def fresh_wandb():
    """wandb reads its environment once per process; start each test from a clean slate."""
    yield
    wandb.teardown()


def read_offline_run(run_dir: Path) -> dict:
    """The run record, history rows, final summary and exit code of an offline run, as wandb reads them."""
    out = subprocess.run([*WANDB, "leet", "inspect", "--json", str(run_dir)],
                         capture_output=True, text=True, check=True).stdout
    records = [json.loads(line) for line in out.splitlines()]
    summary: dict = {}
    for r in records:
        if r["type"] == "summary":
            summary.update(r["summary"].get("update", {}))
    run = next(r["run"] for r in records if r["type"] == "run")
    config = dict(run["config"]["update"])  # at start, then what the job added (run.config.update)
    for r in records:
        if r["type"] == "config":
            config.update(r["config"].get("update", {}))
    return {
        "run": run,
        "config": config,
        "artifacts": [r["artifact"] for r in records if r["type"] == "artifact"],
        "history": [r["history"]["item"] for r in records if r["type"] == "history"],
        "summary": summary,
        "exit_code": next(r["exit"].get("exit_code", 0) for r in records if r["type"] == "exit"),
    }


def offline_runs(job_dir: Path) -> list[Path]:
    return sorted((job_dir / "wandb").glob("offline-run-*"))


def no_credentials(monkeypatch, tmp_path: Path) -> None:
    """A machine where nobody ran `wandb login` and WANDB_MODE is unset: logger.mode=auto must go offline."""
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("NETRC", str(tmp_path / "no.netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config"))


@pytest.mark.slow
def test_multirun_logs_one_wandb_run_per_job(tmp_path, monkeypatch, isolated_kd_home):
    no_credentials(monkeypatch, tmp_path)
    proc = run_cli(["-m", *FAST_WANDB, "teacher=resnet8", "alpha=0,0.5", "data.train_size=280",
                    "data.val_size=50", "logger.tags=[mine]"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep_dir = next((tmp_path / "multirun").glob("*/*"))
    students = collect_sweep(sweep_dir)
    assert [r["status"] for r in students] == ["completed", "completed"]
    teacher_dir = next((isolated_kd_home / "teachers").glob("*.work"))

    logs = proc.stdout + proc.stderr
    (sync_line,) = [line for line in logs.splitlines() if "upload them with: kd-sync" in line]  # one for the pack
    assert "no W&B credentials" in sync_line
    # kd's own command, with the sweep dir: it uploads the teacher's run too
    assert sync_line.endswith(f"kd-sync {sweep_dir.relative_to(tmp_path)}")

    # Hydra's sweep dir as configured (relative to the cwd), then the id made once for that dir
    group = f"{sweep_dir.relative_to(tmp_path)}#{(sweep_dir / SWEEP_ID_FILE).read_text()}"
    teacher = read_offline_run(*offline_runs(teacher_dir))
    assert teacher["run"]["job_type"] == "teacher"
    assert teacher["run"]["display_name"] == "teacher resnet8 digits seed=0"
    assert teacher["run"]["run_group"] == group
    assert teacher["config"]["config"]["out_dir"] == str(teacher_dir)
    assert (teacher["config"]["stage"], teacher["config"]["model"], teacher["config"]["data"]) == (
        "teacher", "resnet8", "digits")
    assert teacher["summary"]["final_top1"] == students[1]["teacher_top1"]
    assert students[1]["teacher_work_dir"] == str(teacher_dir)  # where kd-sync finds the teacher's run
    # Lineage: the teacher run logs its cache file as a model artifact; the student who learned from it names the
    # same artifact (wandb refuses use_artifact offline, so the offline run's config records it).
    (artifact,) = teacher["artifacts"]
    checkpoint = Path(students[1]["teacher_checkpoint"])
    assert (artifact["name"], artifact["type"]) == (f"teacher-{checkpoint.stem}", "model")
    assert json.loads(artifact["metadata"]) == {"sha256": students[1]["teacher_sha256"], "file": checkpoint.name,
                                                "top1": students[1]["teacher_top1"]}
    assert sorted(artifact["aliases"]) == ["latest", f"sha256-{students[1]['teacher_sha256'][:12]}"]
    assert [entry["local_path"] for entry in artifact["manifest"]["contents"]] == [str(checkpoint)]

    # One command lists every offline run of the sweep, the teacher's (under KD_HOME) included
    listed = subprocess.run([sys.executable, "-m", "kd.tracking.sync", str(sweep_dir), "--list"], capture_output=True,
                            text=True, check=True).stdout.split()
    expected = [run for job in [*(Path(r["job_dir"]) for r in students), teacher_dir] for run in offline_runs(job)]
    assert listed == [str(run.absolute()) for run in expected] and len(listed) == 3

    for result in students:
        job_dir = Path(result.pop("job_dir"))
        (run_dir,) = offline_runs(job_dir)
        wb = read_offline_run(run_dir)
        assert wb["run"]["display_name"] == f"aug=none alpha={result['alpha']:g} seed=0"
        assert wb["run"]["job_type"] == "student"
        assert wb["run"]["run_group"] == group
        assert wb["run"]["tags"] == ["mine", f"alpha={result['alpha']:g}"]  # logger.tags, then the swept overrides
        used = {"name": artifact["name"], "type": "model", "digest": artifact["digest"],
                "sha256": students[1]["teacher_sha256"]}
        assert wb["config"].get("teacher_artifact") == (used if result["alpha"] > 0 else None)
        assert wb["run"]["run_id"] == json.loads((job_dir / RUN_FILE).read_text())["id"]
        config = wb["config"]["config"]
        flat = {k: wb["config"][k] for k in ("aug", "alpha", "seed", "model", "teacher", "data")}
        # choice names, not class paths: the keys the W&B UI groups a cell's seeds by
        assert flat == {"aug": "none", "alpha": result["alpha"], "seed": 0, "model": "resnet8",
                        "teacher": "resnet8", "data": "digits"}
        assert config == result["config"]  # the whole resolved config, output dir included
        assert wb["config"]["environment"] == result["environment"]  # versions, commit, device: where it came from
        # the speed switches as they took effect: bf16 and compile are asked for (the defaults) but CUDA-only
        assert (config["trainer"]["bf16"], config["trainer"]["compile"]) == (True, True)
        assert wb["config"]["speed"] == result["speed"] == {"bf16": False, "compile": False, "graph_capture": False,
                                                            "channels_last": True, "cudnn_benchmark": False}
        assert wb["config"]["device_choice"] == result["device_choice"]
        assert result["environment"]["torch"] == torch.__version__ and len(result["environment"]["git_commit"]) == 40
        assert config["out_dir"] == str(job_dir)
        assert [row["epoch"] for row in wb["history"]] == [1]
        for key in ("train/loss", "train/ce", "train/kd", "train/top1", "val/top1", "val/top5", "test/top1",
                    "test/top5", "lr", "epoch_time_s", "images_per_s"):
            assert wb["history"][0][key] == pytest.approx(result["history"][0][key])
        for key in ("final_top1", "best_val_top1", "test_top1_at_best_val", "best_epoch", "teacher_top1",
                    "teacher_sha256"):
            assert wb["summary"].get(key) == result.get(key)
        assert result["best_epoch"] == 1 and "best_top1" not in wb["summary"]  # picked on test: never a result
        assert wb["exit_code"] == 0

    # A teacher given as a file (no teacher job): its students still name it, by the same content digest.
    given = train(compose_config([*FAST_WANDB, "teacher=resnet8", "alpha=0.5", f"teacher.checkpoint={checkpoint}",
                                  "data.train_size=280", "data.val_size=50"], out_dir=tmp_path / "given"))
    assert given["teacher_checkpoint"] == str(checkpoint)
    assert read_offline_run(*offline_runs(tmp_path / "given"))["config"]["teacher_artifact"] == used


@pytest.mark.slow
def test_a_pack_says_once_that_its_runs_are_offline(tmp_path, monkeypatch):
    """Three cells and their teacher in one process, offline, with wandb's own output not silenced by the
    environment: one short line says where the runs are and how to upload them (once it was ~400 characters a run),
    and wandb prints no banner per run; each cell still has its offline run."""
    monkeypatch.delenv("WANDB_SILENT")
    args = ["-m", *FAST_WANDB, "alpha=0,0.5,1.0"]
    proc = run_cli(args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep_dir = next((tmp_path / "multirun").glob("*/*"))
    logs = proc.stdout + proc.stderr
    (line,) = [line for line in logs.splitlines() if "kd-sync" in line]
    assert line.endswith(f"W&B is offline (WANDB_MODE): each run is saved in its job dir's wandb/; upload them with: "
                         f"kd-sync {sweep_dir.relative_to(tmp_path)}")
    assert "W&B syncing is set to `offline`" not in logs and "wandb sync" not in logs  # wandb's banner and footer
    for alpha in ("0", "0.5", "1.0"):
        job_dir = cell_dir(sweep_dir, args, f"alpha={alpha}")
        (run_dir,) = offline_runs(job_dir)
        assert read_offline_run(run_dir)["summary"]["final_top1"] == read_results(job_dir / RESULTS_FILE)["final_top1"]
        assert (job_dir / "train.log").read_text().count("W&B is offline") == 1  # every cell's log has the line


@pytest.mark.chaos
def test_killed_and_resumed_job_shows_its_whole_history(tmp_path):
    """SIGKILL flushes nothing: the killed attempt's offline file may hold no epoch; the resumed one holds them all."""
    epochs, run_dir = 12, tmp_path / "job"
    args = [*FAST, "logger=wandb", "alpha=0", f"trainer.epochs={epochs}", f"hydra.run.dir={run_dir}"]
    with open(tmp_path / "killed.log", "w") as out:
        proc = subprocess.Popen([sys.executable, str(TRAIN_SCRIPT), *args], stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while proc.poll() is None and saved_epoch(run_dir / "checkpoint.pt") < 2:
        assert time.monotonic() < deadline, (tmp_path / "killed.log").read_text()[-3000:]
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.kill()
    proc.wait()
    killed_at = saved_epoch(run_dir / "checkpoint.pt")
    assert killed_at < epochs

    done = run_cli(args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    killed, resumed = offline_runs(run_dir)  # one offline run dir per attempt, the same W&B run
    assert newest_attempt(run_dir) == resumed  # what kd-sync uploads, read back as W&B will: each epoch once
    wb = read_offline_run(newest_attempt(run_dir))
    run_id = json.loads((run_dir / RUN_FILE).read_text())["id"]
    assert wb["run"]["run_id"] == run_id and killed.name.endswith(run_id)
    assert [row["epoch"] for row in wb["history"]] == list(range(1, epochs + 1))
    history = read_results(run_dir / RESULTS_FILE)["history"]
    assert [row["test/top1"] for row in wb["history"]] == pytest.approx([row["test/top1"] for row in history])
    # kd-sync uploads the newest attempt only: uploading both would append epochs 1..k a second time.
    listed = subprocess.run([sys.executable, "-m", "kd.tracking.sync", str(tmp_path), "--list"], capture_output=True,
                            text=True, check=True).stdout.splitlines()
    assert listed == [f"{killed} (older attempt: skipped)", str(resumed)]


def single_run(tmp_path: Path, *overrides: str) -> dict:
    """One cell without a teacher (alpha=0), in this process: the quickest real job."""
    return train(compose_config([*FAST_WANDB, "alpha=0", *overrides], out_dir=tmp_path / "job"))


def test_wandb_init_failure_does_not_stop_training(tmp_path, caplog):
    result = single_run(tmp_path, "logger.project=not/allowed")  # W&B rejects '/' in a project name
    assert result["status"] == "completed"
    assert read_results(tmp_path / "job" / RESULTS_FILE)["status"] == "completed"
    warnings = [r.getMessage() for r in caplog.records if r.name == "kd.tracking.wandb_tracker"]
    assert len(warnings) == 1 and "W&B could not start" in warnings[0]


def test_failing_wandb_calls_warn_once_and_never_raise(tmp_path, caplog):
    cfg = compose_config(FAST_WANDB, out_dir=tmp_path / "job")
    with instantiate(cfg.logger).run(cfg, tmp_path / "job", job_type="student", name="x") as run:
        run._run.finish()  # the run ends under the job's feet (as when wandb's service dies): every call now raises
        run.log({"epoch": 1}, step=1)
        run.log({"epoch": 2}, step=2)
        run.summary({"final_top1": 1.0})
    warnings = [r.getMessage() for r in caplog.records if r.name == "kd.tracking.wandb_tracker"]
    assert len(warnings) == 1 and warnings[0].startswith("W&B log failed (UsageError")


def log_two_epochs(tmp_path: Path, *overrides: str) -> Path:
    """Open the tracker's run for a job dir as kd.train does, and log two epochs."""
    cfg = compose_config([*FAST_WANDB, *overrides], out_dir=tmp_path / "job")
    tracker = instantiate(cfg.logger)
    with tracker.run(cfg, tmp_path / "job", job_type="student", name="aug=none alpha=0.5 seed=0") as run:
        for epoch in (1, 2):
            run.log({"epoch": epoch, "test/top1": 10.0 * epoch}, step=epoch)
        run.summary({"final_top1": 20.0})
    return tmp_path / "job"


def test_wandb_disabled_by_env(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    job = log_two_epochs(tmp_path)
    assert not (job / RUN_FILE).exists()
    assert offline_runs(job) == []


def test_resumed_job_continues_its_wandb_run_and_records_no_api_key(tmp_path, monkeypatch):
    api_key = "k" * 40
    monkeypatch.setenv("WANDB_API_KEY", api_key)
    job = log_two_epochs(tmp_path)
    log_two_epochs(tmp_path)  # a requeued job: same output dir
    first, second = offline_runs(job)
    run_id = json.loads((job / RUN_FILE).read_text())["id"]
    # wandb names a run's folder offline-run-<time>-<id>, adding "-1" when a second one starts in the same second
    assert all(re.fullmatch(rf"offline-run-\d+_\d+-{run_id}(-\d+)?", d.name) for d in (first, second))
    wb = read_offline_run(second)
    assert wb["run"]["resume"] is True
    assert [row["test/top1"] for row in wb["history"]] == [10.0, 20.0]
    assert wb["summary"]["final_top1"] == 20.0
    leaked = [p for p in job.rglob("*") if p.is_file() and api_key.encode() in p.read_bytes()]
    assert leaked == []


def test_unreachable_server_falls_back_to_offline(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("WANDB_INIT_TIMEOUT", "3")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config"))
    caplog.set_level(logging.INFO, logger="kd.tracking.wandb_tracker")
    job = log_two_epochs(tmp_path, "logger.mode=online")
    (run_dir,) = offline_runs(job)
    assert [row["test/top1"] for row in read_offline_run(run_dir)["history"]] == [10.0, 20.0]
    (line,) = [r.getMessage() for r in caplog.records if r.name == "kd.tracking.wandb_tracker" and r.levelname == "INFO"]
    assert "is offline (online failed:" in line and line.endswith(f"kd-sync {job}")


def test_auto_mode_without_credentials_is_offline(tmp_path, monkeypatch):
    no_credentials(monkeypatch, tmp_path)
    tracker = WandbTracker("kd", None, None, [], "auto", None, 60.0)
    mode, why = tracker._resolve_mode()
    assert mode == "offline" and "wandb login" in why
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert tracker._resolve_mode()[0] is None  # wandb itself reads WANDB_MODE


def test_logger_config_defaults_to_wandb_and_rejects_typos():
    cfg = compose_config([])
    assert cfg.logger._target_ == "kd.tracking.wandb_tracker.WandbTracker"
    assert isinstance(instantiate(cfg.logger), WandbTracker)
    with pytest.raises(Exception, match="mdoe"):
        compose_config(["logger.mdoe=offline"])
    with pytest.raises(Exception, match="bogus"):
        compose_config(["logger.mode=bogus"])
    assert compose_config(["logger=none"]).logger._target_ == "kd.tracking.null.NullTracker"


def test_long_tags_keep_their_start_and_stay_apart():
    short = "aug=fc"
    long_a, long_b = "data.root=" + "x" * 60 + "/a", "data.root=" + "x" * 60 + "/b"
    assert fit_tag(short) == short
    assert len(fit_tag(long_a)) == MAX_TAG_LEN and fit_tag(long_a).startswith("data.root=xxx")
    assert fit_tag(long_a) != fit_tag(long_b)


def test_group_is_the_sweep_dir_and_an_id_kept_by_a_rerun_and_new_for_a_new_dir(tmp_path):
    sweep = tmp_path / ("long-" * 40) / "sweep"
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("config", overrides=[f"hydra.sweep.dir={sweep}"], return_hydra_config=True)
    cfg.hydra.mode = RunMode.MULTIRUN
    HydraConfig.instance().set_config(cfg)
    try:
        RecordSweepId().on_multirun_start(cfg)  # where the multirun starts, before any job
        first = sweep_group()
        assert first.endswith(str(sweep)[-40:] + "#" + (sweep / SWEEP_ID_FILE).read_text())
        assert len(first) == MAX_GROUP_LEN
        assert sweep_group() == first  # a job, or a rerun into the same dir: the same group
        shutil.rmtree(sweep)
        assert sweep_group() not in (None, first)  # the dir made again (by its first job): another sweep
    finally:
        HydraConfig.instance().cfg = None


def test_racing_jobs_agree_on_one_sweep_id(tmp_path):
    code = "import sys; from pathlib import Path; from kd.runs.sweep_dir import sweep_id; print(sweep_id(Path(sys.argv[1])))"
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "sweep")], stdout=subprocess.PIPE, text=True)
             for _ in range(4)]
    ids = {p.communicate()[0].strip() for p in procs}
    assert len(ids) == 1 and ids == {(tmp_path / "sweep" / SWEEP_ID_FILE).read_text()}
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir()) == [SWEEP_ID_FILE]  # no draft left behind


@pytest.mark.slow
def test_a_moved_sweep_syncs_reports_and_resumes_its_own_runs(tmp_path, monkeypatch, isolated_kd_home):
    """A sweep rsynced from a cluster's scratch to a laptop, the original gone: its run files name its own runs."""
    no_credentials(monkeypatch, tmp_path)
    scratch, laptop = tmp_path / "scratch" / "grid", tmp_path / "laptop" / "grid"
    args = ["-m", *FAST_WANDB, "teacher=resnet8", "data.train_size=280"]
    proc = run_cli([*args, "alpha=0,0.5", f"hydra.sweep.dir={scratch}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    shutil.copytree(scratch, laptop)
    shutil.rmtree(scratch.parent)

    def listed() -> list[str]:
        out = subprocess.run([sys.executable, "-m", "kd.tracking.sync", str(laptop), "--list"], capture_output=True,
                             text=True)
        assert out.returncode == 0, out.stderr[-2000:]
        return [line for line in out.stdout.split() if not line.startswith(str(isolated_kd_home))]  # the teacher's

    cells = listed()
    assert len(cells) == 2 and all(line.startswith(str(laptop)) and Path(line).is_dir() for line in cells)
    report = subprocess.run([sys.executable, "-m", "kd.report", str(laptop)], capture_output=True, text=True)
    assert report.returncode == 0, report.stderr[-2000:]
    # The grid grows in place from the copy: the two finished cells are skipped, the new one trains
    proc = run_cli([*args, "alpha=0,0.5,1", f"hydra.sweep.dir={laptop}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (proc.stdout + proc.stderr).count("already completed with this config") == 2
    assert [r["status"] for r in collect_sweep(laptop)] == ["completed"] * 3
    assert len(listed()) == 3 and all(line.startswith(str(laptop)) for line in listed())
