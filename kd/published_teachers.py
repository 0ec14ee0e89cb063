"""The field's published CIFAR teachers: RepDistiller's checkpoints (re-released by mdistiller as
`cifar_teachers.tar`, e.g. `resnet32x4_vanilla/ckpt_epoch_240.pth`), mapped onto kd's CIFAR ResNets.

Their models/resnet.py computes what kd/models.py computes: the same basic blocks (conv-BN-ReLU,
conv-BN, add, ReLU), a 1x1 conv + BN projection exactly where a block changes stride or width, and
AvgPool2d(8), which on 32x32 input is kd's global average. Only the names differ:

    theirs                                   kd's
    conv1, bn1, fc                           the same
    layer{s}.{i}.{conv1,bn1,conv2,bn2}       layers.{(s - 1) * n + i}.{conv1,bn1,conv2,bn2}
    layer{s}.{i}.downsample.{0,1}            layers.{(s - 1) * n + i}.shortcut.{0,1}

where n is the number of blocks per stage. Their files hold {"model": state_dict, "epoch", "best_acc",
"optimizer"}, the state dict's keys prefixed "module." when saved from DataParallel.
"""
from __future__ import annotations

import re

import torch

_BLOCK_KEY = re.compile(r"layer([123])\.(\d+)\.(.+)")
WIDE = (32, 64, 128, 256)  # the "x4" networks


def is_repdistiller(ckpt: dict) -> bool:
    model = ckpt.get("model")
    return isinstance(model, dict) and any(str(k).endswith("layer1.0.conv1.weight") for k in model)


def strip_data_parallel(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.removeprefix("module."): v for k, v in state.items()}


def describe(state: dict[str, torch.Tensor]) -> tuple[str, int]:
    """(kd's name for the network a RepDistiller state dict holds, its number of classes), read off its shapes."""
    blocks = len({m.group(2) for m in map(_BLOCK_KEY.fullmatch, state) if m and m.group(1) == "1"})
    widths = (state["conv1.weight"].shape[0],
              *(state[f"layer{s}.0.conv1.weight"].shape[0] for s in (1, 2, 3)))
    suffix = "x4" if widths == WIDE else "" if widths == (16, 16, 32, 64) else f" with widths {widths}"
    return f"resnet{6 * blocks + 2}{suffix}", state["fc.weight"].shape[0]


def to_kd(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a RepDistiller CIFAR ResNet state dict (without "module.") to kd's module names."""
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
