"""A cell's defining overrides as Hydra saved them, and the keys a sweep varies.

A cell's swept keys are its overrides as Hydra saved them (<job dir>/.hydra/overrides.yaml, the keys that
define it); the sweep's are in its multirun.yaml. results.json records them, and the report splits its
tables by them (kd/report/axes.py).
"""
from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from kd.runs.sweep_dir import defines_cell, grid_axes

TABLE_KEYS = ("aug", "alpha", "seed")  # the table's rows, columns and the seeds of its intervals


def cell_overrides(job_dir: Path) -> dict[str, str]:
    """{key: value as typed} of a job's defining overrides; {} for a job without Hydra's record."""
    path = Path(job_dir) / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return {}
    return parse_overrides(list(OmegaConf.load(path)))


def swept_values(sweep_dir: Path) -> dict[str, list[str]]:
    """{key: its values in the order typed} of a multirun (its multirun.yaml, saved before any job runs); {}
    outside one."""
    path = Path(sweep_dir) / "multirun.yaml"
    if not path.is_file():
        return {}
    return {k.lstrip("+~"): values for k, values in grid_axes(OmegaConf.load(path).hydra.overrides.task).items()}


def swept_keys(sweep_dir: Path) -> set[str]:
    """The keys a multirun sweeps over several values; none outside one."""
    return {k for k, values in swept_values(sweep_dir).items() if len(values) > 1}


def parse_overrides(overrides: list[str]) -> dict[str, str]:
    """`["alpha=0.5", "pair=vgg13-vgg8"]` -> {"alpha": "0.5", "pair": "vgg13-vgg8"}, defining keys only. A group
    placed at a package keeps it (`aug@loss.strong_view=fcta`: MLKD's strong view), apart from `aug` itself."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    return {o.get_key_element().lstrip("+~"): o.get_value_element_as_str() for o in parsed
            if defines_cell(o.key_or_group)}
