"""kd.report on a synthetic sweep dir: the gains table, the figures, errors, and the W&B Report object."""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib.container import ErrorbarContainer
import wandb_workspaces.reports.v2 as wr

from kd.report.figures import MIN_SPAN_IMAGES, plot_curves, plot_gains, plot_top1_by_alpha, y_range
from kd.report.cli import load_sweep, main, slice_suffix
from kd.runs.results import write_results
from kd.report.table import CSV_COLUMNS, format_table, table_rows
from kd.report.wandb_report import build_report, sweep_runs
from kd.tracking.wandb_tracker import RUN_FILE

TARGET = {"none": "kd.data.augment.NoAugment", "fc": "kd.data.augment.FlipCrop", "fcra": "kd.data.augment.FlipCropRandAugment"}
BONUS = {"none": 0.0, "fc": 2.0, "fcra": 3.5}
ALPHAS = [0.0, 0.25, 0.5, 1.0]
GROUP = "multirun/2025-01-01/12-00-00"
EPOCHS = 20


def top1(aug: str, alpha: float, seed: int, epoch: int = EPOCHS) -> float:
    """Known numbers: fcra > fc > none, more alpha is better, seed 1 is 0.5 above seed 0, rising with epochs."""
    return (70.0 + BONUS[aug] + 2 * alpha + 0.5 * seed) * (1 - 0.5 ** (epoch / 3))


def make_sweep(root: Path) -> Path:
    """3 augs x 4 alphas x 2 seeds, where fc@0.5 failed, fcra@1 never wrote results, none@1 seed 1 failed."""
    sweep = root / "sweep"
    job = 0
    for aug in TARGET:
        for alpha in ALPHAS:
            for seed in (0, 1):
                job_dir = sweep / str(job)
                job_dir.mkdir(parents=True)
                job += 1
                if (aug, alpha) == ("fcra", 1.0):  # killed before writing results: only Hydra's files
                    (job_dir / ".hydra").mkdir()
                    (job_dir / ".hydra" / "config.yaml").write_text(
                        f"stage: student\nalpha: {alpha}\nseed: {seed}\naug:\n  _target_: {TARGET[aug]}\n")
                    continue
                failed = (aug, alpha) == ("fc", 0.5) or ((aug, alpha, seed) == ("none", 1.0, 1))
                history = [{"epoch": e, "test/top1": top1(aug, alpha, seed, e)} for e in range(1, EPOCHS + 1)]
                result = {"stage": "student", "aug": aug, "alpha": alpha, "seed": seed, "model": "resnet8x4",
                          "teacher": "resnet32x4", "data": "cifar100", "epochs": EPOCHS, "temperature": 4.0,
                          "teacher_top1": 79.42, "test_images": 10000, "config": {"alpha": alpha, "aug": {"_target_": TARGET[aug]}}}
                if failed:
                    result.update(status="failed", error="NonFiniteLossError: loss is NaN")
                else:
                    result.update(status="completed", final_top1=history[-1]["test/top1"],
                                  best_top1=history[-1]["test/top1"], history=history)
                write_results(job_dir, result)
                (job_dir / RUN_FILE).write_text(json.dumps({"id": f"run{job}", "project": "kd", "entity": None,
                                                            "group": GROUP, "job_type": "student"}))
    return sweep


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    sweep = make_sweep(tmp_path_factory.mktemp("report"))
    assert main([str(sweep)]) == 0
    header, body = table_rows(load_sweep(sweep))
    return sweep, {row[0]: dict(zip(header[1:], row[1:])) for row in body}


