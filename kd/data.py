"""Datasets as uint8 image tensors: CIFAR-10/100 through torchvision, and sklearn's digits.

Every loader returns the same `ImageSplits`, so the training pipelines never care
which dataset they feed. CIFAR comes from torchvision's own classes (its download and
on-disk format); digits is bundled with scikit-learn and needs no download.
"""
from __future__ import annotations

import importlib.resources
import os
import shutil
import urllib.error
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torchvision


class DataUnavailableError(RuntimeError):
    """The dataset is neither on disk nor downloadable; the message says how to fix it."""


@dataclass
class ImageSplits:
    name: str
    train_images: torch.Tensor  # uint8 (N, 3, H, W)
    train_labels: torch.Tensor  # int64 (N,)
    test_images: torch.Tensor
    test_labels: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]  # per channel, on the [0, 1] scale
    std: tuple[float, ...]
    location: Optional[Path] = None  # where the files are: CIFAR's extracted folder, the file scikit-learn bundles


def on_disk(splits: ImageSplits) -> dict[str, object]:
    """Where a loaded dataset lives and how big it is, for `stage=data` to report."""
    assert splits.location is not None, f"{splits.name} was not read from files"
    files = [p for p in splits.location.rglob("*") if p.is_file()] if splits.location.is_dir() else [splits.location]
    return {"data_location": str(splits.location), "data_bytes": sum(p.stat().st_size for p in files),
            "data_files": len(files), "train_images": len(splits.train_labels),
            "test_images": len(splits.test_labels), "num_classes": splits.num_classes}


def _first_missing(path: Path) -> Path | None:
    """The outermost dir of `path` that does not exist yet (None if `path` exists)."""
    missing = None
    while not path.exists():
        missing, path = path, path.parent
    return missing


def _cifar(cls: type, name: str, root: str, mean: list[float], std: list[float], download: bool) -> ImageSplits:
    path = Path(os.path.expanduser(root))
    try:
        train = cls(str(path), train=True, download=False)
        test = cls(str(path), train=False, download=False)
    except RuntimeError as missing:
        folder = path / cls.base_folder
        # torchvision checks each file's md5, so a truncated or tampered file is reported here, never unpickled.
        problem = (f"{name} in {folder} is incomplete or corrupt" if folder.is_dir()
                   else f"{name} is not under {path}")
        if not download:
            raise DataUnavailableError(
                f"{problem} ({missing}). Put a complete extracted '{cls.base_folder}' folder in {path}, "
                f"or set data.download=true."
            ) from None
        created = _first_missing(path)
        try:
            train = cls(str(path), train=True, download=True)
            test = cls(str(path), train=False, download=True)
        except (urllib.error.URLError, OSError, RuntimeError) as err:
            if created is not None:  # torchvision made these dirs for the download: a failure leaves no trace
                shutil.rmtree(created, ignore_errors=True)
            raise DataUnavailableError(
                f"{problem} and could not be downloaded ({err}). "
                f"Fix: on a machine with internet run the same command once to fill {path} "
                f"(or copy '{cls.filename}' / the extracted '{cls.base_folder}' folder there), "
                f"then point data.root or $KD_DATA_DIR at it."
            ) from None
    return ImageSplits(
        name=name,
        train_images=torch.from_numpy(train.data).permute(0, 3, 1, 2).contiguous(),
        train_labels=torch.tensor(train.targets, dtype=torch.long),
        test_images=torch.from_numpy(test.data).permute(0, 3, 1, 2).contiguous(),
        test_labels=torch.tensor(test.targets, dtype=torch.long),
        num_classes=len(train.classes),
        mean=tuple(mean),
        std=tuple(std),
        location=path / cls.base_folder,
    )


def cifar100(root: str, mean: list[float], std: list[float], download: bool = True) -> ImageSplits:
    """CIFAR-100 via torchvision.datasets.CIFAR100, downloaded into `root` if missing."""
    return _cifar(torchvision.datasets.CIFAR100, "cifar100", root, mean, std, download)


def cifar10(root: str, mean: list[float], std: list[float], download: bool = True) -> ImageSplits:
    """CIFAR-10 via torchvision.datasets.CIFAR10, downloaded into `root` if missing."""
    return _cifar(torchvision.datasets.CIFAR10, "cifar10", root, mean, std, download)


def digits(
    mean: list[float], std: list[float], image_size: int = 16, test_fraction: float = 0.2, split_seed: int = 0,
    train_size: int | None = None,
) -> ImageSplits:
    """scikit-learn's bundled 8x8 digits as 3-channel uint8 images of `image_size`.

    The split is stratified and fixed by `split_seed`, so every run sees the same test set.
    `train_size` keeps a stratified subset of the training split: a low-data regime where,
    as on CIFAR, a network overfits without augmentation.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32) * (255.0 / 16.0))[:, None]
    images = torch.nn.functional.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
    images = images.round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    labels = torch.from_numpy(bunch.target).long()
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=test_fraction, random_state=split_seed, stratify=bunch.target
    )
    if train_size is not None:
        train_idx, _ = train_test_split(train_idx, train_size=train_size, random_state=split_seed,
                                        stratify=bunch.target[train_idx])
    train_idx, test_idx = torch.from_numpy(train_idx), torch.from_numpy(test_idx)
    return ImageSplits(
        name="digits",
        train_images=images[train_idx],
        train_labels=labels[train_idx],
        test_images=images[test_idx],
        test_labels=labels[test_idx],
        num_classes=10,
        mean=tuple(mean),
        std=tuple(std),
        location=Path(str(importlib.resources.files("sklearn.datasets.data") / "digits.csv.gz")),
    )
