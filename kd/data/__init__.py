"""The data room: datasets as uint8 tensors (datasets, image_folder), the training pipelines (pipeline), and the
augmentations (augment, augment_ladder). It imports nothing of kd's but kd.config and kd.checkpoint.

`kd.data.<dataset>` (cifar10, cifar100, folder, digits) names each dataset's factory, as conf/data/*.yaml's
`_target_`s and the cells' recorded configs do; resolved on first use, so that importing an augmentation
does not load the datasets' libraries (scikit-learn, torchvision.datasets)."""
from __future__ import annotations

from typing import Any

DATASETS = ("cifar10", "cifar100", "folder", "digits")


def __getattr__(name: str) -> Any:
    if name in DATASETS:
        from kd.data import datasets

        return getattr(datasets, name)
    raise AttributeError(f"module 'kd.data' has no attribute {name!r}")
