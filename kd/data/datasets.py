"""Datasets as uint8 image tensors: CIFAR-10/100 through torchvision, a folder of images, and sklearn's digits.

Every loader returns the same `ImageSplits`, so the training pipelines never care
which dataset they feed. CIFAR comes from torchvision's own classes (its download and
on-disk format); a folder through torchvision's ImageFolder (kd/data/image_folder.py); digits is
bundled with scikit-learn and needs no download. Every loader takes the same `train_size`,
`val_size` and `split_seed`, applied by one function (`split_training`).
"""
from __future__ import annotations

import dataclasses
import importlib.resources
import os
import shutil
import urllib.error
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
import torchvision
from sklearn.model_selection import train_test_split

from kd.data.augment import RECIPES
from kd.data.image_files import ImageFiles, sample_stats, should_stream
from kd.data.image_folder import FolderScan, decode, scan


class DataUnavailableError(RuntimeError):
    """The dataset is neither on disk nor downloadable; the message says how to fix it."""


@dataclass
class ImageSplits:
    name: str
    train_images: Union[torch.Tensor, ImageFiles]  # uint8 (N, 3, H, W), or the files to stream them from
    train_labels: torch.Tensor  # int64 (N,)
    test_images: torch.Tensor
    test_labels: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]  # per channel, on the [0, 1] scale
    std: tuple[float, ...]
    location: Optional[Path] = None  # where the files are: CIFAR's extracted folder, the file scikit-learn bundles
    val_images: Optional[torch.Tensor] = None  # a hold-out of the training data (data.val_size, or a folder's val/)
    val_labels: Optional[torch.Tensor] = None
    content_digest: Optional[str] = None  # what the data is, where the config does not say it (a folder's files)

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The images and labels of "train", "val" or "test"."""
        return getattr(self, f"{name}_images"), getattr(self, f"{name}_labels")


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


class SplitSizeError(ValueError):
    """data.train_size / data.val_size do not fit the training split; the message says how to fix them."""


def split_training(labels: np.ndarray, num_classes: int, name: str, train_size: Optional[int],
                   val_size: Optional[int], seed: int) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Positions in the training split of the images to train on and of the validation hold-out (None
    without `val_size`), both stratified (each class keeps its share: equal counts per class on a
    class-balanced dataset such as CIFAR) and fixed by `seed`. The hold-out is drawn first, so
    changing `train_size` never changes which images validate; test images are never touched."""
    n = len(labels)
    if val_size is not None:
        if val_size < num_classes or val_size > n - num_classes:
            raise SplitSizeError(
                f"data.val_size={val_size} must be between {num_classes} (one image per class of {name}) and "
                f"{n - num_classes} (its {n} training images less one per class to train on); change data.val_size.")
    rest = n - (val_size or 0)
    if train_size is not None:
        if val_size is not None and train_size + val_size > n:
            raise SplitSizeError(f"data.train_size={train_size} + data.val_size={val_size} = {train_size + val_size} "
                                 f"is more than the {n} training images of {name}; lower one of them.")
        if train_size > rest:
            raise SplitSizeError(f"data.train_size={train_size} is larger than the {n} training images of {name}; "
                                 f"lower it, or set data.train_size=null for all of them.")
        if train_size < num_classes:
            raise SplitSizeError(f"data.train_size={train_size} is smaller than the {num_classes} classes of {name}: "
                                 f"a class-balanced subset needs at least one image per class; raise it.")
        if 0 < rest - train_size < num_classes:  # a stratified split needs a class's share on both sides
            after = f" after data.val_size={val_size}" if val_size is not None else ""
            raise SplitSizeError(f"data.train_size={train_size} leaves {rest - train_size} of the {rest} training "
                                 f"images of {name}{after} unused, fewer than its {num_classes} classes, so the subset "
                                 f"cannot be class-balanced; set data.train_size to {rest} (all) or at most "
                                 f"{rest - num_classes}.")
    positions, val = np.arange(n), None
    if val_size is not None:
        positions, val = train_test_split(positions, test_size=val_size, random_state=seed, stratify=labels)
    if train_size is not None and train_size < len(positions):
        positions, _ = train_test_split(positions, train_size=train_size, random_state=seed,
                                        stratify=labels[positions])
    return positions, val


def subset(splits: ImageSplits, train: np.ndarray, val: Optional[np.ndarray]) -> ImageSplits:
    """`splits` with the training split cut to the positions `train`, and `val` of it held out (if not None)."""
    held_out = {} if val is None else {"val_images": splits.train_images[val], "val_labels": splits.train_labels[val]}
    return dataclasses.replace(splits, train_images=splits.train_images[train],
                               train_labels=splits.train_labels[train], **held_out)


def split_subsets(splits: ImageSplits, train_size: Optional[int], val_size: Optional[int], seed: int) -> ImageSplits:
    """`splits` cut by data.train_size and data.val_size (`split_training`)."""
    train, val = split_training(splits.train_labels.numpy(), splits.num_classes, splits.name, train_size, val_size,
                                seed)
    return subset(splits, train, val)


