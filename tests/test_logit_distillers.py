"""The newer logit distillers against their authors' code: each one's loss and gradient in float64 on the same
inputs as recorded from the authors' repositories (tests/fixtures/README.md), and their YAML recipes."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from kd.distillers.base import Outputs
from kd.distillers.combined import Combined
from kd.distillers.dist import DIST
from kd.distillers.dkd import DKD
from kd.distillers.kd import KD
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
    ("kd_ls", KD(temperature=2.0, standardize=True)),
    ("dkd_ls", DKD(alpha=9.0, beta=72.0, temperature=2.0, standardize=True)),  # epoch 100: past the warmup
    ("dist_ls", DIST(beta=1.0, gamma=1.0, tau=2.0, standardize=True)),
    ("ttm_ls", TTM(gamma=0.5, beta=1.0, standardize=True)),
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


@pytest.mark.parametrize("make", [KD, DKD, DIST, TTM, WTTM])
def test_standardized_terms_ignore_each_samples_logit_scale_and_shift_and_ce_reads_the_raw_logits(make):
    s, t, y = inputs()
    scale, shift = torch.linspace(0.5, 4.0, len(s)).unsqueeze(1), torch.linspace(-3.0, 3.0, len(s)).unsqueeze(1)
    distiller = make(standardize=True)
    same = term(distiller, s, t, y), term(distiller, s * scale + shift, t * scale.flip(0) - shift, y)
    torch.testing.assert_close(*same, rtol=1e-6, atol=1e-9)  # 1e-6: the authors' eps beside the std
    assert not torch.allclose(term(make(), s, t, y), term(make(), s * scale + shift, t, y))  # the switch is off
    parts = distiller(Outputs(s), Outputs(t), y, alpha=0.5, epoch=100)
    assert torch.equal(parts.ce, F.cross_entropy(s, y))


@pytest.mark.parametrize("make", [KD, DKD, DIST, TTM, WTTM])
def test_bf16_logits_are_read_in_float32(make):
    s, t, y = (x.bfloat16() if x.is_floating_point() else x for x in inputs())
    assert term(make(standardize=True), s, t, y).dtype == torch.float32 == term(make(), s, t, y).dtype


def test_kds_stacked_pack_standardizes_each_student_as_alone():
    s, t, y = inputs()
    students = torch.stack([s, 2.0 * s + 1.0, s.flip(1)]).float()
    distiller = KD(temperature=2.0, standardize=True)
    packed = distiller.pack_forward(students, [Outputs(t.float())] * 3, y, [0.5, 0.9, 0.0])
    for i, alpha in enumerate([0.5, 0.9, 0.0]):
        alone = distiller(Outputs(students[i]), Outputs(t.float()), y, alpha)
        torch.testing.assert_close(packed.total[i], alone.total, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(packed.kd[i], alone.kd, rtol=1e-6, atol=1e-6)


def test_the_ls_yamls_are_their_authors_cifar_recipes():
    kd_ls = instantiate(compose_config(["loss=kd_ls", "alpha=0.9"]).loss)
    assert type(kd_ls) is Combined and kd_ls.weights == {"kd": 10.0}  # 0.1 CE + 0.9 * 10 KD = 0.1 CE + 9 KD
    assert (kd_ls.terms["kd"].temperature, kd_ls.terms["kd"].standardize) == (2.0, True)
    dkd_ls = instantiate(compose_config(["loss=dkd_ls", "alpha=0.5", "loss.scale=2"]).loss)
    assert (dkd_ls.alpha, dkd_ls.beta, dkd_ls.temperature, dkd_ls.standardize, dkd_ls.warmup) == (9.0, 72.0, 2.0, True, 20)
    for name in ("kd", "dkd", "dist", "ttm", "wttm"):  # the switch is off by default and on from the command line
        assert instantiate(compose_config([f"loss={name}"]).loss).standardize is False
        assert instantiate(compose_config([f"loss={name}", "loss.standardize=true"]).loss).standardize is True


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
