"""Write a small image folder to try `data=folder` offline: 10 classes of shapes, PNG and JPEG, 32x32.

    python examples/make_shapes_folder.py shapes            # ./shapes: 60 train, 10 val, 20 test images per class
    python kd/train.py -m alpha=0,0.25,0.5,0.75,1.0 aug=none,fc,fcra data=folder data.root=shapes ...

Each image is one shape of random size, position, color and rotation on a noisy background. Every
class keeps its label under a horizontal flip and a small shift, so flip + crop is a fair augmentation
here (unlike on digits).
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SIZE = 32
SPLITS = {"train": 60, "val": 10, "test": 20}  # images per class


def polygon(sides: int, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    return [(cx + r * math.cos(angle + 2 * math.pi * k / sides), cy + r * math.sin(angle + 2 * math.pi * k / sides))
            for k in range(sides)]


def draw(shape: str, rng: np.random.Generator) -> Image.Image:
    background = rng.integers(0, 96, 3)
    pixels = np.clip(background + rng.normal(0, 20, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    pen = ImageDraw.Draw(image)
    color = tuple(int(c) for c in rng.integers(128, 256, 3))
    r = rng.uniform(7, 12)
    cx, cy = rng.uniform(r, SIZE - r, 2)
    spin = rng.uniform(0, 2 * math.pi)
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        pen.ellipse(box, fill=color)
    elif shape == "ring":
        pen.ellipse(box, outline=color, width=3)
    elif shape == "square":
        pen.polygon(polygon(4, cx, cy, r, spin), fill=color)
    elif shape == "square_outline":
        pen.polygon(polygon(4, cx, cy, r, spin), outline=color, width=2)
    elif shape == "triangle":
        pen.polygon(polygon(3, cx, cy, r, spin), fill=color)
    elif shape == "pentagon":
        pen.polygon(polygon(5, cx, cy, r, spin), fill=color)
    elif shape == "hexagon":
        pen.polygon(polygon(6, cx, cy, r, spin), fill=color)
    elif shape == "star":
        outer, inner = polygon(5, cx, cy, r, spin), polygon(5, cx, cy, r * 0.4, spin + math.pi / 5)
        pen.polygon([p for pair in zip(outer, inner) for p in pair], fill=color)
    elif shape == "cross":
        for a in (spin, spin + math.pi / 2):
            pen.line([(cx - r * math.cos(a), cy - r * math.sin(a)), (cx + r * math.cos(a), cy + r * math.sin(a))],
                     fill=color, width=3)
    elif shape == "dots":
        for _ in range(3):
            x, y = rng.uniform(3, SIZE - 3, 2)
            pen.ellipse((x - 3, y - 3, x + 3, y + 3), fill=color)
    return image


SHAPES = ["circle", "ring", "square", "square_outline", "triangle", "pentagon", "hexagon", "star", "cross", "dots"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    root = args.root.expanduser()
    for split, n in SPLITS.items():
        for shape in SHAPES:
            folder = root / split / shape
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                draw(shape, rng).save(folder / f"{i:03d}.{'jpg' if i % 2 else 'png'}")
    print(f"wrote {sum(SPLITS.values()) * len(SHAPES)} images to {root}")


if __name__ == "__main__":
    main()
