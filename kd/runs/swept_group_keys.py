"""A key of a config group that the same multirun sweeps: `-m loss=ab,ft loss.first_stage_epochs=2`.

Hydra composes a multirun's master config (the one its callbacks and launcher see) with every sweep override
left out, so `loss=ab,ft` is not applied there while `loss.first_stage_epochs=2` is: it lands on the default
loss (kd), which has no such key, and Hydra fails with "Could not override ... use +loss.first_stage_epochs=2",
a `+` that kd's strict schema then refuses. Each job composes its own loss first and would take the key.

So, before Hydra runs: a key that every swept option has is passed as a one-value sweep
(`loss.first_stage_epochs=choice(2)`), which the master config leaves out too and each job applies as the
plain `loss.first_stage_epochs=2` (its dir name and overrides.yaml are the typed ones); a key that only some of
the swept options have is refused, naming them, since applying it to some cells only would be a silent fallback.
"""
from __future__ import annotations

from typing import Any, Optional

from kd.paths import CONF_DIR
from kd.runs.typed_overrides import TypedOverrideError, group_options


def _parse(overrides: list[str]) -> list[Any]:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        return OverridesParser.create().parse_overrides(overrides)
    except Exception:  # Hydra's own parser error names the override better than we could
        return []


def swept_groups(parsed: list[Any]) -> dict[str, list[str]]:
    """{group: its options} of each config group of kd's conf/ that the command sweeps (`loss=ab,ft`)."""
    groups = {}
    for o in parsed:
        if o.is_sweep_override() and not o.is_delete() and group_options(o.key_or_group, []) is not None:
            try:
                groups[o.key_or_group] = list(o.sweep_string_iterator())
            except Exception:  # glob(...) and other sweeps over options: Hydra expands and checks them
                continue
    return groups


def _takes(compose: Any, group: str, option: str, key: str) -> Optional[bool]:
    """Whether `group=option` has `key`; None for an option kd's conf/ does not hold (a --config-dir's: Hydra checks it)."""
    from hydra.errors import HydraException
    from omegaconf import OmegaConf

    try:
        return OmegaConf.select(compose(config_name=f"{group}/{option}"), key, default=None) is not None
    except HydraException:
        return None


def one_value_sweeps(overrides: list[str]) -> list[str]:
    """`overrides` with each plain `group.key=value` under a swept group that the master config's own option of
    that group lacks made `group.key=choice(value)`; TypedOverrideError for a key that some swept options lack."""
    parsed = _parse(overrides)
    groups = swept_groups(parsed)
    under = {i: g for i, o in enumerate(parsed) for g in groups
             if o.key_or_group.startswith(g + ".") and not (o.is_add() or o.is_force_add() or o.is_delete())}
    if not under:
        return overrides
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    rewritten = list(overrides)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        plain = [o.input_line for o in parsed if not o.is_sweep_override() and not any(
            o.key_or_group.startswith(g + ".") for g in groups)]
        try:  # the options the master config composes with
            choices = compose(config_name="config", overrides=plain, return_hydra_config=True).hydra.runtime.choices
        except HydraException:  # a bad override elsewhere, or a --config-dir's group: Hydra names it
            return overrides
        for i, group in under.items():
            key = parsed[i].key_or_group
            takes = {opt: _takes(compose, group, opt, key) for opt in groups[group]}
            if None in takes.values():
                continue
            taking = [opt for opt, t in takes.items() if t]
            lacking = [opt for opt, t in takes.items() if not t]
            if lacking:
                raise TypedOverrideError(
                    f"{key} is a key of {group}={', '.join(taking) or '(none of them)'}; not of "
                    f"{group}={', '.join(lacking)}, which this multirun also sweeps. Every cell of a grid takes its "
                    f"overrides: sweep {group}={','.join(lacking)} in a multirun of its own (or drop {key})")
            if not parsed[i].is_sweep_override() and _takes(compose, group, choices[group], key) is False:
                rewritten[i] = f"{key}=choice({parsed[i].input_line.split('=', 1)[1]})"
    return rewritten