def _cifar(cls: type, name: str, root: str, mean: list[float], std: list[float], download: bool,
           train_size: Optional[int], val_size: Optional[int], split_seed: int) -> ImageSplits:
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
    splits = ImageSplits(
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
    return split_subsets(splits, train_size, val_size, split_seed)


def cifar100(root: str, mean: list[float], std: list[float], download: bool = True, train_size: Optional[int] = None,
             val_size: Optional[int] = None, split_seed: int = 0) -> ImageSplits:
    """CIFAR-100 via torchvision.datasets.CIFAR100, downloaded into `root` if missing."""
    return _cifar(torchvision.datasets.CIFAR100, "cifar100", root, mean, std, download, train_size, val_size,
                  split_seed)


def cifar10(root: str, mean: list[float], std: list[float], download: bool = True, train_size: Optional[int] = None,
            val_size: Optional[int] = None, split_seed: int = 0) -> ImageSplits:
    """CIFAR-10 via torchvision.datasets.CIFAR10, downloaded into `root` if missing."""
    return _cifar(torchvision.datasets.CIFAR10, "cifar10", root, mean, std, download, train_size, val_size,
                  split_seed)


def folder(root: str, cache_dir: str, image_size: int = 32, mean: Optional[list[float]] = None,
           std: Optional[list[float]] = None, train_size: Optional[int] = None, val_size: Optional[int] = None,
           split_seed: int = 0, stream: str = "auto", stream_above_gb: float = 16.0, crop_pct: float = 1.0,
           gpu_decode: bool = False, aug_recipe: str = "cifar") -> ImageSplits:
    """A folder of images (kd/data/image_folder.py): decoded once into a cache under `cache_dir`, or, where
    `stream` says so (kd/data/image_files.py `should_stream`), decoded per batch from its files. `aug_recipe` is
    what conf/aug's fc and fcra crop with (their aug.recipe): checked here, before any image is read.

    Its val/ split, if present, is the validation set. The sizes are checked against the folder's
    listing before any image is decoded. `mean` / `std` default to the whole train/ split's (as
    CIFAR's published constants are), so every train_size of a sweep is normalized alike.
    """
    path = Path(os.path.expanduser(root))
    return from_scan(scan(path), path.name, Layout(image_size, crop_pct, stream, stream_above_gb, gpu_decode,
                                                   aug_recipe), cache_dir, mean, std, train_size, val_size, split_seed)


@dataclass(frozen=True)
class Layout:
    """How a folder's images become a split's: their size, the clean view's crop, and whether they stream."""

    image_size: int
    crop_pct: float  # Resize(image_size / crop_pct) + CenterCrop(image_size): 0.875 is ImageNet's 256 -> 224
    stream: str  # auto | true | false
    stream_above_gb: float  # auto streams above this many GB of decoded images
    gpu_decode: bool  # streaming on CUDA: JPEGs decoded on the device (nvJPEG)
    aug_recipe: str  # the crop of fc and fcra (kd/data/augment.py RECIPES)


def from_scan(found: FolderScan, name: str, layout: Layout, cache_dir: str, mean: Optional[list[float]],
              std: Optional[list[float]], train_size: Optional[int], val_size: Optional[int],
              split_seed: int) -> ImageSplits:
    """A scanned folder's splits: decoded into memory (cached), or as their files to stream."""
    if layout.aug_recipe not in RECIPES:
        raise ValueError(f"data.aug_recipe={layout.aug_recipe!r} must be one of {', '.join(RECIPES)}: the crop of "
                         f"aug=fc and aug=fcra (padded RandomCrop, or RandomResizedCrop)")
    if not 0 < layout.crop_pct <= 1:
        raise ValueError(f"data.crop_pct={layout.crop_pct} must be in (0, 1]: the center crop's share of the "
                         f"resized shorter side (ImageNet's evaluation: 0.875, Resize(256) + CenterCrop(224))")
    if "val" in found.datasets and val_size is not None:
        val_dir = Path(found.datasets["val"].root)
        raise SplitSizeError(f"data.val_size={val_size}, but {val_dir} exists and is the validation split. "
                             f"Set data.val_size=null to use it, or remove {val_dir} to hold out "
                             f"data.val_size images of train/ instead.")
    train, val = split_training(found.labels("train").numpy(), len(found.classes), name, train_size, val_size,
                                split_seed)
    counts = {split: len(d.samples) for split, d in found.datasets.items()}
    if should_stream(layout.stream, counts, layout.image_size, layout.stream_above_gb):
        images = {split: ImageFiles(np.array(found.files(split)), layout.image_size, layout.crop_pct,
                                    layout.gpu_decode) for split in found.datasets}
        if mean is None or std is None:
            mean, std = sample_stats(images["train"][train])
    else:
        images = decode(found, layout.image_size, Path(os.path.expanduser(cache_dir)), layout.crop_pct)
        if mean is None or std is None:
            mean, std = images["mean"].tolist(), images["std"].tolist()
    own_val = {"val_images": images["val"], "val_labels": found.labels("val")} if "val" in found.datasets else {}
    splits = ImageSplits(
        name=name,
        train_images=images["train"],
        train_labels=found.labels("train"),
        test_images=images["test"],
        test_labels=found.labels("test"),
        num_classes=len(found.classes),
        mean=tuple(mean),
        std=tuple(std),
        content_digest=found.digest,
        location=found.root,
        **own_val,
    )
    return subset(splits, train, val)


def digits(
    mean: list[float], std: list[float], image_size: int = 16, test_fraction: float = 0.2, split_seed: int = 0,
    train_size: Optional[int] = None, val_size: Optional[int] = None,
) -> ImageSplits:
    """scikit-learn's bundled 8x8 digits as 3-channel uint8 images of `image_size`.

    The split is stratified and fixed by `split_seed`, so every run sees the same test set.
    `train_size` keeps a stratified subset of the training split: a low-data regime where,
    as on CIFAR, a network overfits without augmentation.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32) * (255.0 / 16.0))[:, None]
    images = torch.nn.functional.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
    images = images.round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    labels = torch.from_numpy(bunch.target).long()
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=test_fraction, random_state=split_seed, stratify=bunch.target
    )
    train_idx, test_idx = torch.from_numpy(train_idx), torch.from_numpy(test_idx)
    splits = ImageSplits(
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
    return split_subsets(splits, train_size, val_size, split_seed)
