"""Ships conf/ and launchers/ inside the wheel as kd/conf and kd/launchers (kd/paths.py finds them there), so that
`pip install .`, `pip install git+...` and a cluster image run without a checkout. Everything else is in
pyproject.toml; a package-dir mapping would do the same but turn `pip install -e .` into setuptools' import
hook, which hides the hydra_plugins namespace from Hydra (hydra issue #2359)."""
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class BuildWithConfigs(build_py):
    def run(self) -> None:
        super().run()
        if self.editable_mode:  # the checkout's own conf/ and launchers/ are used in place
            return
        for name in ("conf", "launchers"):
            shutil.copytree(ROOT / name, Path(self.build_lib) / "kd" / name, dirs_exist_ok=True)


setup(cmdclass={"build_py": BuildWithConfigs})
