"""Where kd's configs are: the checkout's conf/ and launchers/ (an editable install, `python kd/train.py`), or
the copies a wheel ships inside the package (kd/conf, kd/launchers: `pip install .`, a cluster image)."""
from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def _first_dir(name: str) -> Path:
    shipped, checkout = _PACKAGE / name, _PACKAGE.parent / name
    return shipped if shipped.is_dir() else checkout


CONF_DIR = _first_dir("conf")  # the config groups: data, model, teacher, pair, aug, loss, ...
LAUNCHERS_DIR = _first_dir("launchers")  # the launcher presets: hydra/launcher/<preset>.yaml
