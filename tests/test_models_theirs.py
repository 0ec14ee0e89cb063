"""Every kd network of RepDistiller's families is theirs, as recorded from their code in
tests/fixtures/repdistiller_networks.json: the same seed gives their initial weights under their module names,
and their state dict (their names and shapes) loads strictly and gives their logits (the published-checkpoint
path through kd.training.teacher is tests/test_published_teachers.py)."""
from __future__ import annotations

import pytest
import torch
from hydra.utils import get_object

from conftest import compose_config
from repdistiller import assert_their_logits, network, recorded, shapes, summary, weights

ALL = sorted(name for name, net in recorded()["networks"].items() if "initial" in net)


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
    # Their tensors' summaries, recorded to 10 digits: 1e-7 of a tensor's norm holds them, and float32's
    # vectorised normal_ on another CPU.
    for key, want in network(name)["initial"].items():
        got = summary(ours[key])
        torch.testing.assert_close(got, want, rtol=0, atol=1e-7 * max(want[0], 1.0), msg=key)


@pytest.mark.parametrize("name", ALL)
def test_their_state_dict_loads_strictly_and_gives_their_logits(name):
    ours = build(name)
    ours.load_state_dict(weights(name), strict=True)
    assert_their_logits(ours, name)
