"""torchvision's published ImageNet weights as a teacher: `teacher.weights=IMAGENET1K_V1`, or the same file given
as `teacher.checkpoint=.../resnet34-b627a593.pth`; mdistiller's ImageNet teachers are these (pretrained=True).

torchvision publishes a network's weights as a bare state dict named by torch.hub's convention,
`<name>-<the first 8 or more hex digits of its sha256>.pth`, and downloads it once into torch.hub's cache
($TORCH_HOME/hub/checkpoints/), checking the hash as it downloads. kd reads that file as any published teacher
(kd/training/published_teachers.py) and checks the hash of every file so named each time it loads one, since a
copied or partly written file is never checked by torch.hub again.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

import torch.hub
from torchvision.models import WeightsEnum, get_model_weights

from kd.checkpoint import CheckpointError
from kd.models.imagenet_resnet import TORCHVISION_BUILDERS

MIN_HASH_DIGITS = 8  # torch.hub: "the first eight or more digits of the SHA256 hash"


def published_weights(arch: str, name: str) -> WeightsEnum:
    """torchvision's weights `name` (IMAGENET1K_V1, DEFAULT, ...) for kd's network `arch`."""
    builder = TORCHVISION_BUILDERS.get(arch)
    if builder is None:
        raise ValueError(f"teacher.weights={name}: torchvision publishes weights for teacher="
                         f"{', '.join(TORCHVISION_BUILDERS)}, not for teacher={arch}. Set teacher.weights=null (kd "
                         f"trains the teacher, or reads teacher.checkpoint) or pick one of those teachers.")
    members = get_model_weights(builder)
    try:
        return members[name]
    except KeyError:
        raise ValueError(f"teacher.weights={name} is none of torchvision's {members.__name__}: "
                         f"{', '.join(members.__members__)}") from None


def file_name(weights: WeightsEnum) -> str:
    return os.path.basename(urlparse(weights.url).path)


def weights_file(arch: str, name: str) -> Path:
    """torchvision's file of `teacher.weights`, downloaded into torch.hub's cache (hash checked) if not there."""
    weights = published_weights(arch, name)
    path = Path(torch.hub.get_dir()) / "checkpoints" / file_name(weights)
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(weights.url, str(path), hash_prefix=hash_prefix(path), progress=False)
    except OSError as err:  # urllib's URLError (no network, a proxy, DNS) is one
        raise CheckpointError(
            f"teacher.weights={name}: torchvision's {weights} could not be downloaded from {weights.url} into "
            f"{path.parent} ({err}). On a machine without network, download that file where there is one and "
            f"put it at {path} (or keep it anywhere and pass teacher.checkpoint=<its path>, keeping its name, "
            f"whose hash kd checks).") from None
    return path


def hash_prefix(path: Path) -> Optional[str]:
    """The sha256 prefix a file's name carries by torch.hub's convention (its HASH_REGEX), or None."""
    match = torch.hub.HASH_REGEX.search(path.name)
    return match.group(1) if match is not None and len(match.group(1)) >= MIN_HASH_DIGITS else None


def check_hash(path: Path, sha256: str) -> Optional[str]:
    """Refuse a file whose sha256 does not begin with the prefix its name carries (as torch.hub's
    download_url_to_file refuses a download); returns the prefix checked, or None for a name without one."""
    prefix = hash_prefix(path)
    if prefix is not None and not sha256.startswith(prefix):
        raise CheckpointError(
            f"teacher checkpoint {path}: its sha256 begins {sha256[:len(prefix)]}, but its name says {prefix} "
            f"(torchvision's and torch.hub's naming, <name>-<sha256 prefix>.pth): the file is damaged, partly "
            f"copied or not the published one. Download it again; a file of your own whose name only looks so "
            f"(a date?) can be renamed.")
    return prefix


def describe(path: Path, form: str, prefix: Optional[str]) -> str:
    """The format kd records for a published teacher's file: torchvision's weights by name where it is theirs."""
    for builder in TORCHVISION_BUILDERS.values():
        for weights in get_model_weights(builder):
            if file_name(weights) == path.name:
                return f"torchvision {weights}, sha256 {prefix} checked"
    return form if prefix is None else f"{form}, sha256 {prefix} checked"
