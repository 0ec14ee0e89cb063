"""ImageNet's crops, per image: RandomResizedCrop for training, Resize + CenterCrop for the clean (evaluation) view.

torchvision's and mdistiller's ImageNet recipes train on RandomResizedCrop(size) (a box of 8-100% of the image's
area at an aspect ratio of 3/4 to 4/3, resized to size x size, bilinear, antialiased) and evaluate on Resize(size /
crop_pct) + CenterCrop(size) (crop_pct 0.875: Resize(256) + CenterCrop(224)). The boxes are drawn as torchvision's
RandomResizedCrop.get_params draws them, but from a given generator: its own draws come from the global RNG, which
neither a resumed run nor a DataLoader worker could replay.
"""
from __future__ import annotations

import math

import torch
from torchvision.transforms.v2 import functional as F

SCALE = (0.08, 1.0)  # share of the image's area: torchvision's default
RATIO = (3.0 / 4.0, 4.0 / 3.0)  # aspect ratio (width / height)
TRIES = 10  # torchvision's: then a centre crop at the nearest allowed ratio

Box = tuple[int, int, int, int]  # top, left, height, width


def random_boxes(sizes: list[tuple[int, int]], generator: torch.Generator) -> list[Box]:
    """One RandomResizedCrop box per (height, width) in `sizes`, all draws in one call (one host read)."""
    draws = torch.rand(len(sizes), TRIES, 4, device=generator.device, generator=generator).tolist()
    return [_box(h, w, tries) for (h, w), tries in zip(sizes, draws)]


def _box(height: int, width: int, tries: list[list[float]]) -> Box:
    area = height * width
    log_lo, log_hi = math.log(RATIO[0]), math.log(RATIO[1])
    for u_scale, u_ratio, u_top, u_left in tries:
        target = area * (SCALE[0] + u_scale * (SCALE[1] - SCALE[0]))
        ratio = math.exp(log_lo + u_ratio * (log_hi - log_lo))
        w = int(round(math.sqrt(target * ratio)))
        h = int(round(math.sqrt(target / ratio)))
        if 0 < w <= width and 0 < h <= height:
            return int(u_top * (height - h + 1)), int(u_left * (width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < RATIO[0]:
        w, h = width, int(round(width / RATIO[0]))
    elif in_ratio > RATIO[1]:
        h, w = height, int(round(height * RATIO[1]))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def resized_crop(image: torch.Tensor, box: Box, size: int) -> torch.Tensor:
    """The box of a uint8 (3, H, W) image resized to size x size (bilinear, antialiased)."""
    return F.resized_crop(image, *box, [size, size], antialias=True)


def random_resized_crops(images: list[torch.Tensor], size: int, generator: torch.Generator) -> torch.Tensor:
    """RandomResizedCrop(size) of each uint8 (3, H, W) image (sizes may differ), stacked."""
    boxes = random_boxes([tuple(image.shape[-2:]) for image in images], generator)
    return torch.stack([resized_crop(image, box, size) for image, box in zip(images, boxes)])


def center_view(image: torch.Tensor, size: int, crop_pct: float) -> torch.Tensor:
    """Resize(size / crop_pct) + CenterCrop(size) of a uint8 (3, H, W) image: the clean, evaluated view."""
    resized = F.resize(image, int(size / crop_pct), antialias=True)
    return F.center_crop(resized, [size, size])
