"""A sweep's dimensions: a table's rows (`row_axis`), its columns (alpha), its intervals (seed), and the other
swept keys, each combination of whose values is a table of its own.

A cell's swept keys are its defining overrides (kd/runs/overrides.py). The rows are aug where the sweep varies it
(the paper's table); in a sweep that keeps one aug they are its first other swept key as typed (`loss=kd,dkd,fsp`:
one table comparing the losses). A further key whose value differs between the sweep's students (`pair`, `loss.beta`,
`model`, `data.train_size`, ...) splits the report into one table per combination of its values: two betas are two
tables, never a 2-seed interval. Cells that still collide (same row, alpha and seed in one table) are refused by
kd/report/table.py instead of being pooled.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from kd.runs.overrides import TABLE_KEYS, swept_values

DEFAULT = "(default)"  # a key that a cell does not override (a grid extended with a new key)


def other_axes(students: list[dict[str, Any]], exclude: tuple[str, ...] = ()) -> list[str]:
    """The swept keys besides aug, alpha, seed and `exclude` whose value differs between the students, sorted."""
    keys = {k for r in students for k in r.get("overrides", {}) if k not in (*TABLE_KEYS, *exclude, "stage")}
    return sorted(k for k in keys if len({r.get("overrides", {}).get(k, DEFAULT) for r in students}) > 1)


def row_axis(students: list[dict[str, Any]]) -> str:
    """The key whose values are a table's rows: aug, unless the sweep keeps one aug and varies another key (the
    first of them as typed, then by name)."""
    if len({r["aug"] for r in students}) > 1:
        return "aug"
    others = other_axes(students)
    typed = list(typed_order(students))
    return min(others, key=lambda k: (typed.index(k) if k in typed else len(typed), k), default="aug")


def row_value(result: dict[str, Any], row: str) -> str:
    """A cell's row in a table whose rows are `row` (row_axis)."""
    return result["aug"] if row == "aug" else result.get("overrides", {}).get(row, DEFAULT)


def split_by_axes(students: list[dict[str, Any]], exclude: tuple[str, ...] = ()
                  ) -> list[tuple[str, list[dict[str, Any]]]]:
    """[(label, students)] per combination of the other axes' values (but `exclude`'s), in the order typed;
    one ("", all) when there is no other axis. A label reads `loss=dkd pair=vgg13-vgg8`."""
    axes = other_axes(students, exclude)
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in students:
        groups.setdefault(axis_label(r, axes), []).append(r)
    typed = typed_order(students)

    def position(part: list[dict[str, Any]]) -> tuple[int, ...]:  # values as typed first, the others after
        values = axis_values(part[0], axes)
        return tuple(typed[k].index(values[k]) if values[k] in typed.get(k, []) else len(typed.get(k, []))
                     for k in axes)

    return sorted(groups.items(), key=lambda item: position(item[1]))  # stable: first seen among equals


def typed_order(students: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Each swept key's values in the order the sweeps' commands typed them (`loss=kd,dkd,fitnet`)."""
    order: dict[str, list[str]] = {}
    for sweep_dir in dict.fromkeys(Path(r["job_dir"]).parent for r in students if "job_dir" in r):
        for key, values in swept_values(sweep_dir).items():
            order.setdefault(key, []).extend(v for v in values if v not in order[key])
    return order


def axis_label(result: dict[str, Any], axes: list[str]) -> str:
    return " ".join(f"{k}={result.get('overrides', {}).get(k, DEFAULT)}" for k in axes)


def axis_values(result: dict[str, Any], axes: list[str]) -> dict[str, str]:
    return {k: result.get("overrides", {}).get(k, DEFAULT) for k in axes}
