"""Entry points a newcomer meets first: kd's own --help, `--cfg job --resolve`, kd-report's and kd-sync's options."""
from __future__ import annotations

import re

import pytest

from conftest import CONF_DIR, REPO, run_cli
from kd.config import Stage
from kd.report.cli import build_parser


@pytest.fixture(scope="module")
def help_text(tmp_path_factory):
    proc = run_cli(["--help"], cwd=tmp_path_factory.mktemp("help"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_help_is_kds_own(help_text):
    assert help_text.startswith("kd: distill a teacher into a student")
    assert "powered by Hydra" not in help_text and "schema/" not in help_text  # no internal schema groups
    assert "python kd/train.py -m alpha=0,0.25,0.5,0.75,1.0 aug=none,fc,fcra data=digits" in help_text  # quickstart
    assert "aug=none,fc,fcra seed=0,1,2 hydra.sweep.dir=" in help_text  # the paper's grid, in a named sweep dir
    assert "kd-report multirun/" in help_text and "README.md" in help_text


def test_help_describes_every_config_group_with_all_its_options_and_every_launcher_preset(help_text):
    section = help_text.split("Config groups")[1].split("Top-level keys")[0]
    # a group's description: its line and the more indented lines under it
    described = dict(re.findall(r"^  (\w+) {2,}(\S.*(?:\n {4,}\S.*)*)", section, re.M))
    groups = sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir() and p.name != "hydra")
    assert sorted(described) == groups
    for group in groups:
        options = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
        assert all(re.search(rf"\b{option}\b", described[group]) for option in options), (group, options)
    presets = sorted([p.stem for p in (REPO / "launchers" / "hydra" / "launcher").glob("*.yaml")] + ["basic"])
    listed = re.findall(r"^  (\w+) {2,}\S", help_text.split("Launcher presets")[1], re.M)
    assert sorted(listed) == presets
    top_level = help_text.split("Top-level keys")[1].split("Launcher presets")[0]
    assert all(stage.value in top_level for stage in Stage)


def test_cfg_job_resolve_shows_the_config_with_its_output_dir(tmp_path):
    proc = run_cli(["--cfg", "job", "--resolve", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"out_dir: {tmp_path / 'run'}" in proc.stdout.splitlines()
    assert not (tmp_path / "run").exists()  # showing the config runs nothing


def test_every_kd_report_option_has_help():
    actions = [a for a in build_parser()._actions if a.dest != "help"]
    assert {a.dest for a in actions} >= {"sweep_dir", "alpha", "metric", "wandb", "entity"}
    assert all(a.help for a in actions)
