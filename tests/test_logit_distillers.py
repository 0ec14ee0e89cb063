"""The newer logit distillers against their authors' code: each one's loss and gradient in float64 on the same
inputs as recorded from the authors' repositories (tests/fixtures/README.md), and their YAML recipes."""
from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from kd.distillers.base import Outputs
from kd.distillers.dist import DIST
from kd.distillers.ttm import TTM
from kd.distillers.wttm import WTTM
from conftest import compose_config
from logit_references import assert_their_loss_and_gradient, inputs


def term(distiller, s: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return distiller.term(Outputs(s), Outputs(t), y, 100)["kd"]


@pytest.mark.parametrize("case, distiller", [
    ("dist", DIST(beta=1.0, gamma=1.0, tau=4.0)),
    ("dist_beta2_gamma3_tau1", DIST(beta=2.0, gamma=3.0, tau=1.0)),
    ("ttm", TTM(gamma=0.1, beta=1.0)),
    ("wttm", WTTM(gamma=0.2, beta=1.0)),
])
def test_the_term_is_the_authors_loss_with_its_gradient(case, distiller):
    assert_their_loss_and_gradient(case, lambda s, t, y: term(distiller, s, t, y))


def test_dist_is_zero_for_a_student_that_matches_up_to_a_shift_and_logs_its_parts():
    s, t, y = inputs()
    parts = DIST().term(Outputs(s), Outputs(s + 5.0), y, 0)  # a shift leaves the softmax as it is
    unrelated = DIST().term(Outputs(s), Outputs(t), y, 0)["kd"]
    assert parts["kd"] < 1e-4 * unrelated and set(parts) == {"kd", "inter", "intra"}  # 1e-4: the authors' eps


def test_ttm_is_kd_with_the_temperature_on_the_teacher_only_and_wttm_weights_it_by_the_power_sum():
    s, t, y = inputs()
    gamma = 0.25
    p_s, q_t = torch.log_softmax(s, 1), torch.softmax(t / (1 / gamma), 1)  # p_t^gamma renormalised = softmax(gamma t)
    kl = (q_t * (q_t.log() - p_s)).sum(1)
    torch.testing.assert_close(term(TTM(gamma=gamma, beta=3.0), s, t, y), 3.0 * kl.mean(), rtol=1e-12, atol=0)
    power_sum = (torch.softmax(t, 1) ** gamma).sum(1)
    torch.testing.assert_close(term(WTTM(gamma=gamma, beta=3.0), s, t, y), 3.0 * (power_sum * kl).mean(),
                               rtol=1e-12, atol=0)


@pytest.mark.parametrize("name, defaults", [
    ("dist", {"beta": 2.0, "gamma": 2.0, "tau": 4.0}),
    ("ttm", {"gamma": 0.1, "beta": 45.0}),
    ("wttm", {"gamma": 0.2, "beta": 4.0}),
])
def test_each_yaml_composes_into_its_authors_recipe(name, defaults):
    distiller = instantiate(compose_config([f"loss={name}", "alpha=0.5", "loss.scale=2"]).loss)
    assert distiller.scale == 2.0 and all(getattr(distiller, k) == v for k, v in defaults.items())


@pytest.mark.parametrize("make, key", [
    (lambda: DIST(beta=-1.0), "loss.beta=-1.0"), (lambda: DIST(gamma=-1.0), "loss.gamma=-1.0"),
    (lambda: DIST(tau=0.0), "loss.tau=0.0"), (lambda: TTM(gamma=0.0), "loss.gamma=0.0"),
    (lambda: WTTM(beta=-1.0), "loss.beta=-1.0"),
])
def test_bad_settings_name_their_key(make, key):
    with pytest.raises(ValueError, match=key):
        make()
