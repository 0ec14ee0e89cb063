"""The paper's three augmentation policies: none, fc (flip + crop), fcra (fc + RandAugment).

fc and fcra come in two recipes (`aug.recipe`): `cifar` crops at a random offset from the image zero-padded by an
eighth of its size (the CIFAR papers' RandomCrop(32, padding=4)); `imagenet` is RandomResizedCrop(size) instead,
as torchvision's and mdistiller's ImageNet recipes (kd/data/resized_crop.py). Either is the crop, then the rest
(`after_crop`: the flip, RandAugment): a streaming source crops where it decodes the files (kd/data/stream.py).

Each policy works two ways with the same semantics as torchvision:
- called on a uint8 batch (N, C, H, W) on the training device, it draws fresh
  parameters for every image (torchvision's transforms on a batch tensor would draw
  one set for the whole batch, which is not per-image augmentation);
- `pil_transforms()` gives the torchvision transforms of the conventional
  DataLoader pipeline, kept as the reference.
"""
from __future__ import annotations

import functools

import torch
import torchvision.transforms as T
from torchvision.transforms import InterpolationMode
from torchvision.transforms.autoaugment import _apply_op  # torchvision's own op code: same outputs by construction

from kd.data.resized_crop import random_resized_crops

RANDAUGMENT_BINS = 31  # torchvision's default number of magnitude bins
# torchvision's RandAugment ops, in the order of its augmentation space (an op index means the same in both)
RANDAUGMENT_OPS = tuple(T.RandAugment()._augmentation_space(RANDAUGMENT_BINS, (32, 32)))
# The ops that move pixels: with nearest-neighbour sampling each is a fixed gather (`pixel_sources`)
GEOMETRIC_OPS = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
Choice = tuple[str, float]  # one of torchvision's `_apply_op` ops and its signed magnitude
FORMS = ("select", "grouped")  # apply_choices' two ways to the same images
RECIPES = ("cifar", "imagenet")  # fc's crop: padded RandomCrop, or RandomResizedCrop


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


def draw_rand_augment(n: int, num_ops: int, device: torch.device, generator: torch.Generator
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image's ops and signs, (num_ops, n) each: op uniform over torchvision's 14, sign a fair coin.

    A sign is drawn for every op, as it costs nothing; unsigned ops ignore it.
    """
    ops = torch.randint(len(RANDAUGMENT_OPS), (num_ops, n), device=device, generator=generator)
    negative = torch.rand(num_ops, n, device=device, generator=generator) < 0.5
    return ops, negative


def apply_rand_augment(images: torch.Tensor, ops: torch.Tensor, negative: torch.Tensor, magnitude: int,
                       form: str | None = None) -> torch.Tensor:
    """Apply each image's drawn ops in order, as torchvision's RandAugment(magnitude) would."""
    choices, signed = rand_augment_table(tuple(images.shape[-2:]), magnitude, ops.device)
    return apply_choices(images, ops * 2 + (negative & signed[ops]).long(), choices, form)


@functools.cache
def rand_augment_table(size: tuple[int, int], magnitude: int, device: torch.device
                       ) -> tuple[list[Choice], torch.Tensor]:
    """RandAugment's choices for images of `size` (key op * 2 + sign: the op at +/- the magnitude; unsigned ops
    ignore the sign, both keys are the same op) and which ops take a sign, on `device`. Built once: made in the
    step, torchvision's magnitude tables and a host-to-device copy of the signs would cost every batch."""
    space = T.RandAugment()._augmentation_space(RANDAUGMENT_BINS, list(size))
    choices = [(name, _op_value(space, name, magnitude, negative=bool(sign) and space[name][1]))
               for name in RANDAUGMENT_OPS for sign in (0, 1)]
    return choices, torch.tensor([space[name][1] for name in RANDAUGMENT_OPS], device=device)


def _op_value(space: dict, name: str, magnitude: int, negative: bool) -> float:
    magnitudes, _ = space[name]
    value = float(magnitudes[magnitude].item()) if magnitudes.ndim > 0 else 0.0  # a CPU tensor: no device sync
    return -value if negative else value


