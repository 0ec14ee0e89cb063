"""Which process of a data-parallel job this is, read before torch loads (kd/train.py stays light): rank 0 is
the one writer, and the Hydra callbacks, which every rank runs, leave the writing and printing to it."""
from __future__ import annotations

import os


def is_writer() -> bool:
    """True for one process, or rank 0 of a job torchrun or kd's SLURM launcher started (their RANK)."""
    return int(os.environ.get("RANK", 0)) == 0
