"""A split's images as their files, decoded per batch (kd/data/stream.py) where the decoded split would not fit.

`ImageFiles` stands where an in-memory split holds its uint8 tensor (kd/data/datasets.py `ImageSplits`): it has a
length, a shape and position indexing (for data.train_size / data.val_size), so the dataset code and the loop
treat both alike; `make_batches` (kd/training/engine.py) streams the one and slices the other.

Files are decoded with torchvision.io (libjpeg-turbo; PNG, GIF and WebP too), into uint8 (3, H, W) RGB: on this
machine's CPU, 570-650 images/s per core for an ImageNet-sized JPEG decoded and resized to 256 + cropped to 224,
against Pillow's 270-290 (benchmarks/bench_stream.py). A format torchvision.io cannot decode (BMP, TIFF, ...)
falls back to Pillow, as the in-memory path reads every file.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, replace

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_image, read_file
from torchvision.datasets.folder import default_loader
from torchvision.transforms.v2.functional import pil_to_tensor

from kd.data.image_folder import ImageFolderError, channel_stats
from kd.data.resized_crop import center_view

log = logging.getLogger(__name__)
# torchvision 0.29 marks its image decoders deprecated in favour of TorchCodec's, which is not installed here; they
# ship and work, and warning once per image would drown the log (and every worker's).
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision are deprecated",
                        category=DeprecationWarning)

STREAM_CHOICES = ("auto", "true", "false")
STATS_SAMPLE = 512  # images whose pixels estimate a streamed split's mean and std, evenly spaced over train/


@dataclass(frozen=True)
class ImageFiles:
    """A split's image files, each decoded to `image_size` squares: `crop_pct` is the clean view's share of the
    resized shorter side (Resize(image_size / crop_pct) + CenterCrop(image_size)); `gpu_decode` decodes JPEGs on
    the CUDA device instead of in the workers."""

    paths: np.ndarray  # of str: one array, not a list of objects, so forked workers do not copy it page by page
    image_size: int
    crop_pct: float = 1.0
    gpu_decode: bool = False

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, positions) -> "ImageFiles":
        return replace(self, paths=self.paths[np.asarray(positions.cpu() if torch.is_tensor(positions) else positions)])

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.paths), 3, self.image_size, self.image_size)


def read_image(path: str) -> torch.Tensor:
    """A file's pixels as uint8 (3, H, W) RGB; a clear error naming the file where it cannot be read."""
    try:
        return decode_image(read_file(path), mode=ImageReadMode.RGB)
    except RuntimeError:  # a format torchvision.io has no decoder for: Pillow, as ImageFolder's loader reads it
        try:
            return pil_to_tensor(default_loader(path))
        except (OSError, SyntaxError, ValueError) as err:
            raise ImageFolderError(f"cannot read image {path} ({type(err).__name__}: {err}). Replace or delete the "
                                   f"file.") from None


def should_stream(stream: str, counts: dict[str, int], image_size: int, above_gb: float) -> bool:
    """data.stream: true or false as set; auto streams when the decoded splits (uint8, 3 x image_size^2 bytes per
    image) would exceed data.stream_above_gb, and logs the rule with the numbers."""
    choice = str(stream).lower()
    if choice not in STREAM_CHOICES:
        raise ValueError(f"data.stream={stream} must be one of {', '.join(STREAM_CHOICES)}")
    images = sum(counts.values())
    decoded_gb = images * 3 * image_size * image_size / 1e9
    if choice != "auto":
        log.info("data.stream=%s: %s (%d images, %.1f GB decoded at %d px)", choice,
                 "streaming each batch from its files" if choice == "true" else "held in memory (decoded once, cached)",
                 images, decoded_gb, image_size)
        return choice == "true"
    streams = decoded_gb > above_gb
    log.info("data.stream=auto: %d images at %d px decode to %.2f GB, %s data.stream_above_gb=%g: %s", images,
             image_size, decoded_gb, "above" if streams else "within", above_gb,
             "streaming each batch from its files" if streams else "held in memory (decoded once, cached)")
    return streams


def sample_stats(files: ImageFiles) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of a streamed training split's clean view, estimated on STATS_SAMPLE images evenly
    spaced over it (the whole split is never decoded at once): data.mean / data.std set them instead."""
    picks = np.unique(np.linspace(0, len(files) - 1, min(STATS_SAMPLE, len(files))).round().astype(int))
    images = torch.stack([center_view(read_image(str(files.paths[i])), files.image_size, files.crop_pct)
                          for i in picks])
    mean, std = channel_stats(images)
    log.info("data.mean/std estimated on %d of the %d training images: mean %s std %s", len(picks), len(files),
             [round(v, 4) for v in mean.tolist()], [round(v, 4) for v in std.tolist()])
    return tuple(mean.tolist()), tuple(std.tolist())
