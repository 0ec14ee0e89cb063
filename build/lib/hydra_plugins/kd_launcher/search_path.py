"""Adds kd's launchers/ (the checkout's, or the copy a wheel ships) to Hydra's config search path, so
`hydra/launcher=slurm` resolves launchers/hydra/launcher/slurm.yaml from any working directory."""
from __future__ import annotations

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

from kd.paths import LAUNCHERS_DIR


class KdLaunchersSearchPath(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        if LAUNCHERS_DIR.is_dir():
            search_path.append(provider="kd-launchers", path=f"file://{LAUNCHERS_DIR}")