def test_gains_table_layout_and_values(report):
    sweep, table = report
    assert list(table) == ["none", "fc", "fcra", "Gains (fc - none)", "Gains (fcra - none)"]
    assert list(table["none"]) == ["0", "0.25", "0.5", "1"]
    a, b = top1("fc", 0.25, 0), top1("fc", 0.25, 1)
    # two seeds: the 95% interval's half-width is t(0.975, 1) * |a - b| / 2
    assert table["fc"]["0.25"] == f"{(a + b) / 2:.2f} ± {12.7062047 * abs(a - b) / 2:.2f} (n=2)"
    assert table["fc"]["0.5"] == "failed"
    assert table["fcra"]["1"] == "missing"
    assert table["none"]["1"] == f"{top1('none', 1.0, 0):.2f} (1 failed)"  # the failed seed is not a zero
    marked = [(aug, a) for aug, row in table.items() for a, cell in row.items() if "*" in cell]
    assert marked == [("fcra", "0.5")]  # the best cell with a result
    gain = top1("fcra", 0.25, 0) - top1("none", 0.25, 0)  # paired by seed: the seed offsets cancel
    assert table["Gains (fcra - none)"]["0.25"] == f"{gain:+.2f} ± 0.00 (n=2)"
    assert table["Gains (fcra - none)"]["1"] == "n/a"
    md = (sweep / "gains.md").read_text()
    assert format_table(load_sweep(sweep)) in md
    assert ("resnet8x4 student, resnet32x4 teacher (79.42%), cifar100 (10000 test images), 20 epochs; "
            "mean ± 95% interval over 2 seeds") in md


def test_gains_csv_loads_as_numbers(report):
    sweep, _ = report
    table = np.genfromtxt(sweep / "gains.csv", delimiter=",", names=True, dtype=None, encoding="utf-8")
    assert table.dtype.names == tuple(CSV_COLUMNS)
    numeric = ("alpha", "mean", "ci95_half_width", "n", "failed", "missing")
    assert all(np.issubdtype(table.dtype[k], np.number) for k in numeric) and table.dtype["best"] == np.bool_
    cells = table[table["quantity"] == "final_top1"]
    assert len(cells) == 12 and table["best"].sum() == 1
    (best,) = table[table["best"]]
    assert (best["aug"], best["alpha"]) == ("fcra", 0.5)  # the marker beside the number, not in it
    assert best["mean"] == pytest.approx((top1("fcra", 0.5, 0) + top1("fcra", 0.5, 1)) / 2)  # over the two seeds
    (failed,) = cells[(cells["aug"] == "fc") & (cells["alpha"] == 0.5)]
    assert np.isnan(failed["mean"]) and (failed["n"], failed["failed"]) == (0, 2)  # no number, never a 0
    gains = table[table["quantity"] == "final_top1 gain over none"]
    (gain,) = gains[(gains["aug"] == "fcra") & (gains["alpha"] == 0.25)]
    assert gain["mean"] == pytest.approx(top1("fcra", 0.25, 0) - top1("none", 0.25, 0)) and gain["n"] == 2
    with open(sweep / "gains.csv") as f:  # the csv module: every number cell parses as a float
        rows = list(csv.DictReader(f))
    assert all(float(row[k]) == float(row[k]) for row in rows for k in numeric if row[k] != "")


def legend_error_bars(fig) -> list[bool]:
    """For each legend entry of the figure's last axes: whether it draws error bars."""
    handles, _ = fig.axes[-1].get_legend_handles_labels()
    return [isinstance(h, ErrorbarContainer) and h.has_yerr for h in handles]


def test_figures_draw_intervals_only_with_several_seeds(report):
    sweep, _ = report
    students = load_sweep(sweep)
    one_seed = [r for r in students if r["seed"] == 0]
    for plot in (plot_top1_by_alpha, plot_gains):
        assert not any(legend_error_bars(plot(one_seed, "final_top1", "")))
        assert any(legend_error_bars(plot(students, "final_top1", "")))
    assert "95% intervals" not in plot_gains(one_seed, "final_top1", "").axes[0].get_title()


