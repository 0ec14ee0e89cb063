"""What a new user broke in a first session (issue 26), each case as the user met it: swept keys the report
merged, names too long for the file system, a refused rerun that rewrote .hydra/, a one-class folder, an
augmentation without a name, a bad cell found only after the others trained, a failed cell without a table."""
from __future__ import annotations

import pytest

from conftest import FAST, cell_dir, run_cli
from image_folders import write_folder
from kd.report.cli import main as report_main
from kd.report.table import PooledCellsError, grid_cells
from kd.runs.results import RESULTS_FILE, collect_sweep, read_results
from reliability import ONE_THREAD, snapshot

CELL = [*FAST, "teacher=resnet8"]


@pytest.mark.slow
def test_a_swept_loss_parameter_is_its_own_table_never_seeds(tmp_path, capsys):
    grid = [*CELL, "loss.temperature=8,2", "aug=none,fc", "alpha=0.5"]  # typed out of order: tables follow it
    out = tmp_path / "grid"
    done = run_cli(["-m", *grid, f"hydra.sweep.dir={out}"], cwd=tmp_path, env=ONE_THREAD)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "loss.temperature=2:" in done.stdout and "loss.temperature=8:" in done.stdout  # the end-of-grid table
    assert done.stdout.index("loss.temperature=8:") < done.stdout.index("loss.temperature=2:")
    log = cell_dir(out, grid, "loss.temperature=2", "aug=none").joinpath("train.log").read_text()
    assert "[aug=none alpha=0.5 seed=0 loss.temperature=2]" in log and "[aug=none alpha=0.5 seed=0 loss.temperature=8]" in log
    assert report_main([str(out)]) == 0
    printed = capsys.readouterr().out
    assert "(n=2)" not in printed and printed.count("Gains (fc - none)") == 2
    assert printed.index("loss.temperature=8:") < printed.index("loss.temperature=2:")
    rows = (out / "gains.csv").read_text().splitlines()
    assert rows[0].split(",")[0] == "loss.temperature" and len(rows) == 1 + 2 * 3  # per temperature: 2 cells, 1 gain
    assert rows[1].startswith("8,")
    claims = (out / "claims.md").read_text()
    assert "## loss.temperature=2" in claims and "## loss.temperature=8" in claims


def test_two_results_of_one_cell_and_seed_are_refused_not_pooled():
    a = {"stage": "student", "status": "completed", "aug": "fc", "alpha": 0.5, "seed": 0, "final_top1": 50.0,
         "job_dir": "a", "defining_config": {"loss": {"beta": 1.0}}}
    b = {**a, "final_top1": 60.0, "job_dir": "b", "defining_config": {"loss": {"beta": 8.0}}}
    with pytest.raises(PooledCellsError, match=r"a and b both hold aug=fc alpha=0.5 seed=0 but differ in loss.beta"):
        grid_cells([a, b])


@pytest.mark.slow
def test_a_multirun_with_sixteen_overrides_runs_and_reports(tmp_path):
    overrides = [*CELL, "data.train_size=200", "data.val_size=50", "data.split_seed=3", "optim.optimizer.lr=0.05",
                 "optim.optimizer.momentum=0.9", "optim.optimizer.weight_decay=0.0005", "loss.temperature=4",
                 "trainer.batch_size=32", "trainer.eval_batch_size=500", "seed=0", "aug=fc", "alpha=0,0.5"]
    assert len(overrides) >= 16
    out = tmp_path / "long"
    done = run_cli(["-m", *overrides, f"hydra.sweep.dir={out}"], cwd=tmp_path, env=ONE_THREAD)
    assert done.returncode == 0, done.stderr[-3000:]
    results = collect_sweep(out)
    assert len(results) == 2 and all(r["status"] == "completed" for r in results)
    assert all(len(r["job_dir"].rsplit("/", 1)[-1]) <= 160 for r in results)
    assert "+" in results[0]["job_dir"].rsplit("/", 1)[-1]  # shortened by a digest; the overrides are in .hydra/
    again = run_cli(["-m", *overrides, f"hydra.sweep.dir={out}"], cwd=tmp_path, env=ONE_THREAD)
    assert again.returncode == 0 and again.stdout.count("already completed") == 2  # the same names on a rerun


@pytest.mark.slow
def test_a_refused_single_rerun_leaves_the_finished_dir_byte_identical(tmp_path):
    run = tmp_path / "run"
    first = run_cli([*CELL, "alpha=0", f"hydra.run.dir={run}"], cwd=tmp_path, env=ONE_THREAD)
    assert first.returncode == 0, first.stderr[-2000:]
    before = snapshot(run)
    refused = run_cli([*CELL, "alpha=0.25", f"hydra.run.dir={run}"], cwd=tmp_path, env=ONE_THREAD)
    assert refused.returncode != 0 and "holds the completed results of a different config" in refused.stderr
    assert snapshot(run) == before


