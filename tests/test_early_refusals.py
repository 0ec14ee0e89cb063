"""Bad input on the command line is refused before anything is written, in one line each: a single run as a
multirun (no traceback, no outputs dir), and a folder's unreadable image once per sweep, not once per cell."""
from __future__ import annotations

import pytest

from conftest import FAST, run_cli
from image_folders import write_folder

SINGLE = {
    "alpha=-0.5": "Error: ValueError: alpha=-0.5 is outside [0, 1]; set alpha=0 (plain CE) .. alpha=1 (pure "
                  "distillation)",
    "teacher.checkpoint=/nonexistent.pt": "Error: CheckpointError: teacher.checkpoint=/nonexistent.pt does not "
                                          "exist. Fix the path, or set teacher.checkpoint=null",
}


@pytest.mark.parametrize("override", SINGLE)
def test_a_single_runs_bad_value_is_one_line_and_writes_nothing(override, tmp_path):
    proc = run_cli([*FAST, "alpha=0.5", override], cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert SINGLE[override] in proc.stderr, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "HYDRA_FULL_ERROR" not in proc.stderr, proc.stderr
    assert [line for line in proc.stderr.splitlines() if line.startswith("Error")] == [
        next(line for line in proc.stderr.splitlines() if line.startswith("Error"))]
    assert not (tmp_path / "outputs").exists()


def test_a_folders_unreadable_image_stops_a_multirun_once_before_any_cell(tmp_path):
    root = write_folder(tmp_path / "pets")
    broken = root / "train" / "apple" / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not a JPEG")
    sweep = tmp_path / "sweep"
    proc = run_cli(["-m", "data=folder", f"data.root={root}", "data.image_size=8", "trainer.epochs=1", "logger=none",
                    "teacher.epochs=1", "teacher.min_top1=0", "alpha=0,0.5", "aug=none,fc",
                    f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert proc.stderr.count(str(broken)) == 1, proc.stderr[-3000:]
    assert f"Error: ImageFolderError: cannot read image {broken} (OSError: Truncated File Read)" in proc.stderr
    assert "Error in call to target" not in proc.stderr and "Traceback" not in proc.stderr
    assert not list(sweep.glob("*/results.json"))  # no cell trained, none failed in turn
