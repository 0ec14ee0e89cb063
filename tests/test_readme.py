"""Every `python kd/train.py` command in the README and docs/ composes as written (the short real runs are in
test_grid); the README, the door, holds the install, quickstart, grid and test commands."""
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, run_cli

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def commands(*pages: Path) -> list[str]:
    """The commands of the pages' bash blocks, continuation lines joined, comments cut, each once."""
    blocks = [b for page in pages for b in re.findall(r"```bash\n(.*?)```", page.read_text(), flags=re.S)]
    joined = [re.sub(r"\\\n\s*", "", block) for block in blocks]  # a command continued with `\` is one command
    return list(dict.fromkeys(line.split("#")[0].strip() for block in joined for line in block.splitlines()))


README_COMMANDS = commands(REPO / "README.md")
COMMANDS = commands(*PAGES)
TRAIN = [c for c in COMMANDS if c.startswith("python kd/train.py")]


def test_readme_has_the_install_quickstart_grid_and_test_commands():
    assert 'pip install -e ".[dev]"' in README_COMMANDS
    assert "python kd/train.py -m alpha=0,0.25,0.5,0.75,1.0 aug=none,fc,fcra data=digits" in README_COMMANDS
    assert "python kd/train.py -m alpha=0,0.25,0.5,0.75,1.0 aug=none,fc,fcra" in README_COMMANDS
    assert "pytest" in README_COMMANDS


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
