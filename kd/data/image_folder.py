"""A folder of images (`train/<class>/<image>`, `test/...`, optionally `val/...`) as uint8 tensors, decoded once.

Finding classes and files and decoding them is torchvision's ImageFolder: class indices are the sorted
class folder names, any file with an image extension Pillow reads is an image, and its default loader
converts each to RGB (grayscale, RGBA with its alpha dropped, palette). Each image is then resized so its
shorter side is `image_size` and center-cropped to a square (torchvision's Resize + CenterCrop, bilinear,
antialiased): the ImageNet evaluation convention, which keeps the aspect ratio.

Decoding a large folder takes minutes, so the tensors are cached under `cache_dir` in a file named
after the folder's listing (relative paths, sizes, mtimes) and the image size: the cells of a grid
decode it once (the first under a file lock, the others wait and read its file), and a changed
folder is decoded again.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Protocol

import torch
from filelock import FileLock
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes
from torchvision.transforms import v2

from kd.checkpoint import load_checkpoint, save_atomic

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")  # val/ is optional
CACHE_FORMAT = 1  # part of the cache key: bump when decoding changes
LAYOUT = "ROOT/train/<class>/<image> and ROOT/test/<class>/<image> (and optionally ROOT/val/<class>/<image>)"


class ImageFolderError(ValueError):
    """The folder is not a dataset kd can read; the message names the path and the fix."""


class Images(Protocol):
    """A split's listing, as torchvision's ImageFolder gives it: its folder, (path, class index) samples, and their
    loader."""

    root: str
    samples: list[tuple[str, int]]
    targets: list[int]

    def loader(self, path: str) -> Any: ...


@dataclass
class FolderScan:
    """What is on disk, before any image is decoded: enough to check a config's sizes and to key the cache."""

    root: Path
    classes: list[str]
    datasets: dict[str, Images]  # per split present
    digest: str  # of the listing: relative paths, sizes, mtimes

    def labels(self, split: str) -> torch.Tensor:
        return torch.tensor(self.datasets[split].targets, dtype=torch.long)

    def files(self, split: str) -> list[str]:
        return [path for path, _ in self.datasets[split].samples]


def scan(root: Path, folders: Optional[dict[str, str]] = None, layout: str = LAYOUT) -> FolderScan:
    """Check the layout (every split with the same non-empty class folders) and list the images. `folders`: each
    split's folder under `root` (default: train/, test/ and an optional val/); train and test are required."""
    folders = folders or {split: split for split in SPLITS}
    check_root(root, layout)
    for split in ("train", "test"):
        if not (root / folders[split]).is_dir():
            raise ImageFolderError(f"{root} has no {folders[split]}/ folder. kd reads "
                                   f"{layout.replace('ROOT', str(root))}; add {root / folders[split]} or point "
                                   f"data.root at the folder that holds it.")
    classes = _class_folders(root / "train", layout)
    if len(classes) < 2:  # before any decoding: one class trains a teacher that is right by construction
        raise ImageFolderError(f"{root / 'train'} holds one class folder ({classes[0]}); classification needs at "
                               f"least two. Add a folder per class under {root / 'train'} (and test/).")
    datasets = {}
    for split in (s for s in SPLITS if s in folders and (root / folders[s]).is_dir()):
        where = root / folders[split]
        found = _class_folders(where, layout)
        extra = sorted(set(found) - set(classes))
        if extra:
            raise ImageFolderError(f"{where} has class folder(s) {', '.join(extra)} that {root / 'train'} lacks: add "
                                   f"their training images to train/, or remove them from {folders[split]}/.")
        lacking = sorted(set(classes) - set(found))
        if lacking:
            raise ImageFolderError(f"{where} lacks class folder(s) {', '.join(lacking)} of train/: every "
                                   f"class needs {split} images. Add them, or remove the class from train/.")
        dataset = ImageFolder(str(where), allow_empty=True)
        empty = sorted(set(classes) - {classes[t] for t in dataset.targets})
        if empty:
            raise ImageFolderError(f"{where / empty[0]} holds no image (kd reads files ending in "
                                   f"{', '.join(IMG_EXTENSIONS)}): add images or remove the empty class folder"
                                   + (f" (also empty: {', '.join(empty[1:])})" if len(empty) > 1 else "") + ".")
        datasets[split] = dataset
    return listed(root, classes, datasets)


