"""A grid over losses at one augmentation and one alpha, reported as a comparison (issue 41): one table whose rows
are the losses, with each cell's epochs including FSP's first stage; no figure of a single point; claims that need
an aug=none row said not applicable, with the reason."""
from __future__ import annotations

import csv

import pytest

from conftest import FAST, run_cli
from kd.report.cli import main as report_main
from reliability import ONE_THREAD

# FSP compares the feature maps channel by channel: the student is the teacher's network. Its first stage keeps
# its recipe's 30 epochs, which the tables must show beside the others' 2.
GRID = [*FAST, "teacher=resnet8", "model=resnet8", "aug=fc", "alpha=0.5", "trainer.epochs=2", "loss=kd,dkd,fsp"]
HEADER = "| loss \\ alpha | 0.5"


def table_lines(text: str) -> list[str]:
    start = text.index(HEADER)
    return [line for line in text[start:].splitlines() if line.startswith("|")][:5]


def check_table(lines: list[str]) -> None:
    header, _, *rows = lines
    assert header.split("|")[-2].strip() == "epochs"
    assert [row.split("|")[1].strip() for row in rows] == ["kd", "dkd", "fsp"]  # as typed
    epochs = {row.split("|")[1].strip(): row.split("|")[-2].strip() for row in rows}
    assert epochs == {"kd": "2", "dkd": "2", "fsp": "2 (+30 first stage)"}
    assert sum("*" in row for row in rows) == 1  # the best of three


@pytest.mark.slow
def test_a_grid_over_losses_is_one_table_with_the_losses_as_rows(tmp_path, capsys):
    out = tmp_path / "sweep"
    done = run_cli(["-m", *GRID, f"hydra.sweep.dir={out}"], cwd=tmp_path, env=ONE_THREAD)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    grid_table = done.stdout[done.stdout.index("Test top-1"):]
    assert grid_table.count(HEADER) == 1 and "loss=kd:" not in grid_table  # one table, not one per loss
    check_table(table_lines(grid_table))

    assert report_main([str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.count(HEADER) == 1
    check_table(table_lines(printed))
    gains = (out / "gains.md").read_text()
    assert gains.count(HEADER) == 1 and "epochs as the table's epochs column says" in gains
    # One alpha: no figure over alpha; one aug: no T. stddev figure. The curves (2 epochs) compare the losses.
    assert sorted(p.name for p in out.glob("*.png")) == ["test_top1_curves_alpha0p5.png"]
    claims = (out / "claims.md").read_text()
    verdicts = [line.rsplit("**", 2)[1] for line in claims.splitlines() if line.startswith("#") and "**" in line]
    assert verdicts == ["not applicable"] * 4
    assert "no aug=none row: the sweep trains aug=fc only" in claims and "one α (0.5)" in claims
    assert "## loss=" not in claims  # said once for the grid, not once per loss
    diagnostics = (out / "diagnostics.md").read_text()
    assert sum(line.startswith("| loss ") for line in diagnostics.splitlines()) == 1
    with open(out / "gains.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["loss"], r["aug"], r["epochs"], r["first_stage_epochs"]) for r in rows] == [
        ("kd", "fc", "2", "0"), ("dkd", "fc", "2", "0"), ("fsp", "fc", "2", "30")]


def synthetic(loss: str, alpha: float, top1: float) -> dict:
    return {"stage": "student", "status": "completed", "aug": "fc", "alpha": alpha, "seed": 0, "loss": loss.upper(),
            "final_top1": top1, "epochs": 2, "overrides": {"loss": loss}, "test_images": 360,
            "history": [{"epoch": e, "test/top1": top1} for e in (1, 2)]}


def test_over_two_alphas_each_loss_is_a_line_on_an_axis_that_names_the_losses():
    from kd.report.axes import row_axis
    from kd.report.figures import plot_top1_by_alpha
    from kd.report.table import format_tables

    students = [synthetic(loss, alpha, 50 + alpha + i) for i, loss in enumerate(("kd", "fsp")) for alpha in (0.5, 1.0)]
    assert row_axis(students) == "loss"
    (ax,) = plot_top1_by_alpha(students, "final_top1", "", row_axis(students)).axes
    assert ax.get_legend_handles_labels()[1] == ["fsp", "kd"]  # sorted: these results have no sweep dir to say its order
    assert "KD: T²·KL" in ax.get_xlabel() and "FSP: FSP's term" in ax.get_xlabel()
    assert "*" not in format_tables(students[:1])  # one cell: nothing to compare
