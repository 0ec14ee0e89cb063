"""The ladder beyond the paper's three levels, each fc first (crop + flip, as in fcra), then:

- `fcta`: TrivialAugmentWide; `fcaa`: AutoAugment with torchvision's CIFAR10 policy; per image, with
  torchvision's ops, magnitudes and draws (kd/data/augment.py's `apply_choices`);
- `fccutout`: Cutout (DeVries and Taylor 2017): one size x size square zeroed at a uniform centre per image
  (16 on CIFAR);
- `fcmixup` / `fccutmix`: Mixup / CutMix within the batch, as torchvision.transforms.v2 does them (each image
  mixed with the one before it, one lambda per batch). They also mix the labels: `mix` returns the images
  and soft targets (lambda * one-hot(y) + (1 - lambda) * one-hot(partner's y)), whose cross-entropy is the
  lambda-weighted CE of the two labels; the teacher sees the mixed images, as the student does.

Unlike none/fc/fcra these always use the grouped form (TrivialAugmentWide alone has 868 op x magnitude x
sign choices) and read a few numbers to the host per batch (lambda, the box).
"""
from __future__ import annotations

import functools
import math

import torch
import torchvision.transforms as T
from scipy import stats
from torchvision.transforms import v2

from kd.data.augment import Choice, FlipCrop, _op_value, apply_choices

TA_OPS = tuple(T.TrivialAugmentWide()._augmentation_space(31))
AA_POLICY = T.AutoAugment(T.AutoAugmentPolicy.CIFAR10).policies
AA_BINS = 10  # torchvision's AutoAugment magnitude bins


