"""Identities of L = (1 - alpha) * CE + alpha * T^2 * KL(p_t || p_s)."""
import pytest
import torch
import torch.nn.functional as F

from kd.distillers.kd import kd_loss


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(8, 10, generator=g), torch.randn(8, 10, generator=g), torch.randint(0, 10, (8,), generator=g)


def test_alpha_zero_is_plain_cross_entropy_and_needs_no_teacher(batch):
    s, t, y = batch
    assert torch.equal(kd_loss(s, None, y, alpha=0.0).total, F.cross_entropy(s, y))
    assert torch.allclose(kd_loss(s, t, y, alpha=0.0).total, F.cross_entropy(s, y))


def test_identical_logits_give_zero_kd(batch):
    s, _, y = batch
    assert kd_loss(s, s.clone(), y, alpha=1.0).kd.abs().item() < 1e-6


def test_alpha_one_is_pure_kd_with_batchmean_and_t_squared(batch):
    s, t, y = batch
    T = 4.0
    p_t = F.softmax(t / T, 1)
    kl_per_image = (p_t * (p_t.log() - F.log_softmax(s / T, 1))).sum(1)
    parts = kd_loss(s, t, y, alpha=1.0, temperature=T)
    assert torch.allclose(parts.total, T**2 * kl_per_image.mean(), atol=1e-6)  # mean over the batch only


def test_total_mixes_the_parts_by_alpha(batch):
    s, t, y = batch
    parts = kd_loss(s, t, y, alpha=0.25)
    assert torch.allclose(parts.total, 0.75 * parts.ce + 0.25 * parts.kd)


def test_kd_gradient_is_t_times_probability_gap(batch):
    # With T^2 scaling, d(T^2 KL)/ds = T * (p_s - p_t) / batch: the gradient scale grows only as T.
    s, t, y = batch
    for T in (1.0, 4.0):
        s_ = s.clone().requires_grad_(True)
        kd_loss(s_, t, y, alpha=1.0, temperature=T).total.backward()
        expected = T * (F.softmax(s / T, 1) - F.softmax(t / T, 1)) / s.shape[0]
        assert torch.allclose(s_.grad, expected, atol=1e-6)


@pytest.mark.parametrize("alpha", [-0.1, 1.5])
def test_alpha_outside_unit_interval_is_an_error(batch, alpha):
    s, t, y = batch
    with pytest.raises(ValueError, match=f"alpha={alpha} is outside"):
        kd_loss(s, t, y, alpha=alpha)


@pytest.mark.parametrize("temperature", [0.0, -2.0])
def test_non_positive_temperature_is_an_error(batch, temperature):
    s, t, y = batch
    with pytest.raises(ValueError, match="temperature"):
        kd_loss(s, t, y, alpha=0.5, temperature=temperature)


def test_kd_without_teacher_logits_is_an_error(batch):
    s, _, y = batch
    with pytest.raises(ValueError, match="teacher_logits"):
        kd_loss(s, None, y, alpha=0.5)
