"""Teachers from other code bases: the field's published CIFAR teachers and the files most training scripts
write, recognised by their shapes and loaded into kd's networks.

The published teachers are RepDistiller's checkpoints (re-released by mdistiller as `cifar_teachers.tar`:
resnet56, resnet110, resnet32x4, wrn_40_2, vgg13, ResNet50, e.g. `vgg13_vanilla/ckpt_epoch_240.pth`), which
hold {"model": state_dict, "epoch", "best_acc", "optimizer"}, written by PyTorch 0.4.0 (RepDistiller's
README): its BatchNorms saved no `num_batches_tracked`, which PyTorch's load_state_dict fills in (with 0)
for a file that does not claim to have them. Other scripts save the state dict bare or under "state_dict"
or "net", its keys prefixed "module." by DataParallel/DDP and "_orig_mod." by torch.compile.

kd's WRN, VGG, MobileNetV2, ShuffleNets and ResNet50 use RepDistiller's module names, so their state dicts
load as they are. kd's CIFAR ResNets (kd/models/resnet.py) compute what their models/resnet.py computes
with other names:

    theirs                                   kd's
    conv1, bn1, fc                           the same
    layer{s}.{i}.{conv1,bn1,conv2,bn2}       layers.{(s - 1) * n + i}.{conv1,bn1,conv2,bn2}
    layer{s}.{i}.downsample.{0,1}            layers.{(s - 1) * n + i}.shortcut.{0,1}

where n is the number of blocks per stage. Which network a file holds is read off its keys and shapes,
compared with every network of conf/model/ built on the meta device (no memory, no time).
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Optional

import torch
from hydra.utils import get_object
from omegaconf import OmegaConf

from kd.checkpoint import CheckpointError
from kd.paths import CONF_DIR

log = logging.getLogger(__name__)

_BLOCK_KEY = re.compile(r"layer([123])\.(\d+)\.(.+)")
_WRAPPER_PREFIX = re.compile(r"(?:module\.|_orig_mod\.)+")  # DataParallel/DDP, torch.compile, nested either way
_OPTIONAL_KEY = ".num_batches_tracked"
MODEL_CONFIGS = CONF_DIR / "model"
# The keys a training script's checkpoint keeps its state dict under, and the name kd records for each form.
STATE_KEYS = {"model": "RepDistiller/mdistiller", "state_dict": "{'state_dict': ...}", "net": "{'net': ...}"}
BARE = "bare state dict"


def _is_state_dict(value: Any) -> bool:
    return (isinstance(value, dict) and bool(value)
            and all(isinstance(k, str) and torch.is_tensor(v) for k, v in value.items()))


def state_dict_of(ckpt: dict, what: str, fix: str) -> tuple[dict[str, torch.Tensor], str]:
    """The state dict a checkpoint holds, bare or under one of STATE_KEYS, and its form's name; refuse any other
    dict, and one holding state dicts under two of the keys (which one is the teacher is not kd's to guess)."""
    if _is_state_dict(ckpt):
        return ckpt, BARE
    held = [key for key in STATE_KEYS if _is_state_dict(ckpt.get(key))]
    if len(held) == 1:
        return ckpt[held[0]], STATE_KEYS[held[0]]
    keys = ", ".join(map(str, list(ckpt)[:6])) + (", ..." if len(ckpt) > 6 else "")
    forms = ", ".join(f"'{key}'" for key in STATE_KEYS)
    if held:
        raise CheckpointError(
            f"{what} holds a state dict under each of {', '.join(held)}; kd cannot tell which is the teacher. "
            f"Save the one to use alone (torch.save(ckpt[...], path)). {fix}")
    raise CheckpointError(
        f"{what} is not one kd wrote (it lacks arch, num_classes, state_dict), nor a state dict, bare or under "
        f"one of {forms} (RepDistiller/mdistiller's is under 'model'); its top-level keys are: {keys}. Save the "
        f"network's state dict in one of those forms (torch.save(model.state_dict(), path)). {fix}")


def strip_prefixes(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The keys without DataParallel's/DDP's "module." and torch.compile's "_orig_mod." prefixes, and those found.

    The new dict carries no `_metadata`, so load_state_dict takes every module as saved by an old PyTorch
    and fills in a BatchNorm's missing num_batches_tracked, as it does for a file of PyTorch before 0.4.1."""
    stripped, prefixes = {}, set()
    for key, value in state.items():
        prefix = _WRAPPER_PREFIX.match(key)
        if prefix is not None:
            prefixes.add(prefix.group(0))
            key = key[prefix.end():]
        stripped[key] = value
    return stripped, sorted(prefixes)


def _is_basic_resnet(state: dict[str, torch.Tensor]) -> bool:
    """Their models/resnet.py (basic blocks, `fc`), which kd names otherwise; not resnetv2's ResNet50 (`linear`)."""
    return "fc.weight" in state and "layer1.0.conv1.weight" in state and "layer4.0.conv1.weight" not in state


def to_kd(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Their state dict (its prefixes stripped) under kd's module names: renamed for a CIFAR ResNet, else as it is."""
    if not _is_basic_resnet(state):
        return state
    blocks = len({m.group(2) for m in map(_BLOCK_KEY.fullmatch, state) if m and m.group(1) == "1"})
    renamed = {}
    for key, value in state.items():
        m = _BLOCK_KEY.fullmatch(key)
        if m is None:
            renamed[key] = value
            continue
        stage, index, rest = int(m.group(1)), int(m.group(2)), m.group(3)
        renamed[f"layers.{(stage - 1) * blocks + index}.{rest.replace('downsample.', 'shortcut.')}"] = value
    return renamed


def _signature(state: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    """Shapes by name, without BatchNorm's num_batches_tracked: a file of PyTorch before 0.4.1 has none, and
    load_state_dict accepts it, so the network is the same with or without them."""
    return {k: tuple(v.shape) for k, v in state.items() if not k.endswith(_OPTIONAL_KEY)}


def num_classes_of(state: dict[str, torch.Tensor]) -> Optional[int]:
    """The classifier's outputs: the last matrix of the state dict (every CIFAR network here ends in its classifier)."""
    matrices = [v for v in state.values() if v.ndim == 2]
    return int(matrices[-1].shape[0]) if matrices else None


def identify(state: dict[str, torch.Tensor], configs: Path = MODEL_CONFIGS) -> tuple[dict[Path, str], Optional[int]]:
    """(The configs under `configs` whose networks have a state dict in kd's names of these shapes, each with
    its factory's name; the state dict's classes)."""
    classes = num_classes_of(state)
    if classes is None:
        return {}, None
    wanted = _signature(state)
    fits = {}
    for path in sorted(configs.glob("*.yaml")):
        target = OmegaConf.load(path).get("_target_")
        if not target or not target.startswith("kd.models."):
            continue
        with torch.device("meta"):
            candidate = get_object(target)(num_classes=classes)
        if _signature(candidate.state_dict()) == wanted:
            fits[path] = target.rsplit(".", 1)[-1]
    return fits, classes


def read(ckpt: dict, what: str, fix: str,
         configs: Path = MODEL_CONFIGS) -> tuple[dict[str, torch.Tensor], str, int, str]:
    """A checkpoint kd did not write, in any of the forms above: (its state dict in kd's names, the network
    it holds, by its factory's name, its classes, its form). Refuse one that holds none of kd's networks, or
    that fits two of them (same shapes, maybe not the same forward), naming them."""
    saved, form = state_dict_of(ckpt, what, fix)
    stripped, prefixes = strip_prefixes(saved)
    state = to_kd(stripped)
    fits, classes = identify(state, configs)
    if not fits:
        keys = ", ".join(list(state)[:4])
        raise CheckpointError(
            f"{what} ({form} format) holds none of kd's networks ({configs}): {len(state)} tensors, {classes} "
            f"classes, starting {keys}, .... {fix}")
    if len(fits) > 1:
        named = " and ".join(f"{name} ({path})" for path, name in fits.items())
        raise CheckpointError(
            f"{what} ({form} format) fits {named}: their networks have the same shapes, so kd cannot tell which "
            f"the file was trained as. Save it in kd's own format, which names its network: torch.save({{'arch': "
            f"<name>, 'num_classes': {classes}, 'state_dict': <its state dict>}}, path). {fix}")
    (found,) = fits.values()
    log.info("%s (%s format%s) holds %s with %d classes", what, form,
             f", prefixes {' '.join(prefixes)} stripped" if prefixes else "", found, classes)
    return state, found, classes, form