class FlipCropTrivialAugment(FlipCrop):
    """`aug=fcta`: fc, then TrivialAugmentWide: one op, a uniform magnitude bin and sign per image."""

    name = "fcta"

    def __init__(self, padding: int | None = None, num_magnitude_bins: int = 31) -> None:
        super().__init__(padding)
        if num_magnitude_bins < 2:
            raise ValueError(f"aug.num_magnitude_bins={num_magnitude_bins} must be >= 2")
        self.bins = num_magnitude_bins

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.trivial_augment(super().__call__(images, generator), generator)

    def trivial_augment(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, device = images.shape[0], images.device
        choices, has_bins, signed = trivial_augment_table(self.bins, device)
        op = torch.randint(len(TA_OPS), (n,), device=device, generator=generator)
        magnitude_bin = torch.randint(self.bins, (n,), device=device, generator=generator)
        negative = torch.rand(n, device=device, generator=generator) < 0.5
        keys = (op * self.bins + magnitude_bin * has_bins[op]) * 2 + (negative & signed[op]).long()
        return apply_choices(images, keys[None], choices, form="grouped")

    def pil_transforms(self, image_size: int) -> list:
        return super().pil_transforms(image_size) + [T.TrivialAugmentWide(self.bins)]


@functools.cache
def trivial_augment_table(bins: int, device: torch.device) -> tuple[list[Choice], torch.Tensor, torch.Tensor]:
    """TrivialAugmentWide's choices ((op * bins + bin) * 2 + sign; ops without magnitudes or sign repeat their one
    value), and which ops take a bin and a sign, on `device`: made once, not copied to the device every batch."""
    space = T.TrivialAugmentWide()._augmentation_space(bins)
    choices = [(name, _op_value(space, name, b, negative=bool(sign) and space[name][1]) if space[name][0].ndim > 0
                else 0.0)
               for name in TA_OPS for b in range(bins) for sign in (0, 1)]
    has_bins = torch.tensor([space[name][0].ndim > 0 for name in TA_OPS], device=device)
    return choices, has_bins, torch.tensor([space[name][1] for name in TA_OPS], device=device)


class FlipCropAutoAugment(FlipCrop):
    """`aug=fcaa`: fc, then AutoAugment's CIFAR10 policy: a sub-policy per image, each of its two ops
    applied with its probability, a signed op's sign a fair coin."""

    name = "fcaa"

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.auto_augment(super().__call__(images, generator), generator)

    @staticmethod
    def auto_augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, device = images.shape[0], images.device
        choices, probabilities, signs = auto_augment_table(tuple(images.shape[-2:]), device)
        policy = torch.randint(len(AA_POLICY), (n,), device=device, generator=generator)
        draws = torch.rand(n, 2, device=device, generator=generator)
        negative = torch.rand(n, 2, device=device, generator=generator) < 0.5
        identity = 2 * len(AA_POLICY)
        keys = []
        for slot in range(2):
            offset = slot * (identity + 1)
            probability, signed = probabilities[slot][policy], signs[slot][policy]
            key = policy * 2 + (negative[:, slot] & signed).long()
            keys.append(offset + torch.where(draws[:, slot] <= probability, key, torch.full_like(key, identity)))
        return apply_choices(images, torch.stack(keys), choices, form="grouped")

    def pil_transforms(self, image_size: int) -> list:
        return super().pil_transforms(image_size) + [T.AutoAugment(T.AutoAugmentPolicy.CIFAR10)]


@functools.cache
def auto_augment_table(size: tuple[int, int], device: torch.device
                       ) -> tuple[list[Choice], torch.Tensor, torch.Tensor]:
    """AutoAugment's choices for images of `size` (slot 0's, policy * 2 + sign of its op, then Identity, not
    applied; slot 1's after them), and each slot's probability and sign table by policy, (2, policies) on `device`:
    made once, not copied to the device every batch."""
    space = T.AutoAugment()._augmentation_space(AA_BINS, list(size))
    choices: list[Choice] = []
    for slot in range(2):
        for name, _, magnitude_id in (sub[slot] for sub in AA_POLICY):
            for sign in (0, 1):
                value = _op_value(space, name, magnitude_id, bool(sign) and space[name][1]) \
                    if magnitude_id is not None else 0.0
                choices.append((name, value))
        choices.append(("Identity", 0.0))
    probabilities = torch.tensor([[sub[slot][1] for sub in AA_POLICY] for slot in range(2)], device=device)
    signs = torch.tensor([[space[sub[slot][0]][1] for sub in AA_POLICY] for slot in range(2)], device=device)
    return choices, probabilities, signs


def cutout(images: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """Zero a size x size square (clipped at the borders) around a uniform centre in each image."""
    n, _, h, w = images.shape
    cy = torch.randint(h, (n,), device=images.device, generator=generator)
    cx = torch.randint(w, (n,), device=images.device, generator=generator)
    rows, cols = torch.arange(h, device=images.device), torch.arange(w, device=images.device)
    inside_y = (rows >= cy[:, None] - size // 2) & (rows < cy[:, None] + size // 2)
    inside_x = (cols >= cx[:, None] - size // 2) & (cols < cx[:, None] + size // 2)
    inside = inside_y[:, None, :, None] & inside_x[:, None, None, :]
    return torch.where(inside, torch.zeros_like(images), images)


class CutoutPIL:
    """The same Cutout on one PIL image, for the DataLoader reference pipeline (torchvision has none)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, image):
        tensor = T.functional.pil_to_tensor(image)[None]
        return T.functional.to_pil_image(cutout(tensor, self.size, torch.default_generator)[0])


class FlipCropCutout(FlipCrop):
    """`aug=fccutout`: fc, then Cutout with a `size` x `size` square.

    `size=None` is half the image size: 16 on 32x32 CIFAR, DeVries and Taylor's square, and a like-for-like
    8 on the 16x16 digits (a 16-pixel square would erase a whole digit).
    """

    name = "fccutout"

    def __init__(self, padding: int | None = None, size: int | None = None) -> None:
        super().__init__(padding)
        if size is not None and size < 1:
            raise ValueError(f"aug.size={size} must be >= 1 (pixels), or null for half the image size")
        self.size = size

    def size_for(self, image_size: int) -> int:
        return image_size // 2 if self.size is None else self.size

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return cutout(super().__call__(images, generator), self.size_for(images.shape[-1]), generator)

    def pil_transforms(self, image_size: int) -> list:
        return super().pil_transforms(image_size) + [CutoutPIL(self.size_for(image_size))]


def beta_draw(alpha: float, generator: torch.Generator, device: torch.device) -> float:
    """lambda ~ Beta(alpha, alpha) from the pipeline's own generator (so resume replays it), by inverse CDF."""
    u = float(torch.rand((), device=device, generator=generator))
    return float(torch.tensor(stats.beta.ppf(u, alpha, alpha), dtype=torch.float32))  # torchvision's is float32


def soft_targets(labels: torch.Tensor, num_classes: int, lam: float) -> torch.Tensor:
    """lam * one-hot(y) + (1 - lam) * one-hot(the previous image's y), as torchvision.transforms.v2 mixes labels."""
    one_hot = torch.nn.functional.one_hot(labels, num_classes).float()
    return one_hot.roll(1, 0).mul_(1.0 - lam).add_(one_hot.mul(lam))


class MixWithinBatch(FlipCrop):
    """fc, then a mixing of each image with the one before it; `mix` runs on the normalized batch (mixing commutes
    with the affine normalization) and returns soft targets."""

    default_alpha = 1.0

    def __init__(self, padding: int | None = None, alpha: float | None = None) -> None:
        super().__init__(padding)
        alpha = self.default_alpha if alpha is None else alpha
        if not alpha > 0:
            raise ValueError(f"aug.alpha={alpha} must be > 0 (Beta(alpha, alpha))")
        self.alpha = alpha


class FlipCropMixup(MixWithinBatch):
    """`aug=fcmixup`: fc, then Mixup within the batch, lambda ~ Beta(alpha, alpha) per batch (alpha 0.2)."""

    name = "fcmixup"
    default_alpha = 0.2

    def mix(self, images: torch.Tensor, labels: torch.Tensor, num_classes: int, generator: torch.Generator
            ) -> tuple[torch.Tensor, torch.Tensor]:
        lam = beta_draw(self.alpha, generator, images.device)
        mixed = images.roll(1, 0).mul(1.0 - lam).add_(images.mul(lam))
        return mixed, soft_targets(labels, num_classes, lam)

    def batch_transform(self, num_classes: int):
        return v2.MixUp(alpha=self.alpha, num_classes=num_classes)


class FlipCropCutMix(MixWithinBatch):
    """`aug=fccutmix`: fc, then CutMix within the batch: one box per batch pasted from the previous image,
    lambda ~ Beta(alpha, alpha) (alpha 1) setting its area, the labels mixed by the box's actual share."""

    name = "fccutmix"

    def mix(self, images: torch.Tensor, labels: torch.Tensor, num_classes: int, generator: torch.Generator
            ) -> tuple[torch.Tensor, torch.Tensor]:
        h, w = images.shape[-2:]
        lam = beta_draw(self.alpha, generator, images.device)
        x1, y1, x2, y2 = cutmix_box(h, w, lam, generator, images.device)
        mixed = images.clone()
        mixed[..., y1:y2, x1:x2] = images.roll(1, 0)[..., y1:y2, x1:x2]
        return mixed, soft_targets(labels, num_classes, 1.0 - (x2 - x1) * (y2 - y1) / (w * h))

    def batch_transform(self, num_classes: int):
        return v2.CutMix(alpha=self.alpha, num_classes=num_classes)


class FlipCropCutMixPick(FlipCropCutMix):
    """`aug=fccutmixpick`: Wang et al.'s CutMixPick (NeurIPS 2022, "What makes a 'good' data augmentation in KD",
    sec. 4.3; their helper/loops.py `cutmix_pick` with `--cutmix_pick_criterion teacher_entropy`): fc, then
    `aug.runs` CutMix draws of the batch pooled (runs x N images, each with its soft targets), of which the N
    that the teacher is least sure of (the highest entropy of its softmax, T=1) are kept. A picked image may
    come twice (two boxes on one image); the teacher scores the pool, so even an alpha=0 cell needs a teacher."""

    name = "fccutmixpick"

    def __init__(self, padding: int | None = None, alpha: float | None = None, runs: int = 2) -> None:
        super().__init__(padding, alpha)
        if runs < 2:
            raise ValueError(f"aug.runs={runs}: CutMixPick picks from a pool of runs >= 2 CutMix draws of the batch")
        self.runs = runs

    def pool(self, images: torch.Tensor, labels: torch.Tensor, num_classes: int, generator: torch.Generator
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`runs` CutMix draws of one fc batch, stacked: (images, soft targets, each row's image in the batch)."""
        draws = [self.mix(images, labels, num_classes, generator) for _ in range(self.runs)]
        rows = torch.arange(len(images), device=images.device).repeat(self.runs)
        return torch.cat([x for x, _ in draws]), torch.cat([y for _, y in draws]), rows

    @staticmethod
    def pick(scores: torch.Tensor, n: int) -> torch.Tensor:
        """The rows of the n highest scores (the earliest of equal ones first: reproducible)."""
        return torch.argsort(scores, descending=True, stable=True)[:n]

    def batch_transform(self, num_classes: int):
        raise ValueError("aug=fccutmixpick needs the teacher inside the data stream, which only "
                         "trainer.pipeline=device has; use trainer.pipeline=device")


def picks_with_teacher(aug_target: str) -> bool:
    """Whether the augmentation `aug._target_` names picks its batches with the teacher (CutMixPick)."""
    from hydra.utils import get_class

    return hasattr(get_class(aug_target), "pick")


def teacher_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) per row, in nats: CutMixPick's score (0 log 0 counts as 0)."""
    logp = torch.log_softmax(logits.float(), dim=1)
    return -(logp.exp() * logp).sum(1)


def cutmix_box(h: int, w: int, lam: float, generator: torch.Generator, device: torch.device
               ) -> tuple[int, int, int, int]:
    """torchvision.transforms.v2.CutMix's box: a uniform centre, sides sqrt(1 - lam) of the image's, clipped."""
    r_x = int(torch.randint(w, (), device=device, generator=generator))
    r_y = int(torch.randint(h, (), device=device, generator=generator))
    r = 0.5 * math.sqrt(1.0 - lam)
    half_w, half_h = int(r * w), int(r * h)
    return max(r_x - half_w, 0), max(r_y - half_h, 0), min(r_x + half_w, w), min(r_y + half_h, h)