def apply_choices(images: torch.Tensor, keys: torch.Tensor, choices: list[Choice], form: str | None = None
                  ) -> torch.Tensor:
    """Apply, slot after slot, each image's drawn op: `keys[slot, i]` indexes `choices` for image i.

    Two forms with identical outputs (tested): "grouped" transforms the images that drew the same
    choice together with torchvision's own `_apply_op` (the least work; it reads group sizes to the
    host, cheap on a CPU) and "select" computes every choice on the whole batch and picks each image's
    (no host sync, data-independent shapes: for CUDA, where a sync stalls the GPU and 32x32 ops cost
    little). None: by device.
    """
    form = form or ("select" if images.device.type == "cuda" else "grouped")
    out = images
    for slot in keys:
        out = (_select if form == "select" else _grouped)(out, slot, choices)
    return out


def _grouped(images: torch.Tensor, keys: torch.Tensor, choices: list[Choice]) -> torch.Tensor:
    out = images.clone()
    # Sorting the keys gives every group's images at once: two host reads per slot, not one per group.
    uniques, counts = keys.unique(return_counts=True)
    for key, idx in zip(uniques.tolist(), keys.argsort(stable=True).split(counts.tolist())):
        name, value = choices[key]
        if name != "Identity":
            out[idx] = _apply_op(out[idx], name, value, interpolation=InterpolationMode.NEAREST, fill=None)
    return out


def _select(images: torch.Tensor, keys: torch.Tensor, choices: list[Choice]) -> torch.Tensor:
    result, done = images, {}
    for key, (name, value) in enumerate(choices):
        if name == "Identity":
            continue
        if (name, value) not in done:  # an unsigned op appears under two keys: compute it once
            done[name, value] = _batch_op(images, name, value)
        result = torch.where((keys == key)[:, None, None, None], done[name, value], result)
    return result


def _batch_op(images: torch.Tensor, name: str, value: float) -> torch.Tensor:
    """torchvision's op on a whole batch; Equalize and AutoContrast rewritten without their host syncs
    (a data-dependent shape and a boolean-mask assignment), and the geometric ops without the affine matrix
    that torchvision copies to the device on every call, with the same outputs."""
    if name in GEOMETRIC_OPS:
        return move_pixels(images, pixel_sources(name, value, tuple(images.shape[-2:]), images.device))
    if name == "Equalize":
        return equalize(images)
    if name == "AutoContrast":
        return autocontrast(images)
    return _apply_op(images, name, value, interpolation=InterpolationMode.NEAREST, fill=None)


@functools.cache
def pixel_sources(name: str, value: float, size: tuple[int, int], device: torch.device) -> torch.Tensor:
    """Where each output pixel of torchvision's geometric op `name` at `value` comes from on images of `size`:
    1 + its source's flat index, 0 where it falls outside (filled with zeros). Nearest-neighbour sampling copies
    whole pixels from places that depend on the op alone, so running torchvision's own op once on an image of
    the indices (exact in float32, as its uint8 path samples) gives them; built once per op, size and device."""
    h, w = size
    indices = torch.arange(1, h * w + 1, dtype=torch.float32, device=device).reshape(1, 1, h, w)
    moved = _apply_op(indices, name, value, interpolation=InterpolationMode.NEAREST, fill=None)
    return moved.reshape(h * w).long()


