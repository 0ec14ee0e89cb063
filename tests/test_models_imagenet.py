"""kd's ImageNet networks: torchvision's ResNet18/34/50 (torchvision's own modules, kd adding the features) and
mdistiller's MobileNetV1 (its parameter count and module names, a fact of their code), with the stage features
the feature distillers read, at 64x64 (224x224 is slow on a CPU; every layer is the same at any size)."""
from __future__ import annotations

import pytest
import torch
import torchvision.models as tv
from hydra.utils import instantiate

from conftest import compose_config
from kd.distillers.base import Outputs
from kd.distillers.ofd import bn_before_relu
from kd.models import imagenet_resnet, mobilenetv1

# sum(p.numel()) of mdistiller's MobileNetV1() (1000 classes), mdistiller/models/imagenet/mobilenetv1.py at
# megvii-research/mdistiller a08d46f10d6102bd6e3f258ca5ac880b020ea259 (counted on their file, 2026-12-07).
MDISTILLER_MOBILENETV1_PARAMETERS = 4_231_976
# (channels, side) of feats and preact at 64x64: the stem (before the ResNets' max-pool), then each stage.
STAGES = {"resnet18": [(64, 32), (64, 16), (128, 8), (256, 4), (512, 2)],
          "resnet34": [(64, 32), (64, 16), (128, 8), (256, 4), (512, 2)],
          "imagenet_resnet50": [(64, 32), (256, 16), (512, 8), (1024, 4), (2048, 2)],
          "mobilenetv1": [(32, 32), (128, 16), (256, 8), (512, 4), (1024, 2)]}
IMAGES = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def build(name: str, num_classes: int = 10) -> torch.nn.Module:
    return instantiate(compose_config([f"model={name}"], out_dir="unused").model, num_classes=num_classes)


@pytest.mark.parametrize("name", sorted(imagenet_resnet.TORCHVISION_BUILDERS))
def test_a_resnet_is_torchvisions_network_with_its_names_shapes_and_count(name):
    with torch.device("meta"):
        ours, theirs = build(name, 1000), getattr(tv, imagenet_resnet.TORCHVISION_BUILDERS[name])()
    assert isinstance(ours, tv.ResNet)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())


def test_resnet18_on_torchvisions_weights_gives_torchvisions_logits():
    theirs = tv.resnet18(num_classes=10).eval()
    ours = build("resnet18")
    ours.load_state_dict(theirs.state_dict())
    ours.eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(IMAGES), theirs(IMAGES))
        torch.testing.assert_close(ours(IMAGES, features=True)[0], theirs(IMAGES))


def test_mobilenetv1_has_mdistillers_parameter_count_and_module_names():
    with torch.device("meta"):
        net = build("mobilenetv1", 1000)
    assert sum(p.numel() for p in net.parameters()) == MDISTILLER_MOBILENETV1_PARAMETERS
    names = list(net.state_dict())
    assert names[:2] == ["model.0.0.weight", "model.0.1.weight"] and names[-2:] == ["fc.weight", "fc.bias"]
    assert "model.13.3.weight" in names and net.state_dict()["model.13.3.weight"].shape == (1024, 1024, 1, 1)


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_features_are_mdistillers_and_preact_is_before_the_last_relu(name):
    net = build(name).eval()
    with torch.no_grad():
        logits, found = net(IMAGES, features=True)
        torch.testing.assert_close(logits, net(IMAGES))
    assert [(f.shape[1], f.shape[2]) for f in found.feats] == STAGES[name]
    assert [f.shape for f in found.preact] == [f.shape for f in found.feats]
    assert all(torch.equal(torch.relu(p), f) for p, f in zip(found.preact, found.feats))
    assert found.pooled.shape == (2, STAGES[name][-1][0])
    if name != "mobilenetv1":  # the ResNets' stem, as mdistiller's, is also given before its ReLU
        assert (found.preact[0] < 0).any()


@pytest.mark.slow
@pytest.mark.parametrize("teacher, student", [("resnet34", "resnet18"), ("imagenet_resnet50", "mobilenetv1")])
def test_the_feature_distillers_train_on_the_imagenet_pairs(teacher, student):
    t, s = build(teacher).eval(), build(student)
    stages = [t.layer1, t.layer2, t.layer3, t.layer4]
    last_bn = [stage[-1].bn2 if isinstance(stage[-1], tv.resnet.BasicBlock) else stage[-1].bn3 for stage in stages]
    assert bn_before_relu(t, IMAGES) == last_bn  # OFD's margins come from the right BatchNorms
    targets = torch.tensor([0, 1])
    with torch.no_grad():
        t_out = Outputs(*t(IMAGES, features=True))
    for loss in ("fitnet", "at", "reviewkd", "ofd"):
        distiller = instantiate(compose_config([f"loss={loss}"], out_dir="unused").loss)
        distiller.setup(s, t, IMAGES)
        s.zero_grad()
        parts = distiller(Outputs(*s(IMAGES, features=True)), t_out, targets, alpha=0.5)
        parts.total.backward()
        assert torch.isfinite(parts.kd) and parts.kd > 0, loss
        assert all(torch.isfinite(p.grad).all() for p in s.parameters() if p.grad is not None), loss
