"""A sweep's dimensions beyond the table's own (aug, alpha, seed): every other swept key is one.

A cell's swept keys are its overrides as Hydra saved them (<job dir>/.hydra/overrides.yaml, the keys
that define it). A key whose value differs between the sweep's students (`pair`, `loss`, `loss.beta`,
`model`, `data.train_size`, ...) splits the report into one table per combination of its values: two
betas are two tables, never a 2-seed interval. Cells that still collide (same aug, alpha and seed in
one table) are refused by kd/report/table.py instead of being pooled.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

TABLE_KEYS = ("aug", "alpha", "seed")  # the table's rows, columns and the seeds of its intervals
DEFAULT = "(default)"  # a key that a cell does not override (a grid extended with a new key)


def cell_overrides(job_dir: Path) -> dict[str, str]:
    """{key: value as typed} of a job's defining overrides; {} for a job without Hydra's record."""
    path = Path(job_dir) / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return {}
    return parse_overrides(list(OmegaConf.load(path)))


def swept_keys(sweep_dir: Path) -> set[str]:
    """The keys a multirun sweeps over several values (its multirun.yaml, saved before any job runs); none outside one."""
    path = Path(sweep_dir) / "multirun.yaml"
    if not path.is_file():
        return set()
    from kd.sweep_dir import grid_axes

    return {k.lstrip("+~") for k, values in grid_axes(OmegaConf.load(path).hydra.overrides.task).items()
            if len(values) > 1}


def parse_overrides(overrides: list[str]) -> dict[str, str]:
    """`["alpha=0.5", "pair=vgg13-vgg8"]` -> {"alpha": "0.5", "pair": "vgg13-vgg8"}, defining keys only."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from kd.sweep_dir import defines_cell

    parsed = OverridesParser.create().parse_overrides(overrides)
    return {o.key_or_group.lstrip("+~"): o.get_value_element_as_str() for o in parsed if defines_cell(o.key_or_group)}


def other_axes(students: list[dict[str, Any]], exclude: tuple[str, ...] = ()) -> list[str]:
    """The swept keys besides aug, alpha, seed and `exclude` whose value differs between the students, sorted."""
    keys = {k for r in students for k in r.get("overrides", {}) if k not in (*TABLE_KEYS, *exclude, "stage")}
    return sorted(k for k in keys if len({r.get("overrides", {}).get(k, DEFAULT) for r in students}) > 1)


def split_by_axes(students: list[dict[str, Any]], exclude: tuple[str, ...] = ()
                  ) -> list[tuple[str, list[dict[str, Any]]]]:
    """[(label, students)] per combination of the other axes' values (but `exclude`'s), in the sweep's order;
    one ("", all) when there is no other axis. A label reads `loss=dkd pair=vgg13-vgg8`."""
    axes = other_axes(students, exclude)
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in students:
        groups.setdefault(axis_label(r, axes), []).append(r)
    return list(groups.items())


def axis_label(result: dict[str, Any], axes: list[str]) -> str:
    return " ".join(f"{k}={result.get('overrides', {}).get(k, DEFAULT)}" for k in axes)


def axis_values(result: dict[str, Any], axes: list[str]) -> dict[str, str]:
    return {k: result.get("overrides", {}).get(k, DEFAULT) for k in axes}
