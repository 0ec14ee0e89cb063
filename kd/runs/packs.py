"""Which cells of a sweep train together: those that differ only in the loss's settings.

Such cells draw the same data stream and start from the same weights (see kd/training/engine.py), so one
process can train them side by side on one augmented batch and one teacher forward per step. A distiller's
first stage (kd/distillers/base.py) draws epochs of that stream before the main ones, so only cells with equal
first stages pack together, and only cells that run the teacher alike (its BatchNorms on batch statistics or
in eval mode: a loss's teacher_batch_stats, kd/distillers/ofd.py), as they share its forward.
"""
from __future__ import annotations

import json
from typing import Sequence

from omegaconf import DictConfig, OmegaConf

from kd.config import defining_config

PACK_FREE_KEYS = ("alpha", "loss")  # what the cells of one pack may differ in, and what their teacher sees:
PACK_FREE_TRAINER_KEYS = ("teacher_view",)  # each kind of view is drawn once per step (kd/training/teacher_views.py)
UNRESOLVED_KEYS = ("hydra", "out_dir")  # per-job values that are not known before the job starts


def pack_key(cfg: DictConfig) -> str:
    """Cells with equal keys form one pack."""
    kept = [key for key in cfg if key not in PACK_FREE_KEYS + UNRESOLVED_KEYS]
    # The whole data node, paths included: a job may resume from a moved copy of its data (data.root is not
    # defining), but cells reading two folders cannot share one data stream.
    data = OmegaConf.to_container(cfg.data, resolve=True)
    shared = defining_config(OmegaConf.masked_copy(cfg, kept))
    for key in PACK_FREE_TRAINER_KEYS:
        shared.get("trainer", {}).pop(key, None)
    return json.dumps({**shared, "data": data, "first_stage_epochs": first_stage_epochs(cfg),
                       "teacher_batch_stats": teacher_batch_stats(cfg)}, sort_keys=True)


def first_stage_epochs(cfg: DictConfig) -> int:
    """The epochs of the cell's first stage: its loss's first_stage_epochs, run only where alpha > 0 (a loss
    without the key has none; kd.training.students.pack_first_stage refuses a pack that this got wrong)."""
    if float(cfg.alpha) == 0.0 or "first_stage_epochs" not in cfg.loss:
        return 0
    return int(cfg.loss.first_stage_epochs)


def teacher_batch_stats(cfg: DictConfig) -> bool:
    """Whether the cell runs the teacher on batch statistics: its loss's teacher_batch_stats where alpha > 0 (a loss
    without the key runs it in eval mode; kd.training.students.pack_teacher_batch_stats refuses a pack that this got
    wrong)."""
    return float(cfg.alpha) > 0.0 and "teacher_batch_stats" in cfg.loss and bool(cfg.loss.teacher_batch_stats)


def group_packs(cfgs: Sequence[DictConfig]) -> list[list[int]]:
    """The indices of `cfgs` grouped into packs, in the order the sweep lists them."""
    packs: dict[str, list[int]] = {}
    for i, cfg in enumerate(cfgs):
        packs.setdefault(pack_key(cfg), []).append(i)
    return list(packs.values())
