"""kd's MobileNetV2 and ShuffleNets are RepDistiller's networks: their parameter counts (their initial weights,
state-dict names and logits: tests/test_models_theirs.py), kd's feature layout, and K stacked copies under
vmap as kd's stacked packs run them."""
from __future__ import annotations

import copy
import functools

import pytest
import torch
from hydra.utils import instantiate
from torch.func import functional_call, stack_module_state, vmap

from conftest import compose_config
from reliability import randomised
from kd.models import mobilenetv2, shufflenetv1, shufflenetv2
from repdistiller import network

FAMILY = {"mobilenetv2": mobilenetv2, "shufflev1": shufflenetv1, "shufflev2": shufflenetv2}
ALL = list(FAMILY)

# sum(p.numel()) at 100 classes of RepDistiller's own code (as tests/fixtures/repdistiller_networks.json
# records it). The CRD paper / RepDistiller README round
# them to MobileNetV2 (0.5) 0.81M, ShuffleNetV1 0.95M, ShuffleNetV2 1.36M.
PARAMETERS = {"mobilenetv2": 812_836, "shufflev1": 949_258, "shufflev2": 1_355_528}

# (channels, side) of feats/preact at a 32x32 input: the stem, then each stage (MobileNetV2: blocks 1, 2, 4, 6).
STAGES = {"mobilenetv2": [(16, 16), (12, 16), (16, 8), (48, 4), (160, 2)],
          "shufflev1": [(24, 32), (240, 16), (480, 8), (960, 4)],
          "shufflev2": [(24, 32), (116, 16), (232, 8), (464, 4)]}
POOLED = {"mobilenetv2": 1280, "shufflev1": 960, "shufflev2": 1024}


def build(name: str, num_classes: int = 100) -> torch.nn.Module:
    return getattr(FAMILY[name], name)(num_classes)


@functools.cache
def shared(name: str) -> torch.nn.Module:
    """One kd network per factory (100 classes, random BN, eval mode) for the tests that only read it."""
    torch.manual_seed(0)
    return randomised(build(name))


@pytest.mark.parametrize("name", ALL)
def test_parameter_counts_are_repdistillers(name):
    assert sum(p.numel() for p in shared(name).parameters()) == PARAMETERS[name]
    assert network(name)["parameters"] == PARAMETERS[name]


@pytest.mark.parametrize("size", [32, 16, 8])
@pytest.mark.parametrize("name", ALL)
def test_every_model_maps_images_to_class_logits(name, size):
    with torch.no_grad():
        assert shared(name)(torch.zeros(2, 3, size, size)).shape == (2, 100)


@pytest.mark.parametrize("name", ALL)
def test_the_smallest_input_is_min_image_size(name):
    side = FAMILY[name].MIN_IMAGE_SIZE  # 1: padded stride-2 3x3 filters map 1x1 to 1x1
    model = copy.deepcopy(shared(name)).train()  # training-mode BN needs only two values per channel
    assert model(torch.randn(2, 3, side, side)).shape == (2, 100)


@pytest.mark.parametrize("size", [32, 16])
@pytest.mark.parametrize("name", ALL)
def test_features_follow_their_layout_and_leave_the_logits_unchanged(name, size):
    model = shared(name)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        plain = model(x)
        logits, (feats, preact, pooled) = model(x, features=True)
    assert torch.equal(logits, plain)
    assert [(f.shape[1], f.shape[-1]) for f in feats] == [(c, side * size // 32) for c, side in STAGES[name]]
    assert [p.shape for p in preact] == [f.shape for f in feats]
    assert torch.equal(preact[0], feats[0])  # the stem's as is
    assert pooled.shape == (2, POOLED[name])
    if name == "mobilenetv2":  # linear bottlenecks: no ReLU ends a stage, so the same tensors, another list
        assert preact is not feats and all(p is f for f, p in zip(feats, preact))
    for f, p in zip(feats[1:], preact[1:]):
        if name == "shufflev1":
            assert torch.equal(f, torch.relu(p)) and (p < 0).any()
        elif name == "shufflev2":  # theirs: the halves concatenated before the branch's ReLU and the shuffle
            assert torch.equal(f, shufflenetv1.channel_shuffle(torch.relu(p), 2)) and (p < 0).any()


@pytest.mark.parametrize("name", ALL)
def test_stacked_copies_under_vmap_compute_each_network(name):
    # float64: float32's batched kernels sum in another order, and training-mode BN on small maps amplifies
    # that to ~1e-3 at the logits; in float64 the two agree.
    torch.manual_seed(0)
    models = [build(name, 10).double().train() for _ in range(2)]
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    x = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    stacked = vmap(lambda p, b, images: functional_call(base, (p, b), (images,)), in_dims=(0, 0, None))(
        params, buffers, x)
    for k, model in enumerate(models):
        torch.testing.assert_close(stacked[k], model(x), rtol=1e-5, atol=1e-7)
        for key, stacked_buffer in buffers.items():  # BN running statistics moved alike
            torch.testing.assert_close(stacked_buffer[k], model.get_buffer(key), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ALL)
def test_model_and_teacher_configs_build_the_factory(name):
    cfg = compose_config([f"model={name}", f"teacher={name}"], out_dir="unused")
    assert cfg.model._target_ == cfg.teacher.arch._target_ == f"{FAMILY[name].__name__}.{name}"
    model = instantiate(cfg.model, num_classes=100)
    assert sum(p.numel() for p in model.parameters()) == PARAMETERS[name]
