"""A sweep dir's layout and when a new multirun may reuse it.

Each cell's dir is named by its overrides (`alpha=0.5,aug=fc`), not by its position in the grid,
so a value added to a grid gets a dir of its own and every finished cell keeps its dir. A rerun
into an existing sweep dir may therefore only grow it: the same overrides, each key keeping at
least the values it had. Anything else (another lr, a value dropped, a key added) is refused
before Hydra writes a byte, naming the keys that differ.
"""
from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path
from typing import Any, Optional, Sequence

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from kd.config import NON_DEFINING_KEYS
from kd.runs.rank import is_writer
from kd.runs.search import is_search

CELL_DIR_RESOLVER = "kd.cell_dir"
SWEEP_ID_FILE = ".sweep_id"  # in the sweep dir: which sweep this is, beside where it lies (W&B's group)
SUBMITTED_FILE = "submitted.json"  # in the sweep dir: what a detached launch submitted (kd/runs/submit.py reads it)
MAX_CELL_NAME = 160  # bytes: a cell dir name stays readable and far below the 255 of a path component  # conf/config.yaml: hydra.sweep.subdir: ${kd.cell_dir:...}


def defines_cell(key: str) -> bool:
    """False for the keys that say where things live or how they are tracked (see NON_DEFINING_KEYS)."""
    return not any(key == k or key.startswith(k + ".") for k in NON_DEFINING_KEYS)


def cell_dir_name(task_overrides: Sequence[str], job_num: int, sweep_dir: Optional[str] = None) -> str:
    """`alpha=0.5,aug=fc`: the cell's overrides, sorted, without the keys that do not define it; past
    MAX_CELL_NAME bytes, the first of them and a digest of all.

    Hydra's own `${hydra.job.override_dirname}` keeps a path's `/` (nested dirs) and every
    non-defining key (data.root, logger, ...) unless each is listed; a job without overrides
    gets its number instead of the sweep dir itself. A boolean is named as typed (`true`), not as Hydra's
    sweeper rewrites it (`True`); a sweep made before that keeps its `True` dirs (given `sweep_dir`).
    """
    parsed = OverridesParser.create().parse_overrides(list(task_overrides))
    name = _name_of([_as_typed(o) for o in parsed if defines_cell(o.key_or_group)])
    if sweep_dir is not None and not (Path(sweep_dir) / name).exists():
        legacy = _name_of([o.input_line for o in parsed if defines_cell(o.key_or_group)])
        if (Path(sweep_dir) / legacy).exists():
            return legacy
    return name or str(job_num)


def _as_typed(override: Override) -> str:
    """An override as a user types it: Hydra's sweeper turns `x=true` into `x=True`; YAML and kd write `true`."""
    value = None if override.is_sweep_override() else override.value()
    if isinstance(value, bool):
        return f"{override.input_line.split('=', 1)[0]}={str(value).lower()}"
    return override.input_line


def _name_of(overrides: list[str]) -> str:
    name = ",".join(sorted(overrides)).replace("/", "%2F")
    if len(name.encode()) <= MAX_CELL_NAME:
        return name
    # Too long for one path component (255 bytes on most file systems): as many whole overrides as fit, then a
    # digest of all of them, stable across reruns. The full overrides stay in the cell's .hydra/overrides.yaml.
    digest = "+" + hashlib.sha256(name.encode()).hexdigest()[:12]
    shown = ""
    for override in name.split(","):
        candidate = f"{shown},{override}" if shown else override
        if len(candidate.encode()) + len(digest) > MAX_CELL_NAME:
            break
        shown = candidate
    return shown + digest


def sweep_id(sweep_dir: Path) -> str:
    """The sweep dir's short random id, made once by the first to need it (the submit host, RecordSweepId;
    else the first job) and then only read: a rerun into the dir keeps it, a deleted and re-created dir gets
    a new one. Written whole under a private name and hard-linked into place, so no reader sees it half written
    and of two racing jobs one wins."""
    path = Path(sweep_dir) / SWEEP_ID_FILE
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        draft = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        draft.write_text(secrets.token_hex(4))
        try:
            os.link(draft, path)
        except FileExistsError:
            pass
        finally:
            draft.unlink()
    return path.read_text().strip()


