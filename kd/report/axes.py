"""A sweep's dimensions beyond the table's own (aug, alpha, seed): every other swept key is one.

A cell's swept keys are its defining overrides (kd/runs/overrides.py). A key whose value differs between
the sweep's students (`pair`, `loss`, `loss.beta`, `model`, `data.train_size`, ...) splits the report into one table per combination of its values: two
betas are two tables, never a 2-seed interval. Cells that still collide (same aug, alpha and seed in
one table) are refused by kd/report/table.py instead of being pooled.
"""
from __future__ import annotations

from typing import Any

from kd.runs.overrides import TABLE_KEYS

DEFAULT = "(default)"  # a key that a cell does not override (a grid extended with a new key)


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
