"""Identities of L = (1 - alpha) * CE + alpha * T^2 * KL(p_t || p_s)."""
import pytest
import torch
import torch.nn.functional as F

from kd.distillers.base import Outputs
from kd.distillers.kd import KD, kd_loss


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


# ---- a stacked pack's losses at once (KD.pack_forward) against each student's own ----

def _pack(n: int = 4, batch: int = 8, classes: int = 10, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, batch, classes, generator=g, requires_grad=True),
            torch.randn(batch, classes, generator=g), torch.randn(batch, classes, generator=g),
            torch.randint(0, classes, (batch,), generator=g))


@pytest.mark.parametrize("soft", [False, True], ids=["hard labels", "soft labels"])
@pytest.mark.parametrize("views", ["one view", "two views"])
def test_a_packs_losses_at_once_are_each_students_own(soft, views):
    """alpha 0 (no teacher: its term is 0, as alone), 0.25, 0.5 and 1; one teacher view shared, or two; the
    gradient each student's logits get from the summed losses is that of its own loss."""
    logits, clean, other, labels = _pack()
    targets = F.softmax(torch.randn(8, 10, generator=torch.Generator().manual_seed(2)), 1) if soft else labels
    alphas = [0.0, 0.25, 0.5, 1.0]
    teacher_logits = [None, clean, clean if views == "one view" else other, clean]
    teachers = [None if t is None else Outputs(t) for t in teacher_logits]
    distiller = KD(temperature=4.0, scale=2.0)
    packed = distiller.pack_forward(logits, teachers, targets, alphas)
    (grad_packed,) = torch.autograd.grad(packed.total.sum(), logits)
    for k, alpha in enumerate(alphas):
        alone = distiller(Outputs(logits[k]), teachers[k], targets, alpha)
        (grad_alone,) = torch.autograd.grad(alone.total, logits)
        for packed_part, alone_part in zip(packed[:3], alone[:3]):
            torch.testing.assert_close(packed_part[k], alone_part, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(grad_packed[k], grad_alone[k], rtol=1e-5, atol=1e-7)
    assert packed.kd[0] == 0.0 and packed.kd[1] > 0.0
    assert packed.extra == [{}] * 4


def test_a_pack_without_a_distilling_student_runs_no_teacher_term():
    logits, _, _, labels = _pack(n=2)
    packed = KD().pack_forward(logits, [None, None], labels, [0.0, 0.0])
    assert torch.equal(packed.kd, torch.zeros(2))
    torch.testing.assert_close(packed.total, torch.stack([F.cross_entropy(l, labels) for l in logits]))


def test_a_pack_with_a_distilling_student_and_no_teacher_is_an_error():
    logits, _, _, labels = _pack(n=2)
    with pytest.raises(ValueError, match="teacher's outputs are required"):
        KD().pack_forward(logits, [None, None], labels, [0.0, 0.5])


def test_a_distiller_with_its_own_cross_entropy_computes_a_pack_one_by_one():
    """A subclass's CE (label smoothing) is written for one student's logits: its pack goes through forward."""
    class Smoothed(KD):
        def cross_entropy(self, logits, targets):
            return F.cross_entropy(logits.float(), targets, label_smoothing=0.1)

    logits, clean, _, labels = _pack(n=2)
    packed = Smoothed().pack_forward(logits, [Outputs(clean), Outputs(clean)], labels, [0.5, 1.0])
    for k, alpha in enumerate([0.5, 1.0]):
        assert torch.equal(packed.total[k], Smoothed()(Outputs(logits[k]), Outputs(clean), labels, alpha).total)
