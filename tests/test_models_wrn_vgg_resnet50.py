"""kd's WRN, VGG and ResNet50 are RepDistiller's networks: their parameter counts, initial weights, state-dict
names and logits (those two: tests/test_models_theirs.py), and kd's feature layout."""
from __future__ import annotations

import functools

import pytest
import torch
from hydra.utils import instantiate

from conftest import compose_config
from reliability import randomised
from repdistiller import assert_their_logits, network, weights
from kd.models import resnetv2, vgg, wrn

FAMILIES = {wrn: ["wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2"],
            vgg: ["vgg8", "vgg11", "vgg13", "vgg16", "vgg19"],
            resnetv2: ["resnet50"]}
FAMILY = {name: family for family, names in FAMILIES.items() for name in names}
ALL = list(FAMILY)

# sum(p.numel()) at 100 classes of RepDistiller's own code (as tests/fixtures/repdistiller_networks.json
# records it). The CRD paper / RepDistiller README round them
# to wrn_40_2 2.26M, wrn_16_2 0.70M, wrn_40_1 0.57M, vgg13 9.46M, vgg8 3.96M, ResNet50 23.71M.
PARAMETERS = {"wrn_16_1": 180_916, "wrn_16_2": 703_284, "wrn_40_1": 569_780, "wrn_40_2": 2_255_156,
              "vgg8": 3_965_028, "vgg11": 9_277_284, "vgg13": 9_462_180, "vgg16": 14_774_436,
              "vgg19": 20_086_692, "resnet50": 23_705_252}

# (channels, side) of feats/preact at a 32x32 input: the stem, then each stage.
WRN = {k: [(16, 32), (16 * k, 32), (32 * k, 16), (64 * k, 8)] for k in (1, 2)}
STAGES = {"wrn_16_1": WRN[1], "wrn_40_1": WRN[1], "wrn_16_2": WRN[2], "wrn_40_2": WRN[2],
          **{name: [(64, 32), (128, 16), (256, 8), (512, 4), (512, 4)] for name in FAMILIES[vgg]},
          "resnet50": [(64, 32), (256, 32), (512, 16), (1024, 8), (2048, 4)]}


def build(name: str) -> torch.nn.Module:
    return getattr(FAMILY[name], name)(100)


@functools.cache
def shared(name: str) -> torch.nn.Module:
    """One kd network per factory (100 classes, random BN, eval mode) for the tests that only read it:
    building the large ones takes most of this file's time. A test that changes a network copies it."""
    torch.manual_seed(0)
    return randomised(build(name))


@pytest.mark.parametrize("name", ALL)
def test_parameter_counts_are_repdistillers(name):
    assert sum(p.numel() for p in shared(name).parameters()) == PARAMETERS[name]
    assert network(name)["parameters"] == PARAMETERS[name]


def test_vgg_pools_a_64x64_input_four_times_as_theirs():
    ours = vgg.vgg8(100)
    ours.load_state_dict(weights("vgg8"))
    assert_their_logits(ours, "vgg8", size=64)
    with torch.no_grad():  # block4 at 4x4, as on 32x32
        assert ours(torch.zeros(1, 3, 64, 64, dtype=torch.float64), features=True)[1].feats[-1].shape[-1] == 4


@pytest.mark.parametrize("size", [32, 16])
@pytest.mark.parametrize("name", ALL)
def test_every_model_maps_images_to_class_logits(name, size):
    with torch.no_grad():
        assert shared(name)(torch.zeros(2, 3, size, size)).shape == (2, 100)


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.__name__)
def test_the_smallest_input_is_min_image_size(family):
    model = shared(FAMILIES[family][0])
    with torch.no_grad():
        assert model(torch.zeros(1, 3, family.MIN_IMAGE_SIZE, family.MIN_IMAGE_SIZE)).shape == (1, 100)
        if family.MIN_IMAGE_SIZE > 1:
            with pytest.raises(RuntimeError):
                model(torch.zeros(1, 3, family.MIN_IMAGE_SIZE - 1, family.MIN_IMAGE_SIZE - 1))


@pytest.mark.parametrize("name", ALL)
def test_features_follow_their_layout_and_leave_the_logits_unchanged(name):
    model = shared(name)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        plain = model(x)
        logits, (feats, preact, pooled) = model(x, features=True)
    assert torch.equal(logits, plain)
    assert [(f.shape[1], f.shape[-1]) for f in feats] == STAGES[name]
    assert [p.shape for p in preact] == [f.shape for f in feats]
    assert torch.equal(preact[0], feats[0])  # the stem's as is
    assert pooled.shape == (2, STAGES[name][-1][0])
    if FAMILY[name] is wrn:  # pre-activation: a stage's preact is the next BN of its raw output
        bns = [model.block2.layer[0].bn1, model.block3.layer[0].bn1, model.bn1]
        for f, p, bn in zip(feats[1:], preact[1:], bns):
            torch.testing.assert_close(p, bn(f))
    else:
        for f, p in zip(feats[1:], preact[1:]):
            assert torch.equal(f, torch.relu(p)) and (p < 0).any()


def test_wrn_features_run_each_batchnorm_once_in_training():
    torch.manual_seed(0)
    plain, featured = wrn.wrn_16_1(10), wrn.wrn_16_1(10)
    featured.load_state_dict(plain.state_dict())
    x = torch.randn(4, 3, 16, 16)
    plain(x)
    featured(x, features=True)
    for (key, want), got in zip(plain.state_dict().items(), featured.state_dict().values()):
        torch.testing.assert_close(got, want, msg=key)


def test_wrn_depth_must_be_6n_plus_4():
    with pytest.raises(ValueError, match="6n\\+4"):
        wrn.WideResNet(18, 1, 10)


@pytest.mark.parametrize("name", ALL)
def test_model_and_teacher_configs_build_the_factory(name):
    cfg = compose_config([f"model={name}", f"teacher={name}"], out_dir="unused")
    assert cfg.model._target_ == cfg.teacher.arch._target_ == f"{FAMILY[name].__name__}.{name}"
    if name == "wrn_16_1":  # instantiating one is enough to show the YAML's target is callable as kd calls it
        assert sum(p.numel() for p in instantiate(cfg.model, num_classes=100).parameters()) == PARAMETERS[name]
