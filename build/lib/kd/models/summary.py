"""A network's size and cost on the job's images, measured before any work on the meta device (no memory, no time).

Counting on the real input shape also proves the network can run on it: VGG's max-pools need 8x8 images,
and a network that cannot take the data's images is refused with the size it needs, before a teacher trains.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch.utils.flop_counter import FlopCounterMode


class NetworkSize(NamedTuple):
    params: int
    macs: int  # multiply-accumulates of one image's forward (convolutions and linear layers)

    def format(self) -> str:
        return f"{self.params / 1e6:.2f}M params, {self.macs / 1e6:.1f}M MACs per image"


class ImageTooSmallError(ValueError):
    """The data's images are too small for the network's downsampling."""


def network_size(model_cfg: DictConfig, num_classes: int, image_shape: tuple[int, ...], key: str) -> NetworkSize:
    """Parameters and MACs of `model_cfg` on one image of `image_shape` (C, H, W); `key` names it in errors."""
    try:
        return _count(model_cfg, num_classes, image_shape, "meta")
    except (RuntimeError, NotImplementedError):  # an op without a meta kernel (a user's network): count for real
        pass
    try:
        return _count(model_cfg, num_classes, image_shape, "cpu")
    except RuntimeError as err:
        size = "x".join(map(str, image_shape[1:]))
        raise ImageTooSmallError(
            f"{key} ({model_cfg._target_}) cannot run on the data's {size} images: {str(err).splitlines()[0]}. "
            f"Use larger images (data.image_size=16 or 32 for digits and folders) or another network.") from None


def _count(model_cfg: DictConfig, num_classes: int, image_shape: tuple[int, ...], device: str) -> NetworkSize:
    with torch.device(device):
        model = instantiate(model_cfg, num_classes=num_classes).eval()
        images = torch.zeros((1, *image_shape))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(images)
    return NetworkSize(sum(p.numel() for p in model.parameters()), counter.get_total_flops() // 2)
