"""A search (hydra/sweeper=optuna, conf/hparams_search/) run for real on digits through kd's packed launcher: each
trial returns its val top-1 as Optuna's objective, a batch of trials trains as one pack, a bad trial fails alone,
and a rerun into the sweep dir continues the study (docs/search.md)."""
from __future__ import annotations

import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import FAST, run_cli
from test_interrupts import start, wait_for
from kd.runs.results import collect_sweep

optuna = pytest.importorskip("optuna")

VAL = ["data.val_size=100"]


def study(sweep: Path, name: str = "kd_alpha_t") -> "optuna.Study":
    return optuna.load_study(study_name=name, storage=f"sqlite:///{sweep}/optuna.db")


def result_of(results: list[dict], alpha: float) -> dict:
    (found,) = [r for r in results if r["alpha"] == alpha]
    return found


@pytest.mark.slow
def test_each_trial_returns_its_val_top1_and_a_batch_trains_as_one_pack(tmp_path):
    """The issue's command: every trial failed with 'Return value must be float-castable' (kd returned its whole
    results dict), after kd's pre-checks were skipped with a warning (BasicSweeper cannot expand interval())."""
    sweep = tmp_path / "s"
    args = ["-m", *FAST, *VAL, "hydra/sweeper=optuna", "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=2",
            "hydra.sweeper.direction=maximize", "hydra.sweeper.study_name=s",
            f"hydra.sweeper.storage=sqlite:///{sweep}/optuna.db", "alpha=interval(0,1)",
            "loss.temperature=interval(1,8)", f"hydra.sweep.dir={sweep}"]
    proc = run_cli(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "UserWarning" not in out and "float-castable" not in out
    assert out.count("Launching 2 jobs locally in 1 pack(s)") == 2  # each batch of 2 trials: one pack
    trials = study(sweep, "s").trials
    results = collect_sweep(sweep)
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 4 and len(results) == 4
    for trial in trials:
        result = result_of(results, trial.params["alpha"])
        assert result["temperature"] == trial.params["loss.temperature"]
        assert trial.value == result["best_val_top1"]  # the val split's, not the test set's
    assert "Trials of search s" in proc.stdout and "UserWarning" not in out  # the multirun ends with its trials

    report = subprocess.run([sys.executable, "-m", "kd.report", str(sweep)], capture_output=True, text=True)
    assert report.returncode == 0, report.stderr[-3000:]
    best = study(sweep, "s").best_trial
    chosen = result_of(results, best.params["alpha"])
    assert (f"best trial #{best.number} of 4: " in report.stdout and f"val top-1 {best.value:.2f}% (the objective); "
            f"its test top-1 {chosen['test_top1_at_best_val']:.2f}% (reported, never searched on)" in report.stdout)
    rows = (sweep / "trials.csv").read_text().splitlines()
    assert rows[0].startswith("trial,alpha,loss.temperature,state,val_top1,test_top1") and len(rows) == 5
    assert all((sweep / name).is_file() for name in ("trials.md", "optimization_history.png",
                                                     "param_importances.png"))


def two_trial_search(tmp_path: Path, *extra: str) -> Path:
    """A finished search of kd_alpha_t on digits: 2 trials, both at once; its sweep dir."""
    sweep = tmp_path / "s"
    proc = run_cli(["-m", "hparams_search=kd_alpha_t", *FAST, *VAL, *extra, "hydra.sweeper.n_trials=2",
                    "hydra.sweeper.n_jobs=2", f"hydra.sweep.dir={sweep}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return sweep


@pytest.mark.slow
def test_under_hydras_basic_launcher_kds_task_function_returns_the_objective(tmp_path):
    """kd/train.py's `main` is the job there (kd's launchers train packs themselves): it returned its results dict."""
    sweep = two_trial_search(tmp_path, "hydra/launcher=basic")
    trials, results = study(sweep).trials, collect_sweep(sweep)
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert all(t.value == result_of(results, t.params["alpha"])["best_val_top1"] for t in trials)


@pytest.mark.slow
def test_kd_report_wandb_on_a_search_logs_its_trials_table_in_a_report_run(tmp_path):
    """It refused with 'does not publish a search's report yet'; the issue asks the report run to log the trials."""
    from test_wandb_capture import logged_table

    sweep = two_trial_search(tmp_path, "logger=wandb")
    report = subprocess.run([sys.executable, "-m", "kd.report", str(sweep), "--wandb"], capture_output=True, text=True)
    assert report.returncode == 0, report.stderr[-3000:]
    assert "W&B report run (the trials table, figures, trials.md) logged offline in" in report.stdout
    (run_dir,) = (sweep / "wandb_report_run" / "wandb").glob("offline-run-*")
    trials = logged_table(run_dir, "trials")
    assert trials["columns"][:4] == ["trial", "alpha", "loss.temperature", "state"] and len(trials["data"]) == 2
    values = {t.number: t.value for t in study(sweep).trials}
    column = trials["columns"].index("val_top1")
    assert {row[0]: row[column] for row in trials["data"]} == values  # each trial's objective, as Optuna holds it


@pytest.mark.slow
def test_a_trial_given_a_bad_value_fails_alone_and_the_study_goes_on(tmp_path):
    sweep = tmp_path / "s"
    args = ["-m", "hparams_search=kd_alpha_t", *FAST, *VAL, "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=4",
            "hydra.sweeper.max_failure_rate=1", "loss.temperature=choice(4,-1)", f"hydra.sweep.dir={sweep}"]
    proc = run_cli(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = study(sweep).trials
    states = {t.params["loss.temperature"]: set() for t in trials}
    for t in trials:
        states[t.params["loss.temperature"]].add(t.state)
    assert states == {4: {optuna.trial.TrialState.COMPLETE}, -1: {optuna.trial.TrialState.FAIL}}
    out = proc.stdout + proc.stderr
    assert "loss.temperature=-1" in out and "failed: ValueError" in out  # each failed trial says why
    completed = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    results = collect_sweep(sweep)
    assert all(t.value == result_of(results, t.params["alpha"])["best_val_top1"] for t in completed)

    # Its study holds trials of 1 epoch: a rerun into the dir that trains 2 would mix them, and is refused.
    changed = run_cli([*args, "trainer.epochs=2"], tmp_path)
    assert changed.returncode == 1 and "holds a sweep that this run would change" in changed.stderr
    assert "trainer.epochs: sweep has [1], this run asks [2]" in changed.stderr and len(study(sweep).trials) == 4


def test_a_search_without_a_val_split_is_refused_before_anything_runs(tmp_path):
    sweep = tmp_path / "s"
    proc = run_cli(["-m", "hparams_search=kd_alpha_t", *FAST, f"hydra.sweep.dir={sweep}"], tmp_path)
    assert proc.returncode == 1
    assert "no val split: add data.val_size=N" in proc.stderr
    assert not (sweep / "optuna.db").exists() and not collect_sweep(sweep)


def test_a_bad_fixed_setting_of_a_search_is_refused_not_warned_about(tmp_path):
    sweep = tmp_path / "s"
    proc = run_cli(["-m", "hparams_search=kd_alpha_t", *FAST, *VAL, "trainer.batch_size=0",
                    f"hydra.sweep.dir={sweep}"], tmp_path)
    assert proc.returncode == 1 and "UserWarning" not in proc.stderr
    assert "the search's fixed settings" in proc.stderr and "trainer.batch_size=0 must be >= 1" in proc.stderr


def test_a_grid_that_cannot_be_expanded_stops_instead_of_skipping_the_checks(tmp_path):
    proc = run_cli(["-m", *FAST, "alpha=interval(0,1)", f"hydra.sweep.dir={tmp_path / 's'}"], tmp_path)
    assert proc.returncode == 1 and "UserWarning" not in proc.stderr
    assert "kd cannot expand this multirun's cells" in proc.stderr and "hparams_search=" in proc.stderr


@pytest.mark.chaos
def test_ctrl_c_in_the_second_batch_and_the_same_command_continue_the_study(tmp_path):
    """The first batch's trials are kept as they were; the cut-short ones are asked again with their values, so
    their cells resume from their checkpoints; the study ends at n_trials completed trials."""
    sweep = tmp_path / "s"
    args = ["-m", "hparams_search=kd_alpha_t", *[a for a in FAST if not a.startswith("trainer.epochs")], *VAL,
            "trainer.epochs=12", "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=2", f"hydra.sweep.dir={sweep}"]
    log = tmp_path / "stdout.log"
    proc = start(args, tmp_path, log)
    wait_for(log, "pack 1/1 starts: #2, #3", proc)  # the first batch is done and told to the study
    while log.read_text().count("epoch 2/12") < 4:  # both trials of the second batch have a checkpoint
        assert proc.poll() is None, log.read_text()[-3000:]
        time.sleep(0.2)
    first = {t.number: (t.params, t.value, t.datetime_complete) for t in study(sweep).trials
             if t.state == optuna.trial.TrialState.COMPLETE}
    proc.send_signal(signal.SIGINT)
    stderr = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130, stderr[-3000:]
    command = shlex.split(stderr.strip().splitlines()[-1])
    assert len(first) == 2

    resumed = subprocess.run([sys.executable, *command[1:]], cwd=tmp_path, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stdout.count("resumed from") == 2
    trials = study(sweep).trials
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 4
    assert {t.number: (t.params, t.value, t.datetime_complete) for t in complete if t.number in first} == first
    cut = [t.params for t in trials if t.state == optuna.trial.TrialState.FAIL]
    assert sorted(cut, key=str) == sorted([t.params for t in complete if t.number not in first], key=str)
    assert len(collect_sweep(sweep)) == 4 and all(r["status"] == "completed" for r in collect_sweep(sweep))