class RecordSweepId(Callback):
    """Make the sweep's id on the host that starts the multirun, before any job, once the other callbacks have
    accepted the sweep (a refused multirun writes nothing). A search's sweeper saves no multirun.yaml, as the grid's
    does: it is saved here, so that a rerun into the sweep dir that would change its study is refused too."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        HydraConfig.instance().set_config(config)  # as Hydra does next: the dir may use ${hydra:job.name}
        sweep_dir = Path(str(config.hydra.sweep.dir))
        sweep_id(sweep_dir)
        if is_search(config.hydra) and not (sweep_dir / "multirun.yaml").is_file():
            OmegaConf.save(config, sweep_dir / "multirun.yaml")


def register_resolvers() -> None:
    if not OmegaConf.has_resolver(CELL_DIR_RESOLVER):
        OmegaConf.register_new_resolver(CELL_DIR_RESOLVER, cell_dir_name)


def grid_axes(task_overrides: Sequence[str]) -> dict[str, list[str]]:
    """Each defining key of a multirun's overrides with its values as typed (`alpha=0,0.5`: ['0', '0.5'])."""
    axes = {}
    for o in OverridesParser.create().parse_overrides(list(task_overrides)):
        if defines_cell(o.key_or_group):
            if o.is_interval_sweep():  # a search's space (`interval(0,1)`): kept as typed
                values = [o.input_line.split("=", 1)[1]]
            elif o.is_sweep_override():
                values = list(o.sweep_string_iterator())
            else:
                values = [o.get_value_element_as_str()]
            axes[o.get_key_element()] = values
    return axes


def flat_keys(node: Any, prefix: str = "") -> dict[str, Any]:
    """A nested dict as {"a.b.c": value}."""
    if not isinstance(node, dict):
        return {prefix: node}
    out: dict[str, Any] = {}
    for key, value in node.items():
        out.update(flat_keys(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _body(cfg: DictConfig, skipped: set[str]) -> dict[str, Any]:
    """The config as written (interpolations unresolved), flat, minus Hydra's part and the skipped key paths."""
    flat = flat_keys(OmegaConf.to_container(cfg, resolve=False, enum_to_str=True))
    return {k: v for k, v in flat.items() if k.split(".")[0] != "hydra" and defines_cell(k) and
            not any(k == s or k.startswith(s + ".") for s in skipped)}


def _values(values: Optional[list[str]]) -> str:
    return "(not set)" if values is None else "[" + ", ".join(values) + "]"


def sweep_changes(old: DictConfig, new: DictConfig) -> list[str]:
    """How `new` (a multirun's config) fails to extend the sweep that saved `old` (its multirun.yaml); [] if it does."""
    old_axes, new_axes = grid_axes(old.hydra.overrides.task), grid_axes(new.hydra.overrides.task)
    changes = [f"{key}: sweep has {_values(old_axes.get(key))}, this run asks {_values(new_axes.get(key))}"
               for key in sorted(old_axes.keys() | new_axes.keys())
               if key not in old_axes or key not in new_axes or not set(old_axes[key]) <= set(new_axes[key])]
    old_subdir, new_subdir = (OmegaConf.to_container(c.hydra.sweep, resolve=False)["subdir"] for c in (old, new))
    if old_subdir != new_subdir:
        changes.append(f"hydra.sweep.subdir: sweep has {old_subdir}, this run asks {new_subdir}")
    # A grid key's value in the multirun's config is not any cell's: compare the rest (edited YAMLs, defaults).
    grid = {key.lstrip("+~").replace("/", ".") for key in old_axes.keys() | new_axes.keys()}
    old_body, new_body = _body(old, grid), _body(new, grid)
    changes += [f"{key}: sweep has {old_body.get(key, '(not set)')}, this run has {new_body.get(key, '(not set)')}"
                for key in sorted(old_body.keys() | new_body.keys()) if old_body.get(key) != new_body.get(key)]
    return changes


class RefuseChangedSweep(Callback):
    """Refuse a multirun into a sweep dir that it would not just extend, before anything is written.

    Runs before Hydra's sweeper saves multirun.yaml and before any job dir is set up. Hydra turns a
    callback's exceptions into warnings, so this stops the run with SystemExit.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        HydraConfig.instance().set_config(config)  # as Hydra does next: the dir may use ${hydra:job.name}
        sweep_dir = Path(str(config.hydra.sweep.dir))
        saved = sweep_dir / "multirun.yaml"
        if not saved.is_file() or not is_writer():  # under torchrun rank 0 decides: another
            return  # rank could read the multirun.yaml rank 0 is writing
        changes = sweep_changes(OmegaConf.load(saved), config)
        if changes:
            grow = ("a search's hydra.sweeper.n_trials may grow: its study continues" if is_search(config.hydra) else
                    "add values to its grid's keys (alpha=0,0.5 -> alpha=0,0.5,1: only the new cells run)")
            raise SystemExit(
                f"Error: hydra.sweep.dir={sweep_dir} holds a sweep that this run would change, not extend:\n"
                + "".join(f"  {change}\n" for change in changes)
                + "Nothing was written. Into an existing sweep dir, rerun its overrides unchanged (completed cells "
                  f"are skipped, unfinished ones resume) or {grow}. For anything else, use a new hydra.sweep.dir.")