def check_root(root: Path, layout: str) -> None:
    if not root.is_dir():
        raise ImageFolderError(f"data.root={root} does not exist or is not a directory. Point data.root at a "
                               f"folder laid out as {layout}.")


def listed(root: Path, classes: list[str], datasets: dict[str, Images]) -> FolderScan:
    """The scan of `datasets`, its digest made of their files' relative paths, sizes and mtimes."""
    listing = {split: [(str(Path(path).relative_to(root)), *_size_and_mtime(Path(path)))
                       for path, _ in d.samples] for split, d in datasets.items()}
    digest = hashlib.sha256(json.dumps(listing, sort_keys=True).encode()).hexdigest()
    return FolderScan(root, classes, datasets, digest)


def _class_folders(path: Path, layout: str = LAYOUT) -> list[str]:
    try:
        return find_classes(str(path))[0]
    except FileNotFoundError:
        raise ImageFolderError(f"{path} holds no class folder. kd reads {layout}; put each class's images in "
                               f"{path}/<class>/.") from None


def _size_and_mtime(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def cache_path(folder: FolderScan, image_size: int, cache_dir: Path, crop_pct: float = 1.0) -> Path:
    crop = f" {crop_pct}" if crop_pct != 1.0 else ""  # the key of a cache made before data.crop_pct is unchanged
    key = hashlib.sha256(f"{folder.digest} {image_size}{crop} {CACHE_FORMAT}".encode()).hexdigest()[:16]
    return cache_dir / f"{folder.root.name}-{image_size}px-{key}.pt"


def decode(folder: FolderScan, image_size: int, cache_dir: Path, crop_pct: float = 1.0) -> dict[str, torch.Tensor]:
    """Every split's images as uint8 (N, 3, image_size, image_size), plus the training split's per-channel
    `mean` and `std` on the [0, 1] scale: from the cache, else decoded now and cached. `crop_pct`: the shorter
    side is resized to image_size / crop_pct before the center crop (ImageNet's evaluation: 0.875)."""
    path = cache_path(folder, image_size, cache_dir, crop_pct)
    fix = f"Delete {path} to decode the folder again."
    if path.is_file():
        return load_checkpoint(path, "decoded image cache", fix)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if path.is_file():  # another cell decoded it while this one waited
            return load_checkpoint(path, "decoded image cache", fix)
        log.info("decoding %s at %dx%d into %s (once per folder content and image size)",
                 folder.root, image_size, image_size, path)
        transform = v2.Compose([v2.Resize(int(image_size / crop_pct)), v2.CenterCrop(image_size), v2.PILToTensor()])
        decoded = {split: _decode_split(d, transform) for split, d in folder.datasets.items()}
        decoded["mean"], decoded["std"] = channel_stats(decoded["train"])
        save_atomic(decoded, path)
    return decoded


def _decode_split(dataset: ImageFolder, transform: v2.Transform) -> torch.Tensor:
    images = []
    for path, _ in dataset.samples:
        try:
            images.append(transform(dataset.loader(path)))
        except (OSError, SyntaxError, ValueError) as err:  # PIL's UnidentifiedImageError is an OSError
            raise ImageFolderError(f"cannot read image {path} ({type(err).__name__}: {err}). Replace or delete "
                                   f"the file; nothing was cached.") from None
    return torch.stack(images)


def channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std over all pixels, on the [0, 1] scale; summed in float64 chunks, so a large
    split is never converted to floats at once."""
    total = torch.zeros(3, dtype=torch.float64)
    squares = torch.zeros(3, dtype=torch.float64)
    for start in range(0, len(images), chunk):
        x = images[start:start + chunk].to(torch.float64) / 255.0
        total += x.sum(dim=(0, 2, 3))
        squares += (x * x).sum(dim=(0, 2, 3))
    n = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / n
    return mean.float(), (squares / n - mean * mean).clamp(min=0).sqrt().float()

