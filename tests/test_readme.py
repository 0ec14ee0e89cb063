"""Every `python kd/train.py` command in the README composes as written (the short real runs are in test_grid)."""
import re
import shlex
import subprocess
import sys

import pytest

from conftest import REPO, run_cli

README = (REPO / "README.md").read_text()
BLOCKS = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
COMMANDS = [line.split("#")[0].strip() for block in BLOCKS for line in block.splitlines()]
TRAIN = [c for c in COMMANDS if c.startswith("python kd/train.py")]


def test_readme_has_the_install_quickstart_grid_and_test_commands():
    assert 'pip install -e ".[dev]"' in COMMANDS
    assert "python kd/train.py -m alpha=0,0.25,0.5,0.75,1.0 aug=none,fc,fcra data=digits" in TRAIN
    assert "python kd/train.py -m alpha=0,0.25,0.5,0.75,1.0 aug=none,fc,fcra" in TRAIN
    assert "pytest" in COMMANDS


@pytest.mark.parametrize("command", [c for c in TRAIN if "--help" not in c and "--cfg" not in c])
def test_readme_train_command_composes(command, tmp_path):
    # A sweep's `key=a,b,c` composes like each of its cells; check the last (alpha=1.0, aug=fcra).
    args = [re.sub(r"=.*,", "=", a) for a in shlex.split(command)[2:] if a != "-m"]
    proc = run_cli([*args, "--cfg", "job"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "alpha:" in proc.stdout


def test_readme_submit_command_dry_runs(tmp_path):
    command = next(c for c in COMMANDS if c.startswith("python -m kd.runs.submit"))
    proc = subprocess.run([sys.executable, *shlex.split(command)[1:], "--dry-run"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "stage=teacher" in proc.stdout
