"""The paper's three augmentation policies: none, fc (flip + crop), fcra (fc + RandAugment).

Each policy works two ways with the same semantics as torchvision:
- called on a uint8 batch (N, C, H, W) on the training device, it draws fresh
  parameters for every image (torchvision's transforms on a batch tensor would draw
  one set for the whole batch, which is not per-image augmentation);
- `pil_transforms()` gives the torchvision transforms of the conventional
  DataLoader pipeline, kept as the reference.
"""
from __future__ import annotations

import torch
import torchvision.transforms as T
from torchvision.transforms import InterpolationMode
from torchvision.transforms.autoaugment import _apply_op  # torchvision's own op code: same outputs by construction

RANDAUGMENT_BINS = 31  # torchvision's default number of magnitude bins


def random_flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2, like RandomHorizontalFlip."""
    flip = torch.rand(images.shape[0], device=images.device, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def random_crop(images: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Zero-pad by `padding` and crop back to size at a per-image offset, like RandomCrop(size, padding)."""
    n, c, h, w = images.shape
    padded = torch.nn.functional.pad(images, (padding,) * 4)
    dy = torch.randint(0, 2 * padding + 1, (n,), device=images.device, generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n,), device=images.device, generator=generator)
    rows = (dy[:, None] + torch.arange(h, device=images.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=images.device))[:, None, None, :]
    batch = torch.arange(n, device=images.device)[:, None, None, None]
    chan = torch.arange(c, device=images.device)[None, :, None, None]
    return padded[batch, chan, rows, cols]


def rand_augment(
    images: torch.Tensor, num_ops: int, magnitude: int, generator: torch.Generator
) -> torch.Tensor:
    """RandAugment with a fresh op and sign per image and per op slot.

    Images that drew the same (op, sign) are transformed together by torchvision's own
    `_apply_op`, so each image gets exactly what torchvision's RandAugment would give it.
    """
    space = T.RandAugment(num_ops, magnitude)._augmentation_space(RANDAUGMENT_BINS, images.shape[-2:])
    names = list(space)
    out = images.clone()
    n = images.shape[0]
    for _ in range(num_ops):
        op_index = torch.randint(len(names), (n,), device=images.device, generator=generator)
        negative = torch.rand(n, device=images.device, generator=generator) < 0.5
        group_key = (op_index * 2 + negative.long()).cpu()  # one host copy per op slot, not per image
        for key in group_key.unique().tolist():
            name = names[key // 2]
            magnitudes, signed = space[name]
            value = float(magnitudes[magnitude].item()) if magnitudes.ndim > 0 else 0.0
            if signed and key % 2:
                value = -value
            if name == "Identity":
                continue
            idx = (group_key == key).nonzero().squeeze(1).to(images.device)
            out[idx] = _apply_op(out[idx], name, value, interpolation=InterpolationMode.NEAREST, fill=None)
    return out


class NoAugment:
    """`aug=none`: the images as they are."""

    name = "none"

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return images

    def pil_transforms(self, image_size: int) -> list:
        return []


class FlipCrop:
    """`aug=fc`: RandomCrop(size, padding) + RandomHorizontalFlip."""

    name = "fc"

    def __init__(self, padding: int = 4) -> None:
        self.padding = padding

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return random_flip(random_crop(images, self.padding, generator), generator)

    def pil_transforms(self, image_size: int) -> list:
        return [T.RandomCrop(image_size, padding=self.padding), T.RandomHorizontalFlip()]


class FlipCropRandAugment(FlipCrop):
    """`aug=fcra`: fc followed by RandAugment(N=num_ops, M=magnitude)."""

    name = "fcra"

    def __init__(self, padding: int = 4, num_ops: int = 2, magnitude: int = 14) -> None:
        super().__init__(padding)
        if not 0 <= magnitude < RANDAUGMENT_BINS:
            raise ValueError(f"aug.magnitude={magnitude} must be in [0, {RANDAUGMENT_BINS - 1}]")
        if num_ops < 0:
            raise ValueError(f"aug.num_ops={num_ops} must be >= 0")
        self.num_ops = num_ops
        self.magnitude = magnitude

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return rand_augment(super().__call__(images, generator), self.num_ops, self.magnitude, generator)

    def pil_transforms(self, image_size: int) -> list:
        return super().pil_transforms(image_size) + [T.RandAugment(self.num_ops, self.magnitude)]
