"""The field's published CIFAR teachers: RepDistiller's checkpoints (re-released by mdistiller as
`cifar_teachers.tar`: resnet56, resnet110, resnet32x4, wrn_40_2, vgg13, ResNet50, e.g.
`vgg13_vanilla/ckpt_epoch_240.pth`), recognised by their shapes and loaded into kd's networks.

Their files hold {"model": state_dict, "epoch", "best_acc", "optimizer"}, the state dict's keys prefixed
"module." when saved from DataParallel. kd's WRN, VGG, MobileNetV2, ShuffleNets and ResNet50 use their
module names, so their state dicts load as they are. kd's CIFAR ResNets (kd/models/resnet.py) compute
what their models/resnet.py computes with other names:

    theirs                                   kd's
    conv1, bn1, fc                           the same
    layer{s}.{i}.{conv1,bn1,conv2,bn2}       layers.{(s - 1) * n + i}.{conv1,bn1,conv2,bn2}
    layer{s}.{i}.downsample.{0,1}            layers.{(s - 1) * n + i}.shortcut.{0,1}

where n is the number of blocks per stage. Which network a file holds is read off its keys and shapes,
compared with every network of conf/model/ built on the meta device (no memory, no time).
"""
from __future__ import annotations

import re
from typing import Optional

import torch
from hydra.utils import get_object
from omegaconf import OmegaConf

from kd.paths import CONF_DIR

_BLOCK_KEY = re.compile(r"layer([123])\.(\d+)\.(.+)")
MODEL_CONFIGS = CONF_DIR / "model"


def is_repdistiller(ckpt: dict) -> bool:
    """Their layout: a dict whose "model" is a state dict (tensors by name)."""
    model = ckpt.get("model")
    return isinstance(model, dict) and bool(model) and all(torch.is_tensor(v) for v in model.values())


def strip_data_parallel(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.removeprefix("module."): v for k, v in state.items()}


def _is_basic_resnet(state: dict[str, torch.Tensor]) -> bool:
    """Their models/resnet.py (basic blocks, `fc`), which kd names otherwise; not resnetv2's ResNet50 (`linear`)."""
    return "fc.weight" in state and "layer1.0.conv1.weight" in state and "layer4.0.conv1.weight" not in state


def to_kd(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Their state dict (without "module.") under kd's module names: renamed for a CIFAR ResNet, else as it is."""
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
    return {k: tuple(v.shape) for k, v in state.items()}


def num_classes_of(state: dict[str, torch.Tensor]) -> Optional[int]:
    """The classifier's outputs: the last matrix of the state dict (every CIFAR network here ends in its classifier)."""
    matrices = [v for v in state.values() if v.ndim == 2]
    return int(matrices[-1].shape[0]) if matrices else None


def identify(state: dict[str, torch.Tensor]) -> tuple[Optional[str], Optional[int]]:
    """(kd's name for the network a state dict in kd's names holds, or None if none of conf/model/ fits; its classes)."""
    classes = num_classes_of(state)
    if classes is None:
        return None, None
    wanted = _signature(state)
    for path in sorted(MODEL_CONFIGS.glob("*.yaml")):
        target = OmegaConf.load(path).get("_target_")
        if not target or not target.startswith("kd.models."):
            continue
        with torch.device("meta"):
            candidate = get_object(target)(num_classes=classes)
        if _signature(candidate.state_dict()) == wanted:
            return target.rsplit(".", 1)[-1], classes
    return None, classes
