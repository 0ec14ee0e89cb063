"""kd's version in every results.json: the installed one, or the commit of a checkout run from PYTHONPATH."""
from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO
from kd.runs.provenance import environment

GIT = ["git", "-c", "user.name=kd", "-c", "user.email=kd@localhost", "-c", "commit.gpgsign=false"]


def site_without_kd(tmp_path: Path) -> Path:
    """This environment's libraries (torch's site-packages, linked entry by entry) without kd's distribution."""
    site = tmp_path / "site"
    site.mkdir()
    for entry in Path(torch.__file__).resolve().parents[1].iterdir():
        if entry.name != "kd" and not entry.name.startswith(("kd-", "__editable__.kd-", "__editable___kd_")):
            (site / entry.name).symlink_to(entry)
    return site


@pytest.mark.parametrize("in_git", [True, False])
def test_a_checkout_that_pip_never_installed_records_its_commit_or_says_so(tmp_path, in_git):
    """A checkout on PYTHONPATH that pip never installed: a fresh Python without its site (-S) sees a copy of kd
    and the libraries, and no kd distribution to read a version from."""
    checkout = tmp_path / "checkout"
    shutil.copytree(REPO / "kd", checkout / "kd", ignore=shutil.ignore_patterns("__pycache__"))
    commit = None
    if in_git:
        subprocess.run([*GIT, "init", "-q", str(checkout)], check=True)
        subprocess.run([*GIT, "-C", str(checkout), "add", "kd"], check=True)
        subprocess.run([*GIT, "-C", str(checkout), "commit", "-q", "-m", "a checkout"], check=True)
        commit = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
    code = ("import importlib.metadata, torch, kd\n"
            "from kd.runs.provenance import environment\n"
            "try:\n"
            "    importlib.metadata.version('kd')\n"
            "    print('kd is installed')\n"
            "except importlib.metadata.PackageNotFoundError:\n"
            "    print(kd.__file__)\n"
            "print(environment(torch.device('cpu'))['kd_version'])\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(checkout), str(site_without_kd(tmp_path))])}
    done = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    where, version = done.stdout.splitlines()[-2:]
    assert where == str(checkout / "kd" / "__init__.py")  # this copy, and no distribution of kd in sight
    assert version == (commit if in_git else "not installed")


def test_an_installed_kd_records_its_package_version():
    assert environment(torch.device("cpu"))["kd_version"] == importlib.metadata.version("kd")
