"""Files that a disk or a copy damaged after kd wrote them (a results.json cut in half or emptied, a checkpoint.pt
cut short): kd-report names each and reports the rest without moving anything; a rerun of the sweep keeps each
aside (renamed, never deleted) and trains its cell again, and its grid table has every cell."""
from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import FAST, cell_dir, run_cli
from kd.checkpoint import set_aside
from kd.runs.results import RESULTS_FILE, read_results
from reliability import ONE_THREAD, snapshot

GRID = [*FAST, "alpha=0,0.5", "aug=none,fc"]


@pytest.mark.slow
def test_a_sweep_with_corrupt_files_is_reported_then_retrained(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", *GRID, f"hydra.sweep.dir={sweep}"]
    first = run_cli(args, cwd=tmp_path, env=ONE_THREAD)
    assert first.returncode == 0, first.stderr[-3000:]
    cut, emptied, killed = (cell_dir(sweep, GRID, "aug=none", "alpha=0"), cell_dir(sweep, GRID, "aug=fc", "alpha=0"),
                            cell_dir(sweep, GRID, "aug=fc", "alpha=0.5"))
    text = (cut / RESULTS_FILE).read_text()
    (cut / RESULTS_FILE).write_text(text[:len(text) // 2])
    (emptied / RESULTS_FILE).write_text("")
    (killed / RESULTS_FILE).unlink()  # as a SIGKILL leaves it, and then its checkpoint cut short too
    checkpoint = (killed / "checkpoint.pt").read_bytes()
    (killed / "checkpoint.pt").write_bytes(checkpoint[:len(checkpoint) // 2])

    before = snapshot(sweep)
    report = subprocess.run([sys.executable, "-m", "kd.report", str(sweep)], capture_output=True, text=True,
                            cwd=tmp_path)
    assert report.returncode == 0, report.stderr[-3000:]
    for damaged in (cut, emptied):
        assert f"kd-report: warning: {damaged / RESULTS_FILE} is truncated or corrupt" in report.stderr, report.stderr
    assert "Traceback" not in report.stderr
    row = next(line for line in report.stdout.splitlines() if line.startswith("| none "))  # the grid, first
    assert row.split("|")[2].strip() == "failed" and row.split("|")[3].strip().rstrip(" *")[0].isdigit(), row
    assert "is truncated or corrupt" in (sweep / "gains.md").read_text()
    after = snapshot(sweep)
    # kd-report reads the cells and writes only its own files, beside them
    assert {k: v for k, v in after.items() if k in before} == before
    assert all("/" not in k for k in set(after) - set(before)), set(after) - set(before)

    rerun = run_cli(args, cwd=tmp_path, env=ONE_THREAD)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    said = rerun.stdout + rerun.stderr  # kd's log lines go to the console (stdout) and each cell's train.log
    for damaged, bytes_kept in ((cut / RESULTS_FILE, text[:len(text) // 2].encode()), (emptied / RESULTS_FILE, b""),
                                (killed / "checkpoint.pt", checkpoint[:len(checkpoint) // 2])):
        (kept,) = damaged.parent.glob(f"{damaged.name}.corrupt-*")
        assert kept.read_bytes() == bytes_kept
        assert f"{damaged} is truncated or corrupt" in said and str(kept) in said, said[-3000:]
    assert "this cell trains from its first epoch" in said
    for job in (cut, emptied, killed):
        assert read_results(job / RESULTS_FILE)["status"] == "completed"
    grid = rerun.stdout.split("Test top-1 (%) of the students")[1]
    assert "failed" not in grid and "missing" not in grid and grid.count("|") > 8, grid


def test_setting_aside_never_replaces_a_file_set_aside_before(tmp_path):
    path = tmp_path / RESULTS_FILE
    kept = []
    for text in ("first", "second"):  # within one second: the same time stamp
        path.write_text(text)
        kept.append(set_aside(path))
    assert [p.read_text() for p in kept] == ["first", "second"] and not path.exists()
    assert all(p.name.startswith(f"{RESULTS_FILE}.corrupt-") for p in kept)
