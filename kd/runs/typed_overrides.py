"""The overrides a user typed, checked before Hydra composes anything: a misspelt key or option is named once,
with kd's "did you mean", instead of Hydra's advice to add it with `+` (which kd's strict schema then refuses)
or a list of options and search paths repeated for every cell of the grid.
"""
from __future__ import annotations

import dataclasses
import difflib
import typing
from pathlib import Path
from typing import Optional

from kd.config import Config
from kd.paths import CONF_DIR, LAUNCHERS_DIR


class TypedOverrideError(ValueError):
    """An override that names no setting or no option of kd's."""


def _did_you_mean(word: str, choices: list[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {prefix}{close[0]}?)" if close else ""


def group_options(group: str, config_dirs: list[Path]) -> Optional[list[str]]:
    """The options of a config group (conf/<group>/*.yaml, and those of --config-dir); None if it is no group."""
    dirs = [d / group for d in [CONF_DIR, LAUNCHERS_DIR, *config_dirs] if (d / group).is_dir()]
    return sorted({p.stem for d in dirs for p in d.glob("*.yaml")}) if dirs else None


def check_key(key: str) -> None:
    """Walk a dotted key through kd's schema (kd/config.py) as far as it is strict (dataclass nodes)."""
    schema, prefix = Config, ""
    for part in key.split("."):
        names = [f.name for f in dataclasses.fields(schema)]
        if part not in names:
            raise TypedOverrideError(f"{prefix}{part} is not a setting kd knows{_did_you_mean(part, names, prefix)}; "
                                     f"{prefix.rstrip('.') or 'the config'} takes {', '.join(names)}")
        field_type = typing.get_type_hints(schema)[part]
        if not dataclasses.is_dataclass(field_type):  # a `_target_` node (model, aug, loss, ...): its own keys
            return
        schema, prefix = field_type, f"{prefix}{part}."


def check_typed_overrides(overrides: list[str], config_dirs: list[Path]) -> None:
    """Raise TypedOverrideError for the first override that names no key of kd's schema, or no option of a group.

    Keys added with `+`/`++` or deleted with `~` are left to Hydra and kd's later check; so are hydra.* keys, and
    top-level keys where a --config-dir may bring groups of its own."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:  # Hydra's own parser error names the override better than we could
        return
    top_level = [f.name for f in dataclasses.fields(Config)]
    for o in parsed:
        key = o.key_or_group
        if o.is_add() or o.is_force_add() or o.is_delete() or key.startswith("hydra") or "/" in key:
            continue
        options = group_options(key, config_dirs)
        if options is not None:
            try:
                values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.get_value_element_as_str()]
            except Exception:  # glob(...) and other sweeps over options: Hydra expands and checks them
                continue
            for value in values:
                if value not in options and value != "null":
                    raise TypedOverrideError(f"{key}={value}: no such option{_did_you_mean(value, options)}; "
                                             f"{key} takes {', '.join(options)}")
            continue
        if "." not in key and key not in top_level and config_dirs:
            continue  # perhaps a group of the user's --config-dir
        check_key(key)
