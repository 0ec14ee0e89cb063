"""Image folders written with Pillow for the tests: PNG and JPEG; RGB, grayscale, RGBA and palette; mixed sizes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ["zebra", "apple", "Mango"]  # torchvision sorts them: Mango, apple, zebra
MODES = ["RGB", "L", "RGBA", "P"]
SIZES = [(40, 40), (32, 48), (64, 30), (20, 20)]  # (width, height)


def write_image(path: Path, index: int) -> Path:
    """A noise image (unique per index) in one of MODES and SIZES; JPEG for half the RGB and L images."""
    mode, (w, h) = MODES[index % len(MODES)], SIZES[index % len(SIZES)]
    rng = np.random.default_rng(index)
    image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    image = image.convert("RGB" if mode == "P" else mode)
    if mode == "P":
        image = image.quantize(16)
    suffix = ".jpg" if mode in ("RGB", "L") and index % 8 < 2 else ".png"  # JPEG stores neither RGBA nor P
    path = path.with_suffix(suffix)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def write_folder(root: Path, train: int = 8, test: int = 4, val: int = 0, classes: list[str] = CLASSES) -> Path:
    """root/{train,test[,val]}/<class>/<n>.<png|jpg> with `train`, `test`, `val` images per class."""
    index = 0
    for split, n in (("train", train), ("test", test), ("val", val)):
        for name in classes:
            for i in range(n):
                write_image(root / split / name / f"{i:03d}", index)
                index += 1
    return root


def photo_like(rng: np.random.Generator, size: tuple[int, int] | None = None) -> Image.Image:
    """An RGB image of ImageNet's size and JPEG entropy: (width, height) drawn around its mean of ~400x350 px (widths
    250-500, heights 200-500) unless given, smooth colour fields plus grain (~60-120 kB as a quality-90 JPEG)."""
    w, h = size or (int(rng.integers(250, 501)), int(rng.integers(200, 501)))
    coarse = Image.fromarray(rng.integers(0, 256, (h // 24 + 2, w // 24 + 2, 3), dtype=np.uint8))
    smooth = np.asarray(coarse.resize((w, h), Image.BICUBIC), dtype=np.int16)
    grain = rng.normal(0, 14, (h, w, 3))
    return Image.fromarray(np.clip(smooth + grain, 0, 255).astype(np.uint8))


def write_photo_folder(root: Path, splits: dict[str, int], classes: int, seed: int = 0,
                       size: tuple[int, int] | None = None) -> Path:
    """root/<split>/n<class>/<split>_<i>.JPEG: each split's count of full-size photo-like JPEGs, spread over the
    classes in turn (ImageNet's layout with splits={"train": .., "val": ..}; kd's folder with train and test)."""
    rng = np.random.default_rng(seed)
    for split, n in splits.items():
        for i in range(n):
            path = root / split / f"n{i % classes:08d}" / f"{split}_{i:07d}.JPEG"
            path.parent.mkdir(parents=True, exist_ok=True)
            photo_like(rng, size).save(path, quality=90)
    return root


def write_tiny_imagenet(root: Path, wnids: list[str], train: int, val: int, seed: int = 0) -> Path:
    """Tiny ImageNet's own layout: wnids.txt, train/<wnid>/images/<wnid>_<i>.JPEG (and its <wnid>_boxes.txt),
    val/images/val_<i>.JPEG labelled by val/val_annotations.txt (file, wnid, box, tab-separated); 64x64 JPEGs."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "wnids.txt").write_text("".join(f"{w}\n" for w in wnids))
    for wnid in wnids:
        images = root / "train" / wnid / "images"
        images.mkdir(parents=True)
        for i in range(train):
            photo_like(rng, (64, 64)).save(images / f"{wnid}_{i}.JPEG", quality=90)
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text(
            "".join(f"{wnid}_{i}.JPEG\t0\t0\t63\t63\n" for i in range(train)))
    (root / "val" / "images").mkdir(parents=True)
    lines = []
    for i in range(val * len(wnids)):
        photo_like(rng, (64, 64)).save(root / "val" / "images" / f"val_{i}.JPEG", quality=90)
        lines.append(f"val_{i}.JPEG\t{wnids[i % len(wnids)]}\t0\t0\t63\t63\n")
    (root / "val" / "val_annotations.txt").write_text("".join(lines))
    (root / "test" / "images").mkdir(parents=True)  # unlabelled, as in the archive
    return root
