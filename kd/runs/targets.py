"""Check every `_target_` of a job's config before any work: importable, and takes the keys given.

kd's own options are typo-checked by their schemas when Hydra composes the config; an option a
user adds with just a file and a YAML has no schema, so its keys are checked here against the
signature of its `_target_`, instead of failing when it is first built, possibly after the teacher
has trained for hours.
"""
from __future__ import annotations

import inspect

from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf

# The config nodes that kd builds with hydra.utils.instantiate.
BUILT_NODES = ("model", "teacher.arch", "aug", "teacher.aug", "loss", "teacher.loss", "optim.optimizer",
               "optim.scheduler", "teacher.optim.optimizer", "teacher.optim.scheduler", "logger", "data")


class ConfigTargetError(ValueError):
    """A `_target_` that cannot be imported, or a key its callable does not take."""


def check_targets(cfg: DictConfig) -> None:
    """Raise ConfigTargetError naming the key and the fix for the first bad node in BUILT_NODES."""
    for key in BUILT_NODES:
        node = OmegaConf.select(cfg, key)
        if node is None or "_target_" not in node:
            continue
        check_target(key, node)


def check_target(key: str, node: DictConfig) -> None:
    target = node._target_
    try:
        fn = get_object(target)
    except Exception as err:  # Hydra wraps ImportError/AttributeError in its own exception types
        raise ConfigTargetError(
            f"{key}._target_={target} cannot be imported ({_first_line(err)}). Check the name in the "
            f"YAML of this {key.split('.')[-1]} option, and that its module is on PYTHONPATH."
        ) from None
    params = [k for k in node if not str(k).startswith("_")]
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # some builtins have no signature: nothing to check against
        return
    try:
        signature.bind_partial(**{k: None for k in params})
    except TypeError:
        takes = [p.name for p in signature.parameters.values()
                 if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        unknown = [k for k in params if k not in takes]
        raise ConfigTargetError(
            f"{key}: {target} takes no parameter {', '.join(repr(k) for k in unknown)} "
            f"(it takes: {', '.join(takes)}). Fix the key in the override or in the option's YAML."
        ) from None


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]
