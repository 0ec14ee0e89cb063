"""RepDistiller's networks as recorded facts, for the tests to compare kd's networks against without holding
their code: tests/fixtures/repdistiller_networks.json (its README says where it came from and how it was made)
gives each network's state-dict names and shapes, parameter count, a summary of its initial weights under
torch.manual_seed(0), and its logits in float64 on `images(size)` with the weights `weights(name)` loaded.
The weights and images are rebuilt here from a seed rather than stored."""
from __future__ import annotations

import functools
import json
import math
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

FIXTURE = Path(__file__).parent / "fixtures" / "repdistiller_networks.json"
SEED = 0


@functools.cache
def recorded() -> dict:
    return json.loads(FIXTURE.read_text())


def network(name: str) -> dict:
    """One network's record: `name` is kd's config name, `<name>@<classes>` where not 100 classes."""
    return recorded()["networks"][name]


def shapes(name: str) -> dict[str, tuple[int, ...]]:
    """Their state dict's names (in their order) and shapes."""
    return {key: tuple(shape) for key, shape in network(name)["state_dict"]}


def weights(name: str, seed: int = SEED) -> OrderedDict[str, torch.Tensor]:
    """Deterministic float32 tensors under their names and shapes, as a checkpoint holds them: BatchNorm's
    statistics and affine parameters drawn wide enough that a wrongly mapped one shows in the logits, and
    conv/linear weights of variance 1/fan_in, so that even the deepest networks' logits stay finite."""
    draw = torch.Generator().manual_seed(seed)
    state: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, shape in shapes(name).items():
        if key.endswith(".num_batches_tracked"):
            state[key] = torch.tensor(0)
            continue
        u = torch.rand(shape, generator=draw, dtype=torch.float64)
        if key.endswith(".running_var"):
            value = 0.5 + 1.5 * u
        elif key.endswith((".running_mean", ".bias")):
            value = u - 0.5
        elif len(shape) == 1:  # a BatchNorm's weight
            value = 0.5 + u
        else:
            value = (2 * u - 1) * math.sqrt(3 / math.prod(shape[1:]))
        state[key] = value.float()
    return state


def images(size: int = 32, seed: int = SEED) -> torch.Tensor:
    """Two float64 images in [-1, 1), the input their logits were recorded on."""
    return torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2 - 1


def logits(name: str, size: int = 32) -> torch.Tensor:
    """Their network's logits, in float64, on `images(size)` with `weights(name)` loaded, in eval mode."""
    return torch.tensor(network(name)["logits"][str(size)], dtype=torch.float64)


def summary(tensor: torch.Tensor) -> list[float]:
    """[L2 norm, sum, sum weighted by cos(index)] in float64: equal for equal tensors, and the last one moves
    when the same values sit in another order."""
    flat = tensor.detach().double().flatten()
    return [flat.norm().item(), flat.sum().item(), (flat * torch.arange(flat.numel()).double().cos()).sum().item()]


def assert_their_logits(model: nn.Module, name: str, size: int = 32) -> None:
    """kd's `model` (loaded with `weights(name)`) computes their recorded logits. In float64, where only the
    summation order differs (their fixed pooling against kd's adaptive one): 1e-9 of the largest logit."""
    with torch.no_grad():
        got = model.double().eval()(images(size))
    want = logits(name, size)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-9 * want.abs().max().item())
    assert want.std() > 0.1  # not a vacuous comparison


def holding(state: dict[str, torch.Tensor]) -> nn.Module:
    """A module holding `state`'s tensors under their dotted names, for PyTorch's wrappers (DataParallel,
    torch.compile) to prefix them as they prefix a network's state dict."""
    root = nn.Module()
    for key, value in state.items():
        *path, leaf = key.split(".")
        module = root
        for part in path:
            if part not in module._modules:
                module.add_module(part, nn.Module())
            module = module._modules[part]
        module.register_buffer(leaf, value.clone())
    return root
