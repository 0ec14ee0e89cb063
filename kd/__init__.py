"""kd: Hydra-configured sweeps for knowledge distillation x data augmentation.

The rooms of the package and what flows between them: docs/architecture.md.

OpenMP's wait policy is left as PyTorch ships it on a free machine (idle threads spin briefly): a job alone runs
fastest so, 1.2-1.8x faster than with sleeping threads (benchmarks/README.md). Where kd itself runs several jobs
on one machine it gives each its share of the cores instead; on a machine other work already loads, kd/train.py
makes idle threads sleep before torch loads (kd/training/cpu.py), unless OMP_WAIT_POLICY is set.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from types import ModuleType
from typing import Optional, Sequence

# The modules that moved into rooms (docs/architecture.md) on 2026-12-06, by their old names. The old names keep
# importing the moved module (the same module object, with a FutureWarning) for one release, `python -m
# kd.submit` included, so that a user's imports, `_target_`s and scripts keep working; they go in the release after.
# FutureWarning, not DeprecationWarning: Python's default filters hide a DeprecationWarning raised in a user's own
# module (only __main__'s show), and these renames are meant for users, not for kd's developers.
MOVED = {
    **{f"kd.{m}": f"kd.data.{m}" for m in ("augment", "augment_ladder", "image_folder", "pipeline")},
    **{f"kd.{m}": f"kd.training.{m}" for m in ("engine", "students", "stacking", "capture", "device", "cpu",
                                               "progress", "diagnostics", "teacher", "published_teachers",
                                               "teacher_views")},
    **{f"kd.{m}": f"kd.runs.{m}" for m in ("job", "checks", "locking", "packs", "provenance", "results", "submit",
                                           "sweep_dir", "targets")},
    "kd.sweep": "kd.report.grid_table",
    "kd.losses": "kd.distillers.kd",
}


def warn_moved(old: str) -> None:
    """The one warning an old module name gives, on import and under `python -m`."""
    warnings.warn(f"{old} moved to {MOVED[old]}; the old name goes in the next release", FutureWarning, stacklevel=3)


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports an old module name as its new module: one module object under both names."""

    def find_spec(self, name: str, path: Optional[Sequence[str]] = None, target: Optional[ModuleType] = None):
        if name not in MOVED:
            return None
        new = importlib.util.find_spec(MOVED[name])
        return importlib.util.spec_from_loader(name, self, origin=new.origin if new is not None else None)

    def create_module(self, spec) -> ModuleType:
        warn_moved(spec.name)
        return importlib.import_module(MOVED[spec.name])

    def exec_module(self, module: ModuleType) -> None:
        pass  # the new module ran when it was imported

    def get_code(self, name: str):
        """For `python -m <old name>`: runpy runs the new module's code as __main__."""
        warn_moved(name)
        return importlib.util.find_spec(MOVED[name]).loader.get_code(MOVED[name])


sys.meta_path.append(_MovedModules())