def test_top1_by_alpha_keeps_tied_points_apart_and_its_ticks_at_the_alphas(report):
    """Two augmentations with the same top-1 at an alpha: their points (and error bars) stand side by side, a
    small shift along alpha each, instead of one hiding the other; the ticks still name the true alphas."""
    sweep, _ = report
    students = load_sweep(sweep)
    tied = {r["seed"]: r["final_top1"] for r in students if (r["aug"], r["alpha"]) == ("none", 0.25)}
    students = [{**r, "final_top1": tied[r["seed"]]} if (r["aug"], r["alpha"]) == ("fc", 0.25) else r for r in students]
    (ax,) = plot_top1_by_alpha(students, "final_top1", "").axes
    points = {c.get_label(): c.lines[0] for c in ax.containers if isinstance(c, ErrorbarContainer)}
    none, fc = points["none"], points["fc (flip + crop)"]
    assert fc.get_ydata()[1] == none.get_ydata()[1]  # the tie, drawn
    assert fc.get_xdata()[1] != none.get_xdata()[1]  # side by side
    for line in points.values():
        assert list(line.get_xdata()) == pytest.approx(ALPHAS, abs=0.03)  # each within a small shift of its alpha
    assert list(ax.get_xticks()) == ALPHAS and [t.get_text() for t in ax.get_xticklabels()] == ["0", "0.25", "0.5", "1"]


def test_curves_show_every_aug_and_the_final_gap(report):
    sweep, _ = report
    fig = plot_curves(load_sweep(sweep), 0.25, "")
    whole, last = fig.axes
    assert whole.get_legend_handles_labels()[1] == ["none", "fc (flip + crop)", "fcra (fc + RandAugment)"]
    finals = [top1(aug, 0.25, seed) for aug in ("none", "fcra") for seed in (0, 1)]
    low, high = last.get_ylim()
    assert low < min(finals) and max(finals) < high
    # the last epochs' panel spans about the final values, not the whole run's climb from epoch 1
    assert high - low < 0.25 * (whole.get_ylim()[1] - whole.get_ylim()[0])
    assert any("test set: n = 10000 images" in t.get_text() for t in fig.texts)


def test_y_range_never_blows_up_one_image():
    one_image = 100 / 360
    # two values one image apart: the axis spans 20 images (plus its margin), shifted to stay below 100%
    low, high = y_range([97.0, 97.0 + one_image], 360)
    assert (low, high) == pytest.approx((100.0 - 1.2 * MIN_SPAN_IMAGES * one_image, 100.0))
    assert one_image / (high - low) < 1 / MIN_SPAN_IMAGES
    low, high = y_range([60.0, 73.0], 10000)
    assert (low, high) == pytest.approx((66.5 - 0.6 * 13.0, 66.5 + 0.6 * 13.0))  # wide data: just a margin


