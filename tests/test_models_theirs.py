"""Every kd network of RepDistiller's families is theirs, as recorded from their code in
tests/fixtures/repdistiller_networks.json: the same seed gives their initial weights under their module names,
their state dict (their names and shapes) loads strictly and gives their logits, and kd's features are theirs
(the published-checkpoint path through kd.training.teacher is tests/test_published_teachers.py)."""
from __future__ import annotations

import pytest
import torch
from hydra.utils import get_object

from conftest import compose_config
from kd.training.published_teachers import to_kd
from repdistiller import assert_their_logits, images, network, recorded, shapes, summary, weights

ALL = sorted(name for name, net in recorded()["networks"].items() if "initial" in net)
FEATURED = sorted(name for name, net in recorded()["networks"].items() if "features" in net)  # also ResNets


def build(name: str) -> torch.nn.Module:
    """kd's network of that name, as its conf/model/ YAML builds it."""
    return get_object(compose_config([f"model={name}"], out_dir="unused").model._target_)(100)


def test_the_record_covers_every_family():
    assert ALL == ["mobilenetv2", "resnet50", "shufflev1", "shufflev2", "vgg11", "vgg13", "vgg16", "vgg19",
                   "vgg8", "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2"]


@pytest.mark.parametrize("name", ALL)
def test_one_seed_gives_their_initial_weights_under_their_names(name):
    torch.manual_seed(0)
    ours = build(name).state_dict()
    assert [(key, tuple(value.shape)) for key, value in ours.items()] == list(shapes(name).items())
    # Their tensors' summaries, recorded to 10 digits. 1e-5 of a tensor's norm also holds a last-bit difference
    # of float32's vectorised normal_ on another CPU; another initialisation moves them by about the norm.
    for key, want in network(name)["initial"].items():
        torch.testing.assert_close(summary(ours[key]), want, rtol=1e-6, atol=1e-5 * max(want[0], 1.0), msg=key)


@pytest.mark.parametrize("name", ALL)
def test_their_state_dict_loads_strictly_and_gives_their_logits(name):
    ours = build(name)
    ours.load_state_dict(weights(name), strict=True)
    assert_their_logits(ours, name)


def assert_summaries(tensors: list[torch.Tensor], recorded_tensors: list[list], what: str) -> None:
    """Each tensor has the recorded [shape, summary] (float64 on both sides, recorded to 12 digits)."""
    assert [list(t.shape) for t in tensors] == [shape for shape, _ in recorded_tensors], what
    for i, (tensor, (_, want)) in enumerate(zip(tensors, recorded_tensors)):
        torch.testing.assert_close(summary(tensor), want, rtol=1e-9, atol=1e-9 * max(want[0], 1.0), msg=f"{what}[{i}]")


@pytest.mark.parametrize("name", FEATURED)
def test_features_are_read_where_theirs_are(name):
    """feats, preact and pooled are what their forward returns with is_feat=True (and preact=True)."""
    model = build(name)
    model.load_state_dict(to_kd(weights(name)), strict=True)
    with torch.no_grad():
        _, (feats, preact, pooled) = model.double().eval()(images(), features=True)
    want = network(name)["features"]
    assert_summaries(feats, want["feats"], "feats")
    assert_summaries(preact, want["preact"], "preact")
    assert_summaries([pooled], [want["pooled"]], "pooled")
