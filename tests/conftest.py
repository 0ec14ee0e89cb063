"""Shared test helpers: compose the real config, run the real CLI, isolate caches per test."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

import kd.train  # noqa: F401  (registers the config schemas)

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"
TRAIN_SCRIPT = REPO / "kd" / "train.py"

# Tiny but real: digits at 8x8 and one epoch keeps a grid cell to about a second on 2 CPU cores. The
# teacher has its own recipe: one epoch of it too, and a smoke test says it accepts a weak teacher.
FAST_TEACHER = ["teacher.epochs=1", "teacher.min_top1=0"]
FAST = ["data=digits", "data.image_size=8", "trainer.epochs=1", "logger=none", *FAST_TEACHER]


def compose_config(overrides: list[str], out_dir: Path | str | None = None) -> DictConfig:
    """The config Hydra would build for `python kd/train.py <overrides>`."""
    extra = [f"out_dir={out_dir}"] if out_dir is not None else []
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        return compose("config", overrides=[*overrides, *extra])


def run_cli(args: list[str], cwd: Path, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run `python kd/train.py <args>` as a user would, from `cwd`."""
    return subprocess.run([sys.executable, str(TRAIN_SCRIPT), *args], cwd=cwd, env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


def cell_dir(sweep_dir: Path, args: list[str], *chosen: str) -> Path:
    """The job dir that `kd/train.py -m <args>` gives the cell with the `chosen` values of its swept keys.

    Job dirs are named by the cell's overrides (kd/runs/sweep_dir.py), so it is known before the cell runs;
    the cells' overrides are expanded by Hydra's own sweeper (which writes `true` as `True`; kd names it `true`).
    """
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from kd.runs.sweep_dir import cell_dir_name

    overrides = [a for a in [*args, *chosen] if "=" in a and not a.startswith(("-", "hydra"))]
    (cells,) = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(overrides), None)
    (cell,) = [c for c in cells if set(chosen) <= set(c)]
    return sweep_dir / cell_dir_name(cell, 0)


@pytest.fixture(autouse=True)
def isolated_kd_home(tmp_path_factory, monkeypatch):
    """Each test gets its own teacher cache and data dir, and W&B never reaches a server."""
    home = tmp_path_factory.mktemp("kd_home")
    monkeypatch.setenv("KD_HOME", str(home))
    monkeypatch.setenv("KD_DATA_DIR", str(home / "data"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    return home
