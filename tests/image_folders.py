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
