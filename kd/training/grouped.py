"""K copies of a network as one network with K times the channels: a stacked pack's students in one forward.

HFTA's horizontal fusion (Wang et al., MLSys 2021): student k's channels are the k-th block of every layer's
channels, a convolution becomes one grouped convolution (groups x K), a BatchNorm one BatchNorm over K times the
channels (its statistics are per channel, so per student), a Linear one block-diagonal product. The first layer
reads the shared batch and makes all K students' channels at once. A step then launches one model's kernels, with
none of vmap's per-layer reshapes (each a dispatched op, kd/training/stacking.py's fallback).

Every tensor keeps the K students' values as K contiguous blocks, student-major: `t.view(K, *shape)[k]` is
student k's own tensor, which is how the students' modules, their checkpoints and the optimizer's state read it.

A network whose forward mixes channels (a channel shuffle, a concatenation along channels) cannot be fused this
way; `group_models` finds that out by running both forms on distinct weights, and then returns None.
"""
from __future__ import annotations

import copy
import logging
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

PROBE_TOLERANCE = 1e-6  # float64: a wrongly wired network differs by ~1, reassociation by ~1e-15


class Unsupported(ValueError):
    """A network this fusion does not carry; the pack runs vmapped instead."""


class GroupedConv2d(nn.Module):
    """K Conv2d of equal settings as one: groups x K, or the same groups on the input all students share."""

    def __init__(self, convs: list[nn.Conv2d]) -> None:
        super().__init__()
        first = convs[0]
        if first.padding_mode != "zeros":
            raise Unsupported(f"Conv2d(padding_mode={first.padding_mode!r})")
        self.k, self.in_channels, self.groups = len(convs), first.in_channels, first.groups
        self.stride, self.padding, self.dilation = first.stride, first.padding, first.dilation
        self.weight = nn.Parameter(torch.cat([c.weight.detach() for c in convs]))
        self.bias = nn.Parameter(torch.cat([c.bias.detach() for c in convs])) if first.bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == self.in_channels:  # the network's input, the same for every student
            if self.groups != 1:
                raise Unsupported("a grouped convolution on the shared input")
            groups = 1
        else:
            groups = self.groups * self.k
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, groups)


class GroupedBatchNorm(nn.Module):
    """K BatchNorm1d/2d as one over K times the channels; each student's batch count is its own."""

    def __init__(self, norms: list[nn.modules.batchnorm._BatchNorm]) -> None:
        super().__init__()
        first = norms[0]
        if not (first.affine and first.track_running_stats) or first.momentum is None:
            raise Unsupported("a BatchNorm without affine parameters, running statistics or a fixed momentum")
        self.eps, self.momentum = first.eps, first.momentum
        self.weight = nn.Parameter(torch.cat([n.weight.detach() for n in norms]))
        self.bias = nn.Parameter(torch.cat([n.bias.detach() for n in norms]))
        self.register_buffer("running_mean", torch.cat([n.running_mean for n in norms]))
        self.register_buffer("running_var", torch.cat([n.running_var for n in norms]))
        self.register_buffer("num_batches_tracked", torch.stack([n.num_batches_tracked for n in norms]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.num_batches_tracked.add_(1)
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, self.training,
                            self.momentum, self.eps)


class GroupedLinear(nn.Module):
    """K Linear as one: the shared input times all K weights, or a block-diagonal product (a batched matmul)."""

    def __init__(self, linears: list[nn.Linear]) -> None:
        super().__init__()
        first = linears[0]
        self.k, self.in_features, self.out_features = len(linears), first.in_features, first.out_features
        self.weight = nn.Parameter(torch.stack([m.weight.detach() for m in linears]))  # (K, out, in)
        self.bias = nn.Parameter(torch.stack([m.bias.detach() for m in linears])) if first.bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2:
            raise Unsupported("a Linear on other than (batch, features) inputs")
        k, n = self.k, x.shape[0]
        if x.shape[1] == self.in_features:
            bias = None if self.bias is None else self.bias.view(-1)
            return F.linear(x, self.weight.view(k * self.out_features, self.in_features), bias)
        blocks = x.view(n, k, self.in_features).transpose(0, 1)  # (K, batch, in)
        out = torch.bmm(blocks, self.weight.transpose(1, 2)) if self.bias is None else \
            torch.baddbmm(self.bias.unsqueeze(1), blocks, self.weight.transpose(1, 2))
        return out.transpose(0, 1).reshape(n, k * self.out_features)


GROUPED = {nn.Conv2d: GroupedConv2d, nn.BatchNorm1d: GroupedBatchNorm, nn.BatchNorm2d: GroupedBatchNorm,
           nn.Linear: GroupedLinear}


class GroupedModel(nn.Module):
    """The K students as one network: images in, each student's logits out as (K, batch, classes)."""

    def __init__(self, models: list[nn.Module]) -> None:
        super().__init__()
        self.k = len(models)
        self.net = _grouped_copy(models)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.net(images)
        return logits.view(logits.shape[0], self.k, -1).transpose(0, 1)


def _grouped_copy(models: list[nn.Module]) -> nn.Module:
    """models[0]'s structure with each layer replaced by its grouped form over all K models' layers."""
    net = copy.deepcopy(models[0])
    modules = [dict(m.named_modules()) for m in models]
    for name, module in list(net.named_modules()):
        grouped = GROUPED.get(type(module))
        if isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0:
            raise Unsupported("its dropout would draw other masks than each student's own")
        if grouped is None:
            if any(t is not None for t in [*module._parameters.values(), *module._buffers.values()]):
                raise Unsupported(f"{type(module).__name__} has weights of its own")
            continue
        replacement = grouped([m[name] for m in modules])
        if not name:
            return replacement
        owner, _, leaf = name.rpartition(".")
        setattr(net.get_submodule(owner), leaf, replacement)
    return net


def group_models(models: list[nn.Module], example: torch.Tensor) -> Optional[GroupedModel]:
    """The grouped form of `models` (equal networks but for their weights), or None where the network cannot be
    grouped: checked by running both forms on `example`'s shape with K distinct random weights in float64,
    so that a forward that mixes the students' channels shows."""
    try:
        probes = [copy.deepcopy(m).to("cpu", torch.float64).eval() for m in models]
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for probe in probes:
                for t in [*probe.parameters(), *probe.buffers()]:
                    if t.is_floating_point():
                        t.add_(torch.rand(t.shape, generator=generator, dtype=t.dtype))
            images = torch.randn((2, *example.shape[1:]), generator=generator, dtype=torch.float64)
            grouped = GroupedModel(probes).eval()(images)
            alone = torch.stack([probe(images) for probe in probes])
        if grouped.shape != alone.shape or not torch.allclose(grouped, alone, rtol=PROBE_TOLERANCE,
                                                              atol=PROBE_TOLERANCE):
            raise Unsupported("its forward mixes channels across the grouped layers (a shuffle or a concatenation)")
    except (Unsupported, RuntimeError) as error:
        log.info("trainer.pack_mode=stacked: %s cannot be grouped (%s); its students run vmapped",
                 type(models[0]).__name__, error)
        return None
    return GroupedModel(models)
