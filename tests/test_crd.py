"""CRD (Tian et al., ICLR 2020, as RepDistiller's crd/ runs it) against the paper's NCE computed here
independently in float64 with explicit loops on a small bank; its per-sample state (banks, Z, the negatives'
generator) in and out of the distiller's state dict; and a combination of distillers (CRD+KD) from YAML."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from kd.distillers.base import Outputs
from kd.distillers.combined import Combined
from kd.distillers.crd import CRD
from kd.distillers.kd import KD, kd_term
from kd.models.features import Features
from kd.models.resnet import resnet8, resnet14
from tests.conftest import compose_config

C, B = 4, 6
LABELS = torch.arange(24) % C  # 24 training images, 6 per class: 18 other-class images each


def batch(seed: int = 0) -> tuple[Outputs, Outputs, torch.Tensor, torch.Tensor]:
    """Student and teacher outputs with pooled features of widths 8 and 9, targets, and dataset indices."""
    g = torch.Generator().manual_seed(seed)
    indices = torch.randperm(len(LABELS), generator=g)[:B]
    s = Outputs(torch.randn(B, C, generator=g), Features([], [], torch.randn(B, 8, generator=g)))
    t = Outputs(torch.randn(B, C, generator=g), Features([], [], torch.randn(B, 9, generator=g)))
    return s, t, LABELS[indices], indices


class Pooled(torch.nn.Module):
    """A stand-in network whose features are only its pooled vector of the given width."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.width = width

    def forward(self, x, features=False):
        pooled = x.flatten(1)[:, :self.width]
        return (pooled, Features([], [], pooled)) if features else pooled


def crd(nce_k: int = 5, seed: int = 0, **kwargs) -> CRD:
    torch.manual_seed(seed)
    distiller = CRD(feat_dim=4, nce_k=nce_k, **kwargs)
    distiller.setup(Pooled(8), Pooled(9), torch.zeros(2, 1, 3, 3), LABELS)
    return distiller


def ref_side(bank: torch.Tensor, idx: torch.Tensor, anchor: torch.Tensor, t: float, z: float, n: int) -> float:
    """The NCE loss of one side, by loops: -(1/B) sum_b [log D(positive) + sum_k log(1 - D(negative k))]."""
    k = idx.shape[1] - 1
    noise = k / n
    total = 0.0
    for b in range(idx.shape[0]):
        for j in range(k + 1):
            p = math.exp(float(sum(bank[idx[b, j], d] * anchor[b, d] for d in range(anchor.shape[1]))) / t) / z
            total += math.log(p / (p + noise + 1e-7)) if j == 0 else math.log(noise / (p + noise + 1e-7))
    return -total / idx.shape[0]


