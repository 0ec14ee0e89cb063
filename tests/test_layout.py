"""kd's layout (docs/architecture.md): rooms stacked in one order, every import pointing down or within its room.

Parsed from the source (every `import`, function-level ones included), so that a new import that climbs a room
fails here with its file and line, before the layout decays into circles again.
"""
from __future__ import annotations

import ast
import os
import warnings
from pathlib import Path

import pytest

from kd import MOVED
from conftest import compose_config

ROOT = Path(__file__).resolve().parents[1]
# Lowest first: a room may import its own modules and those of the rooms before it, never one after it.
ROOMS = [
    ("foundation", ("kd.config", "kd.paths", "kd.checkpoint")),
    ("models", ("kd.models",)),
    ("distillers", ("kd.distillers",)),
    ("data", ("kd.data",)),
    ("training", ("kd.training",)),
    ("runs", ("kd.runs",)),
    ("tracking", ("kd.tracking",)),
    ("report", ("kd.report",)),
    ("entry points", ("kd.train", "hydra_plugins.kd_launcher")),
]
RANK = {prefix: (rank, name) for rank, (name, prefixes) in enumerate(ROOMS) for prefix in prefixes}
FOUNDATION_FILES = {"__init__.py", "config.py", "paths.py", "checkpoint.py", "train.py"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def room_of(module: str) -> tuple[int, str] | None:
    """The room of a kd module, by its longest matching prefix; None for `kd` itself and non-kd modules."""
    matches = [p for p in RANK if module == p or module.startswith(p + ".")]
    return RANK[max(matches, key=len)] if matches else None


def is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imported_modules(source: str) -> list[tuple[int, str]]:
    """(line, module) of every absolute import in `source` (kd uses no relative ones); `from kd.x import y` counts
    as kd.x.y where that is a module of its own."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"line {node.lineno}: a relative import"
            found += [(node.lineno, f"{node.module}.{a.name}" if is_module(f"{node.module}.{a.name}") else node.module)
                      for a in node.names]
    return found


def upward_imports(path: Path, source: str | None = None) -> list[str]:
    module = module_name(path)
    own = room_of(module)
    if own is None:
        return []
    problems = []
    for line, imported in imported_modules(path.read_text() if source is None else source):
        theirs = room_of(imported)
        if theirs is not None and theirs[0] > own[0]:
            problems.append(f"{path.relative_to(ROOT)}:{line} imports {imported}: the {own[1]} room may not import "
                            f"the {theirs[1]} room, which sits above it (docs/architecture.md)")
    return problems


def python_files() -> list[Path]:
    return sorted([*(ROOT / "kd").rglob("*.py"), *(ROOT / "hydra_plugins" / "kd_launcher").rglob("*.py")])


def test_every_import_points_down_or_within_its_room():
    problems = [p for path in python_files() for p in upward_imports(path)]
    assert not problems, "\n".join(problems)


def test_the_check_names_an_upward_import_with_its_line():
    path = ROOT / "kd" / "training" / "engine.py"
    source = "import torch\n\n\ndef f():\n    from kd.runs.results import write_results\n"
    (problem,) = upward_imports(path, source)
    assert problem.startswith("kd/training/engine.py:5 imports kd.runs.results: the training room may not import "
                              "the runs room")
    assert upward_imports(path, "from kd.data import augment\nfrom kd.models.resnet import resnet8\n") == []
    assert upward_imports(ROOT / "kd" / "data" / "augment.py", "from kd.training import engine\n") != []


def test_every_kd_module_lives_in_a_room():
    flat = {p.name for p in (ROOT / "kd").glob("*.py")}
    assert flat == FOUNDATION_FILES, f"new flat modules in kd/: {sorted(flat - FOUNDATION_FILES)}; put each in its room"
    unroomed = [module_name(p) for p in python_files() if room_of(module_name(p)) is None and module_name(p) != "kd"]
    assert not unroomed, unroomed


@pytest.mark.parametrize("old", sorted(MOVED))
def test_an_old_module_name_imports_the_moved_module(old):
    import importlib

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(old)
    assert module is importlib.import_module(MOVED[old])


def test_an_old_module_name_warns_a_user_under_pythons_default_filters(tmp_path):
    """A rename is for users: the warning shows from their own module and under `python -m`, with no -W flag."""
    import subprocess
    import sys

    (tmp_path / "user_module.py").write_text("from kd.engine import *\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    imported = subprocess.run([sys.executable, "-c", "import user_module"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, check=True)
    assert "FutureWarning: kd.engine moved to kd.training.engine" in imported.stderr
    ran = subprocess.run([sys.executable, "-m", "kd.submit", "--help"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, check=True)
    assert "FutureWarning: kd.submit moved to kd.runs.submit" in ran.stderr


def test_a_cells_identity_keeps_the_augmentation_names_older_results_recorded():
    """Results, checkpoints and cached teachers written before the move name kd.augment.*: they still match."""
    from hydra.utils import get_class

    from kd.config import defining_config
    from kd.training.teacher import teacher_recipe

    for aug in ("fc", "fccutmix"):
        cfg = compose_config([f"aug={aug}", "data=digits"], out_dir="/tmp")
        recorded = defining_config(cfg)["aug"]["_target_"]
        assert recorded.rsplit(".", 2)[0] == "kd" and recorded != cfg.aug._target_
        assert get_class(recorded) is get_class(cfg.aug._target_)
        assert teacher_recipe(cfg, None)["aug"]["_target_"].startswith(("kd.augment.", "kd.augment_ladder."))