def test_a_one_class_folder_is_refused_before_anything_is_decoded(tmp_path, isolated_kd_home):
    root = write_folder(tmp_path / "images", classes=["cat"])
    done = run_cli([*CELL, "data=folder", f"data.root={root}", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert done.returncode != 0 and "holds one class folder (cat); classification needs at least two" in done.stderr
    assert not (isolated_kd_home / "images").exists() and not (isolated_kd_home / "teachers").exists()


NAMELESS_AUG = '''
class Identity:
    def __call__(self, images, generator):
        return images

    def pil_transforms(self, image_size):
        return []
'''


def test_an_augmentation_without_a_name_is_named_by_its_class(tmp_path):
    (tmp_path / "my_aug.py").write_text(NAMELESS_AUG)
    (tmp_path / "conf" / "aug").mkdir(parents=True)
    (tmp_path / "conf" / "aug" / "same.yaml").write_text("_target_: my_aug.Identity\n")
    run = tmp_path / "run"
    done = run_cli(["--config-dir", str(tmp_path / "conf"), *CELL, "aug=same", "alpha=0", f"hydra.run.dir={run}"],
                   cwd=tmp_path, env={**ONE_THREAD, "PYTHONPATH": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert read_results(run / RESULTS_FILE)["aug"] == "Identity"


def test_a_bad_value_in_one_cell_stops_the_sweep_before_anything_is_written(tmp_path):
    out = tmp_path / "grid"
    done = run_cli(["-m", *CELL, "alpha=0,-0.5", "loss=kd,dkd", f"hydra.sweep.dir={out}"], cwd=tmp_path)
    assert done.returncode != 0
    assert "2 cell(s) of this multirun have bad settings; nothing was written or trained" in done.stderr
    assert "alpha=-0.5 loss=kd: ValueError: alpha=-0.5 is outside [0, 1]" in done.stderr
    assert not out.exists()


@pytest.mark.slow
def test_a_failed_cell_of_the_default_launcher_still_prints_the_grid_table(tmp_path):
    # Two packs: the teacher is refused where min_top1=100 cannot be met, accepted where it is 0.
    done = run_cli(["-m", *CELL, "alpha=0.5", "teacher.min_top1=0,100", f"hydra.sweep.dir={tmp_path / 'grid'}"],
                   cwd=tmp_path, env=ONE_THREAD)
    assert done.returncode != 0
    assert "1 of 2 cells failed" in done.stderr and "TeacherTooWeakError" in done.stderr
    assert "| teacher.min_top1 \\ alpha |" in done.stdout  # one table, a row per value (one aug: kd/report/axes.py)
    assert "failed" in next(line for line in done.stdout.splitlines() if line.startswith("| 100 "))


def test_the_figures_axes_stay_within_0_100_and_the_last_epoch():
    from kd.report.figures import plot_curves, plot_top1_by_alpha

    def run(aug, seed, top1):
        history = [{"epoch": e, "test/top1": top1 - (3 - e) * 40 * (seed - 1)} for e in (1, 2, 3)]
        return {"stage": "student", "status": "completed", "aug": aug, "alpha": 0.5, "seed": seed,
                "final_top1": history[-1]["test/top1"], "history": history, "test_images": 100}

    students = [run(aug, seed, top1) for aug, top1 in (("none", 99.0), ("fc", 60.0)) for seed in (0, 1, 2)]
    students[2]["final_top1"] = 100.0  # the interval of 99 +- ... would pass 100
    students[0]["final_top1"] = 90.0
    for fig in (plot_curves(students, 0.5, "test"), plot_top1_by_alpha(students, "final_top1", "test")):
        for ax in fig.axes:
            low, high = ax.get_ylim()
            assert 0.0 <= low < high <= 100.0, (low, high)
    (whole,) = plot_curves(students, 0.5, "test").axes  # 3 epochs: one panel, no half-empty zoom on the last
    assert whole.get_xlim()[1] <= 3.5


def test_a_single_run_ends_with_its_top1_and_where_its_results_are(tmp_path):
    run = tmp_path / "run"
    done = run_cli([*CELL, "alpha=0.5", f"hydra.run.dir={run}"], cwd=tmp_path, env=ONE_THREAD)
    assert done.returncode == 0, done.stderr[-3000:]
    result = read_results(run / RESULTS_FILE)
    assert done.stdout.splitlines()[-1] == (f"kd: final test top-1 {result['final_top1']:.2f}%; "
                                            f"results in {run / RESULTS_FILE}")
