"""ImageNet (ILSVRC-2012) and Tiny ImageNet in their own on-disk layouts, as kd/data/datasets.py's splits.

`data=imagenet`: torchvision's ImageFolder layout of ILSVRC-2012, train/<wnid>/*.JPEG and val/<wnid>/*.JPEG (the
50,000 validation images sorted into their class folders, as torchvision's and mdistiller's loaders read them);
val/ is the test split, as every KD paper reports it. At 224 px its 1.28 M training images decode to ~193 GB, so
`data.stream=auto` streams them (kd/data/stream.py).

`data=tiny_imagenet`: the archive's own layout (cs231n's tiny-imagenet-200): wnids.txt, train/<wnid>/images/*.JPEG,
and val/images/*.JPEG labelled by val/val_annotations.txt (file, wnid, box); its test/ has no labels, so val/ is
the test split here too. 100,000 64 px training images decode to 1.2 GB: it stays in memory.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import default_loader

from kd.data.datasets import ImageSplits, Layout, from_scan
from kd.data.image_folder import FolderScan, ImageFolderError, check_root, listed, scan

IMAGENET_LAYOUT = ("ROOT/train/<wnid>/<image>.JPEG and ROOT/val/<wnid>/<image>.JPEG (ILSVRC-2012 as torchvision's "
                   "ImageFolder reads it: the validation images sorted into their class folders, e.g. by "
                   "pytorch/examples' imagenet/extract_ILSVRC.sh)")
TINY_LAYOUT = ("ROOT/wnids.txt, ROOT/train/<wnid>/images/<image>.JPEG, ROOT/val/images/<image>.JPEG and "
               "ROOT/val/val_annotations.txt (tiny-imagenet-200.zip extracted as it comes)")


def imagenet(root: str, cache_dir: str, mean: list[float], std: list[float], image_size: int = 224,
             crop_pct: float = 0.875, stream: str = "auto", stream_above_gb: float = 16.0, gpu_decode: bool = False,
             aug_recipe: str = "imagenet", train_size: Optional[int] = None, val_size: Optional[int] = None,
             split_seed: int = 0) -> ImageSplits:
    """ILSVRC-2012 from `root` (IMAGENET_LAYOUT); val/ is the test split. The rest as kd/data/datasets.py `folder`."""
    path = Path(os.path.expanduser(root))
    found = scan(path, {"train": "train", "test": "val"}, IMAGENET_LAYOUT)
    layout = Layout(image_size, crop_pct, stream, stream_above_gb, gpu_decode, aug_recipe)
    return from_scan(found, "imagenet", layout, cache_dir, mean, std, train_size, val_size, split_seed)


def tiny_imagenet(root: str, cache_dir: str, mean: Optional[list[float]] = None, std: Optional[list[float]] = None,
                  image_size: int = 64,
                  crop_pct: float = 1.0, stream: str = "auto", stream_above_gb: float = 16.0, gpu_decode: bool = False,
                  aug_recipe: str = "cifar", train_size: Optional[int] = None, val_size: Optional[int] = None,
                  split_seed: int = 0) -> ImageSplits:
    """Tiny ImageNet from `root` (TINY_LAYOUT); val/ is the test split. The rest as kd/data/datasets.py `folder`."""
    layout = Layout(image_size, crop_pct, stream, stream_above_gb, gpu_decode, aug_recipe)
    return from_scan(scan_tiny(Path(os.path.expanduser(root))), "tiny_imagenet", layout, cache_dir, mean, std,
                     train_size, val_size, split_seed)


@dataclass
class Listed:
    """A split listed by an annotation file rather than by class folders: ImageFolder's attributes."""

    root: str
    samples: list[tuple[str, int]]
    targets: list[int] = field(init=False)

    def __post_init__(self) -> None:
        self.targets = [target for _, target in self.samples]

    def loader(self, path: str) -> Any:
        return default_loader(path)


def scan_tiny(root: Path) -> FolderScan:
    """Check Tiny ImageNet's layout and list its training and validation images."""
    check_root(root, TINY_LAYOUT)
    for need in ("wnids.txt", "train", "val/images", "val/val_annotations.txt"):
        if not (root / need).exists():
            raise ImageFolderError(f"{root} has no {need}. kd reads Tiny ImageNet as {TINY_LAYOUT.replace('ROOT', str(root))}; "
                                   f"point data.root at the extracted tiny-imagenet-200 folder.")
    wnids = sorted((root / "wnids.txt").read_text().split())
    train = ImageFolder(str(root / "train"), allow_empty=True)
    if train.classes != wnids:
        differ = sorted(set(train.classes) ^ set(wnids))
        raise ImageFolderError(f"{root / 'train'}'s class folders and {root / 'wnids.txt'} differ (e.g. "
                               f"{', '.join(differ[:3])}): every wnid needs its train/<wnid>/images/ folder.")
    index = {wnid: i for i, wnid in enumerate(wnids)}
    samples = []
    for number, line in enumerate((root / "val/val_annotations.txt").read_text().splitlines(), 1):
        fields = line.split("\t")
        if not line.strip():
            continue
        if len(fields) < 2 or fields[1] not in index or not (root / "val/images" / fields[0]).is_file():
            raise ImageFolderError(f"{root / 'val/val_annotations.txt'} line {number} ({line[:60]!r}) names no image "
                                   f"of val/images/ with a wnid of wnids.txt: each line is <file>\\t<wnid>\\t<box>.")
        samples.append((str(root / "val/images" / fields[0]), index[fields[1]]))
    if not samples:
        raise ImageFolderError(f"{root / 'val/val_annotations.txt'} lists no image: kd reads {TINY_LAYOUT}.")
    return listed(root, wnids, {"train": train, "test": Listed(str(root / "val"), samples)})