def embed(linear: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    e = x.double() @ linear.weight.double().T + linear.bias.double()
    return e / e.norm(dim=1, keepdim=True)


def drawn(distiller: CRD, indices: torch.Tensor) -> torch.Tensor:
    """The rows the distiller's next term will score, drawn from a copy of its generator."""
    probe = copy.deepcopy(distiller)
    probe.generator.set_state(distiller.generator.get_state())
    return probe.draw(indices)


def test_crd_is_feat_weight_times_the_two_sided_nce_on_the_memory_banks_then_the_banks_move():
    distiller = crd(feat_weight=0.8)
    n, t, m = len(LABELS), 0.07, 0.5
    z = [None, None]
    for step in range(2):  # Z is set by the first batch, kept for the second
        s, te, y, indices = batch(step)
        idx = drawn(distiller, indices)
        bank_s, bank_t = distiller.bank_s.double().clone(), distiller.bank_t.double().clone()
        e_s, e_t = embed(distiller.embed_s, s.features.pooled), embed(distiller.embed_t, te.features.pooled)
        if z[0] is None:
            mean = lambda bank, e: sum(math.exp(float(bank[idx[b, j]] @ e[b]) / t) for b in range(B)
                                       for j in range(idx.shape[1])) / idx.numel()
            z = [mean(bank_t, e_s) * n, mean(bank_s, e_t) * n]
        loss_s, loss_t = ref_side(bank_t, idx, e_s, t, z[0], n), ref_side(bank_s, idx, e_t, t, z[1], n)
        parts = distiller.term(s, te, y, 0, indices)
        assert torch.allclose(parts["kd"].double(), torch.tensor(0.8 * (loss_s + loss_t), dtype=torch.float64),
                              rtol=1e-5)
        assert torch.allclose(parts["crd_student"].double(), torch.tensor(loss_s, dtype=torch.float64), rtol=1e-5)
        assert torch.allclose(distiller.z.double(), torch.tensor(z, dtype=torch.float64), rtol=1e-5)
        for bank, before, e in ((distiller.bank_s, bank_s, e_s), (distiller.bank_t, bank_t, e_t)):
            moved = m * before[indices] + (1 - m) * e
            assert torch.allclose(bank[indices].double(), moved / moved.norm(dim=1, keepdim=True), atol=1e-6)
            rest = torch.ones(n, dtype=torch.bool)
            rest[indices] = False
            assert torch.equal(bank[rest].double(), before[rest])  # only the batch's own entries move


def test_negatives_are_other_class_images_without_replacement_where_a_class_has_enough():
    distiller = crd(nce_k=18)  # exactly each class's 18 other-class images
    _, _, y, indices = batch()
    idx = distiller.draw(indices)
    assert idx.shape == (B, 19) and torch.equal(idx[:, 0], indices)
    for b in range(B):
        assert sorted(idx[b, 1:].tolist()) == [i for i in range(len(LABELS)) if LABELS[i] != y[b]]
    many = crd(nce_k=50)  # more than there are: drawn with replacement, still of other classes
    idx = many.draw(indices)
    assert idx.shape == (B, 51) and (LABELS[idx[:, 1:]] != y[:, None]).all()


def test_the_banks_z_and_the_negatives_generator_are_in_the_state_dict_and_restored():
    distiller = crd()
    s, t, y, indices = batch()
    distiller.term(s, t, y, 0, indices)
    state = distiller.state_dict()
    assert {"bank_s", "bank_t", "z", "_extra_state"} <= set(state) and "labels" not in state
    other = crd(seed=1)  # other initial banks, embeddings and generator
    other.load_state_dict(state)
    s, t, y, indices = batch(1)
    a, b = distiller.term(s, t, y, 0, indices), other.term(s, t, y, 0, indices)
    assert torch.equal(a["kd"], b["kd"]) and torch.equal(distiller.bank_s, other.bank_s)


def test_alpha_zero_is_cross_entropy_and_alpha_mixes_the_term_read_at_the_batchs_indices():
    distiller = crd()
    s, t, y, indices = batch()
    parts = distiller(s, None, y, alpha=0.0, epoch=0, indices=indices)
    assert torch.equal(parts.total, F.cross_entropy(s.logits, y)) and torch.equal(parts.kd, torch.zeros(()))
    assert torch.equal(distiller.z, torch.full((2,), -1.0))  # an alpha=0 cell never touches its banks
    expected = copy.deepcopy(distiller).term(s, t, y, 0, indices)["kd"]
    parts = distiller(s, t, y, alpha=0.3, epoch=0, indices=indices)
    assert torch.equal(parts.kd, expected) and torch.equal(parts.total, 0.7 * parts.ce + 0.3 * parts.kd)
    pooled = s.features.pooled.requires_grad_(True)
    distiller(s, t, y, alpha=0.3, epoch=0, indices=indices).total.backward()  # after the banks moved
    assert all(p.grad is not None for p in distiller.parameters()) and torch.isfinite(pooled.grad).all()
    with pytest.raises(ValueError, match="dataset indices"):
        distiller(s, t, y, alpha=0.3, epoch=0)


def test_the_yamls_give_repdistillers_recipe_and_crd_kd_adds_kd_to_crd():
    torch.manual_seed(0)
    student, teacher, images = resnet8(C), resnet14(C).eval(), torch.randn(B, 3, 8, 8)
    alone = instantiate(compose_config(["loss=crd", "alpha=0.5", "loss.scale=2"]).loss)
    assert type(alone) is CRD and alone.needs_indices and alone.scale == 2.0
    assert (alone.feat_dim, alone.nce_k, alone.nce_t, alone.nce_m, alone.feat_weight) == (128, 16384, 0.07, 0.5, 0.8)
    both = instantiate(compose_config(["loss=crd_kd", "alpha=0.5", "loss.scale=2", "loss.terms.crd.nce_k=7"]).loss)
    assert type(both) is Combined and both.needs_indices and both.needs_features and both.scale == 2.0
    assert type(both.terms["kd"]) is KD and both.terms["kd"].temperature == 4.0 and both.weights == {"kd": 1.0,
                                                                                                    "crd": 1.0}
    both.setup(student, teacher, images[:2], LABELS)
    s, t = Outputs(*student(images, features=True)), Outputs(*teacher(images, features=True))
    y, indices = LABELS[:B], torch.arange(B)
    crd_alone = copy.deepcopy(both.terms["crd"]).term(s, t, y, 0, indices)["kd"]
    parts = both(s, t, y, alpha=0.5, epoch=0, indices=indices)
    assert torch.allclose(parts.kd, kd_term(s.logits, t.logits, 4.0) + crd_alone)
    assert torch.equal(parts.total, parts.ce + parts.kd)  # RepDistiller's CE + KD + 0.8 CRD
    assert {"term_kd", "term_crd", "crd_crd_student"} <= set(parts.extra)
    assert any(k.startswith("terms.crd.bank_s") for k in both.state_dict())


@pytest.mark.parametrize("make, key", [
    (lambda: CRD(nce_k=0), "loss.nce_k=0"), (lambda: CRD(nce_t=0.0), "loss.nce_t=0.0"),
    (lambda: CRD(nce_m=1.0), "loss.nce_m=1.0"), (lambda: CRD(feat_dim=0), "loss.feat_dim=0"),
    (lambda: CRD(feat_weight=-1.0), "loss.feat_weight=-1.0"),
    (lambda: Combined({"kd": KD()}, {"crd": 1.0}), "must name the same"),
    (lambda: Combined({"kd": KD(scale=2.0)}, {"kd": 1.0}), "loss.terms.kd.scale=2.0"),
    (lambda: Combined({"kd": KD()}, {"kd": -1.0}), "loss.weights.kd=-1.0"),
])
def test_bad_settings_name_their_key(make, key):
    with pytest.raises(ValueError, match=key):
        make()