def move_pixels(images: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
    """Each output pixel the input pixel `sources` names (`pixel_sources`), or zero."""
    n, c, h, w = images.shape
    padded = torch.cat([images.new_zeros(n, c, 1), images.reshape(n, c, h * w)], dim=2)
    return padded.index_select(2, sources).reshape(n, c, h, w)


def equalize(images: torch.Tensor) -> torch.Tensor:
    """torchvision's F.equalize on a uint8 batch, each image and channel its own histogram, without a sync."""
    n, c, h, w = images.shape
    flat = images.reshape(n * c, h * w).long()
    hist = torch.zeros(n * c, 256, dtype=torch.long, device=images.device).scatter_add_(1, flat, torch.ones_like(flat))
    last = 255 - hist.flip(1).ne(0).long().argmax(1)  # the last non-empty bin
    # torchvision: step = sum of the non-empty bins but the last, // 255; a step of 0 leaves the channel as it is
    step = (hist.sum(1) - hist.gather(1, last[:, None]).squeeze(1)) // 255
    safe = step.clamp(min=1)
    lut = (hist.cumsum(1) + (safe // 2)[:, None]) // safe[:, None]
    lut = torch.nn.functional.pad(lut, [1, 0])[:, :-1].clamp(0, 255)
    out = lut.gather(1, flat).to(torch.uint8).reshape(n, c, h, w)
    return torch.where((step == 0).reshape(n, c, 1, 1), images, out)


def autocontrast(images: torch.Tensor) -> torch.Tensor:
    """torchvision's F.autocontrast on a uint8 batch, with torch.where where it assigns through a mask."""
    minimum = images.amin(dim=(-2, -1), keepdim=True).float()
    maximum = images.amax(dim=(-2, -1), keepdim=True).float()
    scale = 255.0 / (maximum - minimum)
    flat = ~torch.isfinite(scale)  # a one-valued channel: left as it is
    minimum = torch.where(flat, torch.zeros_like(minimum), minimum)
    scale = torch.where(flat, torch.ones_like(scale), scale)
    return ((images - minimum) * scale).clamp(0, 255).to(torch.uint8)


def rand_augment(images: torch.Tensor, num_ops: int, magnitude: int, generator: torch.Generator,
                 form: str | None = None) -> torch.Tensor:
    """RandAugment(num_ops, magnitude) with a fresh op and sign per image and per op slot."""
    ops, negative = draw_rand_augment(images.shape[0], num_ops, images.device, generator)
    return apply_rand_augment(images, ops, negative, magnitude, form)


class NoAugment:
    """`aug=none`: the images as they are."""

    name = "none"

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return images

    def pil_transforms(self, image_size: int) -> list:
        return []


class FlipCrop:
    """`aug=fc`: a random crop + RandomHorizontalFlip.

    `recipe="cifar"`: RandomCrop(size, padding); `padding=None` pads by an eighth of the image size: 4 on 32x32
    CIFAR, exactly the paper's RandomCrop(32, padding=4), and a like-for-like 2 on the 16x16 digits.
    `recipe="imagenet"`: RandomResizedCrop(size) (scale 0.08-1, ratio 3/4-4/3); `padding` is unused.
    """

    name = "fc"

    def __init__(self, padding: int | None = None, recipe: str = "cifar") -> None:
        if padding is not None and padding < 0:
            raise ValueError(f"aug.padding={padding} must be >= 0 (or null for image size / 8)")
        if recipe not in RECIPES:
            raise ValueError(f"aug.recipe={recipe!r} must be one of {', '.join(RECIPES)}")
        self.padding = padding
        self.recipe = recipe

    def padding_for(self, image_size: int) -> int:
        return image_size // 8 if self.padding is None else self.padding

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.after_crop(self.crop(images, generator), generator)

    def crop(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The recipe's crop of each image, same size out as in."""
        if self.recipe == "imagenet":
            return random_resized_crops(list(images), images.shape[-1], generator)
        return random_crop(images, self.padding_for(images.shape[-1]), generator)

    def after_crop(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """What follows the crop: the flip."""
        return random_flip(images, generator)

    def pil_transforms(self, image_size: int) -> list:
        crop = (T.RandomResizedCrop(image_size) if self.recipe == "imagenet"
                else T.RandomCrop(image_size, padding=self.padding_for(image_size)))
        return [crop, T.RandomHorizontalFlip()]


class FlipCropRandAugment(FlipCrop):
    """`aug=fcra`: fc followed by RandAugment(N=num_ops, M=magnitude).

    `form` is `apply_choices`' (None: by device). No config key sets it, as both give the same images: code that
    checks or counts the CUDA step on a CPU sets "select" (tests/test_sync_guard.py, benchmarks/ops.py).
    """

    name = "fcra"

    def __init__(self, padding: int | None = None, num_ops: int = 2, magnitude: int = 14,
                 form: str | None = None, recipe: str = "cifar") -> None:
        super().__init__(padding, recipe)
        if not 0 <= magnitude < RANDAUGMENT_BINS:
            raise ValueError(f"aug.magnitude={magnitude} must be in [0, {RANDAUGMENT_BINS - 1}]")
        if num_ops < 0:
            raise ValueError(f"aug.num_ops={num_ops} must be >= 0")
        if form not in (None, *FORMS):
            raise ValueError(f"form={form!r} must be one of {FORMS} or None (by device)")
        self.num_ops = num_ops
        self.magnitude = magnitude
        self.form = form

    def after_crop(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return rand_augment(super().after_crop(images, generator), self.num_ops, self.magnitude, generator, self.form)

    def pil_transforms(self, image_size: int) -> list:
        return super().pil_transforms(image_size) + [T.RandAugment(self.num_ops, self.magnitude)]


def aug_name(target: str) -> str:
    """An augmentation's row in the tables: its class's `name` (kd's: none, fc, fcra, ...), else the class's name."""
    from hydra.utils import get_class

    cls = get_class(target)
    return getattr(cls, "name", None) or cls.__name__
