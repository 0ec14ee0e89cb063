"""Each distiller against its paper's formula, computed here independently in float64 (DKD: Zhao et al. 2022;
FitNets: Romero et al. 2015; AT: Zagoruyko & Komodakis 2017), and the one meaning of alpha and scale."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch import nn

from kd.distillers.at import AT
from kd.distillers.base import Outputs
from kd.distillers.dkd import DKD
from kd.distillers.fitnet import FitNet
from kd.distillers.kd import KD
from kd.models.features import Features
from tests.conftest import compose_config

N, C, T = 6, 10, 4.0


def close(actual: torch.Tensor, expected: torch.Tensor) -> bool:
    """float32 distiller output against a float64 reference."""
    return torch.allclose(actual.double(), expected, rtol=1e-5, atol=1e-7)


@pytest.fixture
def logits():
    g = torch.Generator().manual_seed(0)
    s, t = (3 * torch.randn(N, C, generator=g, dtype=torch.float64) for _ in range(2))
    return s, t, torch.randint(0, C, (N,), generator=g)


# -- DKD: per-sample references, written from the paper's definitions --------------------------------------

def softmax(z: torch.Tensor) -> torch.Tensor:
    e = torch.exp(z - z.max())
    return e / e.sum()


def kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return (p * torch.log(p / q)).sum()


def ref_kd(s: torch.Tensor, t: torch.Tensor, T: float) -> torch.Tensor:
    return kl(softmax(t / T), softmax(s / T))


def ref_tckd(s: torch.Tensor, t: torch.Tensor, y: int, T: float) -> torch.Tensor:
    others = torch.arange(s.numel()) != y  # 1 - p^gt as the paper's sum over the other classes: exact near p^gt = 1
    p_s, p_t = softmax(s / T), softmax(t / T)
    return kl(torch.stack([p_t[y], p_t[others].sum()]), torch.stack([p_s[y], p_s[others].sum()]))


def ref_nckd(s: torch.Tensor, t: torch.Tensor, y: int, T: float) -> torch.Tensor:
    others = torch.arange(s.numel()) != y
    q_s, q_t = softmax(s / T)[others], softmax(t / T)[others]
    return kl(q_t / q_t.sum(), q_s / q_s.sum())


def ref_batch(fn, s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, T: float) -> torch.Tensor:
    return T**2 * torch.stack([fn(s[i], t[i], int(y[i]), T) for i in range(len(y))]).mean()


def test_dkd_parts_are_t2_batchmean_of_the_papers_kls(logits):
    s, t, y = logits
    parts = DKD(alpha=0.7, beta=3.0, temperature=T, warmup=0).term(Outputs(s), Outputs(t), y, epoch=0)
    tckd, nckd = ref_batch(ref_tckd, s, t, y, T), ref_batch(ref_nckd, s, t, y, T)
    assert close(parts["tckd"], tckd) and close(parts["nckd"], nckd)
    assert close(parts["kd"], 0.7 * tckd + 3.0 * nckd)
    assert parts["kd"].dtype == torch.float64  # float64 kept; bf16 is widened to float32 (test_logit_distillers.py)


def test_kd_is_tckd_plus_one_minus_teacher_target_prob_times_nckd_per_sample(logits):
    # The paper's reformulation, which holds per sample (not for the batch means): checked on the references, then on
    # the distiller one sample at a time against Hinton's KD.
    s, t, y = logits
    dkd, kd = DKD(alpha=1.0, beta=1.0, temperature=T, warmup=0), KD(temperature=T)
    for i in range(N):
        si, ti, yi = s[i], t[i], int(y[i])
        weight = 1 - softmax(ti / T)[yi]
        assert torch.allclose(ref_kd(si, ti, T), ref_tckd(si, ti, yi, T) + weight * ref_nckd(si, ti, yi, T))
        parts = dkd.term(Outputs(s[i:i + 1]), Outputs(t[i:i + 1]), y[i:i + 1], epoch=0)
        hinton = kd.term(Outputs(s[i:i + 1]), Outputs(t[i:i + 1]), y[i:i + 1], epoch=0)["kd"]
        assert torch.allclose(hinton, parts["tckd"] + weight.float() * parts["nckd"], rtol=1e-5)


@pytest.mark.parametrize("epoch, factor", [(0, 1 / 20), (9, 10 / 20), (19, 1.0), (30, 1.0)])
def test_dkd_warms_up_linearly_over_warmup_epochs_counted_from_zero(logits, epoch, factor):
    s, t, y = logits
    dkd = DKD(alpha=1.0, beta=8.0, temperature=T, warmup=20)
    assert dkd.warmup_factor(epoch) == factor
    parts = dkd.term(Outputs(s), Outputs(t), y, epoch)
    assert close(parts["kd"], factor * (ref_batch(ref_tckd, s, t, y, T) + 8.0 * ref_batch(ref_nckd, s, t, y, T)))
    assert DKD(warmup=0).warmup_factor(0) == 1.0


def test_dkd_is_finite_where_the_probabilities_underflow_in_float32(logits):
    # A margin of 500 (125 at T=4) puts the non-target probabilities below float32's range: mdistiller's
    # log(sum of those probabilities) is -inf there (its TCKD NaN); the log-sum-exp form stays exact.
    s, t, y = logits
    s, t = s.clone(), t.clone()
    s[torch.arange(N), y] += 500.0
    t[torch.arange(N), y] += 480.0
    s_ = s.float().requires_grad_(True)
    parts = DKD(temperature=T, warmup=0).term(Outputs(s_), Outputs(t.float()), y, epoch=0)
    assert close(parts["tckd"], ref_batch(ref_tckd, s, t, y, T))
    assert close(parts["nckd"], ref_batch(ref_nckd, s, t, y, T)) and parts["nckd"] > 1.0
    parts["kd"].backward()
    assert torch.isfinite(s_.grad).all()


def test_dkd_takes_soft_targets_argmax_as_the_target_class(logits):
    s, t, y = logits
    soft = 0.7 * F.one_hot(y, C).double() + 0.3 * F.one_hot((y + 1) % C, C).double()  # a Mixup pair
    dkd = DKD(warmup=0)
    hard, mixed = dkd.term(Outputs(s), Outputs(t), y, 0), dkd.term(Outputs(s), Outputs(t), soft, 0)
    assert all(torch.equal(hard[k], mixed[k]) for k in hard)


# -- FitNet: tiny networks whose stage maps have chosen shapes ----------------------------------------------

class Tiny(nn.Module):
    """feats[0] the stem's (with a BatchNorm), feats[i] a stage's of `shapes[i]` (channels, height, width)."""

    def __init__(self, shapes: list[tuple[int, int, int]]) -> None:
        super().__init__()
        self.shapes = shapes
        self.stem = nn.Sequential(nn.Conv2d(3, shapes[0][0], 3, padding=1), nn.BatchNorm2d(shapes[0][0]), nn.ReLU())
        self.stages = nn.ModuleList(nn.Conv2d(a[0], b[0], 3, padding=1) for a, b in zip(shapes, shapes[1:]))
        self.fc = nn.Linear(shapes[-1][0], C)

    def forward(self, x: torch.Tensor, features: bool = False):
        x = self.stem(x)
        feats = [x]
        for stage, (_, h, w) in zip(self.stages, self.shapes[1:]):
            x = torch.relu(F.adaptive_avg_pool2d(stage(x), (h, w)))
            feats.append(x)
        pooled = x.mean((2, 3))
        return (self.fc(pooled), Features(feats, feats, pooled)) if features else self.fc(pooled)


def fitnet_pair(s_hint: tuple[int, int, int], t_hint: tuple[int, int, int], **kwargs):
    torch.manual_seed(0)
    student = Tiny([(4, 16, 16), (4, 16, 16), s_hint, (8, 2, 2)])
    teacher = Tiny([(6, 16, 16), (6, 16, 16), t_hint, (12, 2, 2)]).eval()
    images = torch.randn(N, 3, 16, 16)
    fitnet = FitNet(**kwargs)
    fitnet.setup(student, teacher, images)
    return fitnet, student, teacher, images


@pytest.mark.parametrize("s_hint, conv, kernel, stride", [
    ((5, 8, 8), nn.Conv2d, (3, 3), (2, 2)),  # the student's map twice the teacher's
    ((5, 2, 2), nn.ConvTranspose2d, (4, 4), (2, 2)),  # half
    ((5, 4, 4), nn.Conv2d, (1, 1), (1, 1)),  # equal
    ((5, 6, 5), nn.Conv2d, (3, 2), (1, 1)),  # larger: a valid conv of the size difference
])
def test_fitnet_regressor_maps_the_students_hint_map_onto_the_teachers(s_hint, conv, kernel, stride):
    fitnet, student, _, images = fitnet_pair(s_hint, (7, 4, 4))
    first, bn, relu = fitnet.regressor
    assert type(first) is conv and first.kernel_size == kernel and first.stride == stride
    assert isinstance(bn, nn.BatchNorm2d) and isinstance(relu, nn.ReLU)
    f_s = student(images, features=True)[1].feats[2]
    assert fitnet.regressor(f_s).shape == (N, 7, 4, 4)


def test_fitnet_term_is_feat_weight_times_mse_of_the_regressed_hint():
    fitnet, student, teacher, images = fitnet_pair((5, 8, 8), (7, 4, 4), feat_weight=100.0)
    s_out, t_out = (Outputs(*net(images, features=True)) for net in (student, teacher))
    kd = fitnet.term(s_out, t_out, torch.zeros(N, dtype=torch.long), 0)["kd"]
    # The regressor by hand: conv 3x3 stride 2 pad 1, BatchNorm on the batch's (biased) statistics, ReLU.
    conv, bn, _ = fitnet.regressor
    x = F.conv2d(s_out.features.feats[2].double(), conv.weight.double(), conv.bias.double(), stride=2, padding=1)
    mean, var = x.mean((0, 2, 3), keepdim=True), x.var((0, 2, 3), unbiased=False, keepdim=True)
    x = (x - mean) / torch.sqrt(var + bn.eps) * bn.weight.double()[:, None, None] + bn.bias.double()[:, None, None]
    diff = torch.clamp(x, min=0) - t_out.features.feats[2].double()
    assert torch.allclose(kd.double(), 100.0 * (diff**2).sum() / diff.numel(), rtol=1e-5)
    kd.backward()
    assert conv.weight.grad is not None


def test_fitnet_regressor_is_a_submodule_trained_and_saved_with_the_distiller():
    fitnet, *_ = fitnet_pair((5, 8, 8), (7, 4, 4))
    params = {id(p) for p in fitnet.parameters()}
    assert params and params == {id(p) for p in fitnet.regressor.parameters()}
    assert {"regressor.0.weight", "regressor.1.running_mean"} <= set(fitnet.state_dict())


def test_fitnet_setup_leaves_the_networks_modes_and_bn_statistics_alone():
    torch.manual_seed(0)
    student, teacher = Tiny([(4, 16, 16), (4, 8, 8), (5, 8, 8)]), Tiny([(6, 16, 16), (6, 8, 8), (7, 4, 4)]).eval()
    before = [{k: v.clone() for k, v in net.state_dict().items()} for net in (student, teacher)]
    FitNet().setup(student, teacher, torch.randn(N, 3, 16, 16))
    assert student.training and all(m.training for m in student.modules())
    assert not any(m.training for m in teacher.modules())
    for net, state in zip((student, teacher), before):
        assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())


def test_fitnet_hint_layer_out_of_range_or_unmatched_shapes_are_errors():
    with pytest.raises(ValueError, match=r"loss.hint_layer=4 is out of range: the networks have 3 stages"):
        fitnet_pair((5, 8, 8), (7, 4, 4), hint_layer=4)
    with pytest.raises(ValueError, match=r"3x3 map onto the teacher's 4x4.*loss.hint_layer"):
        fitnet_pair((5, 3, 3), (7, 4, 4))
    with pytest.raises(ValueError, match="loss.hint_layer=-1"):
        FitNet(hint_layer=-1)
    with pytest.raises(ValueError, match="loss.feat_weight"):
        FitNet(feat_weight=-1.0)


# -- AT: attention maps by hand over stages of different sizes ----------------------------------------------

def ref_attention(f: torch.Tensor, p: float) -> torch.Tensor:
    a = (f**p).mean(1).reshape(f.shape[0], -1)
    return a / torch.sqrt((a**2).sum(1, keepdim=True))


def block_mean(f: torch.Tensor, size: int) -> torch.Tensor:
    """Average-pool a square map to `size` (a divisor of its side) by explicit blocks."""
    n, c, h, _ = f.shape
    k = h // size
    return f.reshape(n, c, size, k, size, k).mean((3, 5))


@pytest.mark.parametrize("p", [2.0, 4.0])
def test_at_term_is_feat_weight_times_sum_over_stages_of_mean_squared_attention_gap(p):
    g = torch.Generator().manual_seed(0)
    s_sides, t_sides = [8, 4, 2], [16, 4, 1]  # the teacher's map larger, equal, then smaller
    s_feats = [torch.randn(N, 3, 16, 16, generator=g, dtype=torch.float64)]  # the stems: not distilled
    t_feats = [torch.randn(N, 5, 16, 16, generator=g, dtype=torch.float64)]
    s_feats += [torch.randn(N, 4 * (i + 1), h, h, generator=g, dtype=torch.float64) for i, h in enumerate(s_sides)]
    t_feats += [torch.randn(N, 6 * (i + 1), h, h, generator=g, dtype=torch.float64) for i, h in enumerate(t_sides)]
    expected = 0.0
    for f_s, f_t in zip(s_feats[1:], t_feats[1:]):
        side = min(f_s.shape[2], f_t.shape[2])
        gap = ref_attention(block_mean(f_s, side), p) - ref_attention(block_mean(f_t, side), p)
        expected = expected + (gap**2).sum() / gap.numel()
    s_out = Outputs(torch.zeros(N, C), Features(s_feats, s_feats, torch.zeros(N, 1)))
    t_out = Outputs(torch.zeros(N, C), Features(t_feats, t_feats, torch.zeros(N, 1)))
    kd = AT(p=p, feat_weight=1000.0).term(s_out, t_out, torch.zeros(N, dtype=torch.long), 0)["kd"]
    assert kd.dtype == torch.float32 and close(kd, 1000.0 * expected)


def test_at_refuses_networks_with_different_numbers_of_stages():
    f = [torch.ones(1, 2, 4, 4)] * 4
    s_out = Outputs(torch.zeros(1, C), Features(f, f, f[0]))
    t_out = Outputs(torch.zeros(1, C), Features(f[:3], f[:3], f[0]))
    with pytest.raises(ValueError, match="the student has 3 and the teacher 2"):
        AT().term(s_out, t_out, torch.zeros(1, dtype=torch.long), 0)


# -- every distiller: one meaning of alpha and scale --------------------------------------------------------

def batch_for(name: str, scale: float = 1.0):
    """(distiller, student outputs, teacher outputs, targets) with float32 logits, as the loop gives them."""
    if name == "fitnet":
        fitnet, student, teacher, images = fitnet_pair((5, 8, 8), (7, 4, 4), scale=scale)
        s_out, t_out = (Outputs(*net(images, features=True)) for net in (student, teacher))
        return fitnet, s_out, t_out, torch.arange(N) % C
    g = torch.Generator().manual_seed(1)
    feats = [[torch.randn(N, c, h, h, generator=g) for c, h in ((3, 8), (4, 8), (8, 4))] for _ in range(2)]
    s_out, t_out = (Outputs(torch.randn(N, C, generator=g), Features(f, f, f[-1].mean((2, 3)))) for f in feats)
    distiller = {"kd": KD, "dkd": DKD, "at": AT}[name](scale=scale)
    return distiller, s_out, t_out, torch.randint(0, C, (N,), generator=g)


DISTILLERS = ["kd", "dkd", "fitnet", "at"]


@pytest.mark.parametrize("name", DISTILLERS)
def test_alpha_zero_is_exactly_cross_entropy_without_a_teacher(name):
    distiller, s_out, _, y = batch_for(name)
    parts = distiller(s_out, None, y, alpha=0.0, epoch=0)
    assert torch.equal(parts.total, F.cross_entropy(s_out.logits, y)) and torch.equal(parts.kd, torch.zeros(()))


@pytest.mark.parametrize("name", DISTILLERS)
def test_alpha_mixes_cross_entropy_and_the_term(name):
    distiller, s_out, t_out, y = batch_for(name)
    parts = distiller(s_out, t_out, y, alpha=0.3, epoch=25)
    assert torch.equal(parts.ce, F.cross_entropy(s_out.logits, y))
    assert torch.equal(parts.kd, distiller.term(s_out, t_out, y, 25)["kd"]) and parts.kd > 0
    assert torch.equal(parts.total, (1 - 0.3) * parts.ce + 0.3 * parts.kd)


@pytest.mark.parametrize("name", DISTILLERS)
def test_scale_two_with_alpha_half_is_exactly_ce_plus_term(name):
    distiller, s_out, t_out, y = batch_for(name, scale=2.0)
    parts = distiller(s_out, t_out, y, alpha=0.5, epoch=25)
    assert torch.equal(parts.total, parts.ce + parts.kd)


@pytest.mark.parametrize("make, key", [
    (lambda: DKD(beta=-1.0), "loss.beta=-1.0"), (lambda: DKD(alpha=-0.5), "loss.alpha=-0.5"),
    (lambda: DKD(temperature=0.0), "loss.temperature=0.0"), (lambda: DKD(warmup=-1), "loss.warmup=-1"),
    (lambda: KD(temperature=0.0), "loss.temperature=0.0"), (lambda: AT(p=0.0), "loss.p=0.0"),
    (lambda: AT(feat_weight=-1.0), "loss.feat_weight=-1.0"), (lambda: DKD(scale=0.0), "loss.scale=0.0"),
])
def test_bad_settings_name_their_key(make, key):
    with pytest.raises(ValueError, match=key):
        make()


@pytest.mark.parametrize("name, cls, defaults", [
    ("dkd", DKD, {"alpha": 1.0, "beta": 8.0, "temperature": 4.0, "warmup": 20}),
    ("fitnet", FitNet, {"hint_layer": 2, "feat_weight": 100.0}),
    ("at", AT, {"p": 2.0, "feat_weight": 1000.0}),
])
def test_each_yaml_composes_into_its_distiller_with_mdistillers_defaults(name, cls, defaults):
    distiller = instantiate(compose_config([f"loss={name}", "alpha=0.5", "loss.scale=2"]).loss)
    assert type(distiller) is cls and distiller.scale == 2.0
    assert all(getattr(distiller, k) == v for k, v in defaults.items())
