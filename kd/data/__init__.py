"""The data room: datasets as uint8 tensors or files to stream (datasets, image_folder, image_files,
imagenet_layouts), the training pipelines (pipeline, stream), and the augmentations (augment, augment_ladder,
resized_crop). It imports nothing of kd's but kd.config and kd.checkpoint.

`kd.data.<dataset>` (cifar10, cifar100, folder, digits, imagenet, tiny_imagenet) names each dataset's factory, as
conf/data/*.yaml's `_target_`s and the cells' recorded configs do; resolved on first use, so that importing an augmentation
does not load the datasets' libraries (scikit-learn, torchvision.datasets)."""
from __future__ import annotations

from typing import Any

DATASETS = ("cifar10", "cifar100", "folder", "digits")
IMAGENETS = ("imagenet", "tiny_imagenet")  # kd/data/imagenet_layouts.py


def __getattr__(name: str) -> Any:
    if name in DATASETS:
        from kd.data import datasets

        return getattr(datasets, name)
    if name in IMAGENETS:
        from kd.data import imagenet_layouts

        return getattr(imagenet_layouts, name)
    raise AttributeError(f"module 'kd.data' has no attribute {name!r}")
