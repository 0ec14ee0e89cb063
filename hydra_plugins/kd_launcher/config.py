"""The settings of kd's SLURM presets: hydra-submitit-launcher's, plus `detach`.

No `from __future__ import annotations` here: Hydra's plugin scan executes this module outside
sys.modules, where a dataclass cannot resolve string annotations.
"""
from dataclasses import dataclass

from hydra.core.config_store import ConfigStore

from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf


@dataclass
class KdSlurmQueueConf(SlurmQueueConf):
    detach: bool = False  # submit the job array and return at once (python -m kd.runs.submit --detach)


ConfigStore.instance().store(group="hydra/launcher", name="kd_slurm_base", node=KdSlurmQueueConf(), provider="kd")