def test_figures_written_and_linked(report):
    sweep, _ = report
    md = (sweep / "gains.md").read_text()
    for name in ("top1_by_alpha.png", "gains_by_alpha.png", "test_top1_curves_alpha0p25.png"):
        assert (sweep / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"({name})" in md


def test_curves_alpha_not_in_sweep_is_said(report, capsys):
    sweep, _ = report
    assert main([str(sweep), "--alpha", "0.75"]) == 0
    assert "no curves figure: no completed job at alpha=0.75" in capsys.readouterr().out


@pytest.mark.parametrize("where", ["missing", "empty", "single_job"])
def test_not_a_sweep_is_a_clear_error(tmp_path, capsys, where):
    path = tmp_path / where
    if where != "missing":
        path.mkdir()
    if where == "single_job":
        write_results(path, {"stage": "student", "status": "completed"})
    assert main([str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kd-report: error:") and len(err.splitlines()) == 1
    assert not (path / "gains.md").exists()


def test_a_wandb_report_of_the_test_picked_metric_is_refused_before_writing(report, capsys, tmp_path):
    sweep = Path(shutil.copytree(report[0], tmp_path / "sweep"))
    for name in ("gains.md", "gains.csv"):
        (sweep / name).unlink(missing_ok=True)
    assert main([str(sweep), "--wandb", "--metric", "best_top1"]) == 2
    assert "use --metric final_top1 or test_top1_at_best_val" in capsys.readouterr().err
    assert not (sweep / "gains.md").exists() and not (sweep / "gains.csv").exists()


def test_wandb_report_object(report):
    sweep, _ = report
    students = load_sweep(sweep)
    runs = sweep_runs(students)
    finished = sorted(json.loads((Path(r["job_dir"]) / RUN_FILE).read_text())["id"] for r in students
                      if r["status"] == "completed")
    assert (runs["project"], runs["entity"], runs["ids"]) == ("kd", None, finished)
    assert len(runs["unfinished"]) == 3  # fc@0.5 twice, none@1 seed 1: listed in the text, not in the panels
    built = build_report(students, sweep, runs, "the-runs-entity", "kd-tests", alpha=0.25, metric="final_top1")
    assert (built.project, built.entity) == ("kd", "kd-tests")  # --entity moves the report only
    table = next(b for b in built.blocks if isinstance(b, wr.MarkdownBlock))
    assert format_table(students) in table.text and "Not in the panels" in table.text
    cells, curves = [b for b in built.blocks if isinstance(b, wr.PanelGrid)]
    (by_cell,) = cells.runsets
    assert by_cell.entity == "the-runs-entity" and all(run_id in by_cell.filters for run_id in finished)
    assert "'finished'" in by_cell.filters and GROUP not in by_cell.filters  # exactly these runs, not a group name
    # the flat keys kd records: never pooled across pairs or distillers
    assert by_cell.groupby == ["config.model", "config.teacher", "config.loss", "config.teacher_view", "config.aug",
                               "config.alpha"]
    assert {type(p) for p in cells.panels} == {wr.BarPlot, wr.ScatterPlot}
    bar = next(p for p in cells.panels if isinstance(p, wr.BarPlot))
    assert bar.metrics == ["final_top1"]  # the plain key, W&B's documented form
    (curve_runs,) = curves.runsets
    assert 'Config("alpha") == 0.25' in curve_runs.filters
    assert curve_runs.groupby == ["config.model", "config.teacher", "config.loss", "config.teacher_view", "config.aug"]
    (line,) = curves.panels
    assert isinstance(line, wr.LinePlot) and line.y == ["test/top1"]
    # the dir's last two parts; no "/", which would split the report's URL
    assert built.title.endswith(f"{sweep.parent.name} sweep") and "/" not in built.title


def test_a_wandb_report_without_the_curves_alpha_gets_no_filter_on_it(report):
    sweep, _ = report
    students = load_sweep(sweep)
    built = build_report(students, sweep, sweep_runs(students), "e", "e", alpha=0.75, metric="final_top1")
    assert len([b for b in built.blocks if isinstance(b, wr.PanelGrid)]) == 1
    assert any("no finished cell at alpha=0.75" in b.text for b in built.blocks if isinstance(b, wr.MarkdownBlock))


def test_a_sweep_with_online_and_offline_runs_is_one_project(report, tmp_path):
    sweep = Path(shutil.copytree(report[0], tmp_path / "sweep"))
    first = next(sweep.glob(f"*/{RUN_FILE}"))
    first.write_text(json.dumps({**json.loads(first.read_text()), "entity": "me"}))  # this one ran online
    runs = sweep_runs(load_sweep(sweep))
    assert (runs["project"], runs["entity"]) == ("kd", "me")


def test_wandb_without_server_is_a_clear_error(report, tmp_path):
    sweep, _ = report
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE")}
    env.update(HOME=str(tmp_path), NETRC=str(tmp_path / "no.netrc"), WANDB_CONFIG_DIR=str(tmp_path))
    proc = subprocess.run([sys.executable, "-m", "kd.report", str(sweep), "--wandb"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "could not publish the W&B report" in proc.stderr and "the local files were written" in proc.stderr
    assert (sweep / "gains.md").is_file()


def provenance_sweep(root: Path, torch_versions: list[str], teachers: list[str]) -> Path:
    """Two completed cells that ran under the given torch versions and teachers (sha256s)."""
    sweep = root / "sweep"
    for job, (version, sha) in enumerate(zip(torch_versions, teachers)):
        env = {"kd_version": "0.1.0", "git_commit": "a" * 40, "git_dirty": False, "python": "3.11.7",
               "torch": version, "torchvision": "0.29.1", "cuda": "13.0", "cudnn": 91200, "device": "CPU (x86_64)"}
        (sweep / str(job)).mkdir(parents=True)
        write_results(sweep / str(job), {
            "stage": "student", "status": "completed", "aug": "none", "alpha": 0.5 * job, "seed": 0,
            "model": "resnet8", "teacher": "resnet20", "data": "digits", "epochs": 1, "temperature": 4.0,
            "final_top1": 90.0, "best_top1": 90.0, "history": [{"epoch": 1, "test/top1": 90.0}],
            "teacher_top1": 96.11 if sha == "1" * 64 else 95.0, "teacher_sha256": sha, "teacher_format": "kd",
            "teacher_checkpoint": f"/cache/teachers/{sha[:4]}.pt", "environment": env,
            "config": {"alpha": 0.5 * job, "aug": {"_target_": TARGET["none"]}}})
    return sweep


def test_the_report_names_the_teacher_and_environment_and_warns_when_cells_differ(tmp_path, capsys):
    same = provenance_sweep(tmp_path / "same", ["2.14.1", "2.14.1"], ["1" * 64, "1" * 64])
    assert main([str(same)]) == 0
    out = capsys.readouterr()
    assert "teacher resnet20 (seed 0): test top-1 96.11%, sha256 111111111111, kd format, /cache/teachers/1111.pt" in out.out
    assert "environment: kd_version 0.1.0, git_commit " + "a" * 40 + ", git_dirty False, python 3.11.7, torch 2.14.1" \
        in out.out
    assert "warning" not in out.err

    mixed = provenance_sweep(tmp_path / "mixed", ["2.14.1", "2.15.0"], ["1" * 64, "2" * 64])
    assert main([str(mixed)]) == 0
    out = capsys.readouterr()
    assert "kd-report: warning: the cells ran under different torch: 2.14.1, 2.15.0" in out.err
    assert "kd-report: warning: the cells of seed 0 used 2 different teachers" in out.err
    gains = (mixed / "gains.md").read_text()
    assert "**warning:** the cells ran under different torch: 2.14.1, 2.15.0" in gains
    assert "sha256 222222222222" in gains and "sha256 111111111111" in gains


def test_the_gains_figure_with_one_alpha_keeps_its_augmentations_at_that_alpha(report):
    sweep, _ = report
    one_alpha = [r for r in load_sweep(sweep) if float(r["alpha"]) == 0.25]
    (ax,) = plot_gains(one_alpha, "final_top1", "").axes
    assert ax.get_xlim() == (-0.5, 0.5) and [t.get_text() for t in ax.get_xticklabels()] == ["0.25"]
    xs = [x for line in ax.lines if line.get_linestyle() == "None" for x in line.get_xdata()]  # not the zero line
    assert len(xs) == 2 and all(-0.5 < x < 0.5 for x in xs) and len(set(xs)) == 2  # fc and fcra side by side


def test_figure_file_names_need_no_quoting(report):
    sweep, _ = report
    names = [p.name for p in sweep.glob("*.png")]
    assert "test_top1_curves_alpha0p25.png" in names
    assert all(re.fullmatch(r"[A-Za-z0-9_-]+\.png", n) for n in names), names
    assert slice_suffix("loss=dkd data.train_size=0.5") == "_loss-dkd_data_train_size-0p5"
