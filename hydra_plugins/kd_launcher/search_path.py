"""Adds the repository's launchers/ to Hydra's config search path, so `hydra/launcher=slurm`
resolves launchers/hydra/launcher/slurm.yaml from any working directory."""
from __future__ import annotations

from pathlib import Path

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

LAUNCHERS_DIR = Path(__file__).resolve().parents[2] / "launchers"


class KdLaunchersSearchPath(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        if LAUNCHERS_DIR.is_dir():  # only in a source checkout (pip install -e .), which kd needs for conf/
            search_path.append(provider="kd-launchers", path=f"file://{LAUNCHERS_DIR}")
