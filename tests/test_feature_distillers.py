"""The feature distillers of RepDistiller and mdistiller against their papers' formulas, each computed here
independently in float64 with explicit loops (PKT: Passalis & Tefas 2018; SP: Tung & Mori 2019; RKD: Park et
al. 2019; NST: Huang & Wang 2017; CC: Peng et al. 2019 as RepDistiller runs it; VID: Ahn et al. 2019; OFD: Heo
et al. 2019; ReviewKD: Chen et al. 2021; AB: Heo et al. 2019; KDSVD: Lee et al. 2018; FSP: Yim et al. 2017; FT: Kim
et al. 2018), and the one meaning of alpha and scale for each on kd's real networks."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from kd.distillers.ab import AB
from kd.distillers.base import Outputs
from kd.distillers.cc import CC
from kd.distillers.fsp import FSP
from kd.distillers.ft import FT
from kd.distillers.kdsvd import KDSVD
from kd.distillers.ofd import OFD, bn_before_relu, negative_mean
from kd.distillers.reviewkd import ReviewKD, hcl
from kd.distillers.nst import NST
from kd.distillers.pkt import PKT
from kd.distillers.rkd import RKD
from kd.distillers.sp import SP
from kd.distillers.vid import VID
from kd.models.features import Features
from kd.models.mobilenetv2 import mobilenetv2
from kd.models.resnet import resnet8, resnet14, resnet32x4
from kd.models.resnetv2 import resnet50
from kd.models.shufflenetv1 import shufflev1
from kd.models.vgg import vgg13
from kd.models.wrn import wrn_40_2
from tests.conftest import compose_config

N, C = 5, 10
Y = torch.zeros(N, dtype=torch.long)


def close(actual: torch.Tensor, expected: torch.Tensor) -> bool:
    """float32 distiller output against a float64 reference."""
    return torch.allclose(actual.double(), expected.double(), rtol=1e-5, atol=1e-7)


def outputs(feats: list[torch.Tensor], pooled: torch.Tensor) -> Outputs:
    return Outputs(torch.zeros(N, C), Features(feats, feats, pooled))


@pytest.fixture
def pair():
    """Student and teacher outputs in float64: a stem and three stages each (the teacher's maps larger, equal,
    then smaller than the student's), non-negative as after a ReLU, and pooled vectors of different widths."""
    g = torch.Generator().manual_seed(0)
    s_shapes, t_shapes = [(3, 8), (4, 8), (6, 4), (8, 2)], [(5, 8), (6, 8), (7, 4), (9, 1)]
    s = [torch.rand(N, c, h, h, generator=g, dtype=torch.float64) for c, h in s_shapes]
    t = [torch.rand(N, c, h, h, generator=g, dtype=torch.float64) for c, h in t_shapes]
    s_pooled, t_pooled = torch.randn(N, 8, generator=g, dtype=torch.float64), torch.randn(N, 9, generator=g,
                                                                                         dtype=torch.float64)
    return outputs(s, s_pooled), outputs(t, t_pooled)


def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum()


def block_mean(f: torch.Tensor, side: int) -> torch.Tensor:
    n, c, h, _ = f.shape
    k = h // side
    return f.reshape(n, c, side, k, side, k).mean((3, 5))


def common(f_s: torch.Tensor, f_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    side = min(f_s.shape[2], f_t.shape[2])
    return block_mean(f_s, side), block_mean(f_t, side)


# -- PKT: conditional probabilities from cosine similarities, KL averaged over the N x N entries ------------

def ref_pkt(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    def probs(f):
        k = torch.tensor([[(1 + dot(f[i], f[j]) / (f[i].norm() * f[j].norm())) / 2 for j in range(N)]
                          for i in range(N)], dtype=torch.float64)
        return k / k.sum(1, keepdim=True)
    p_s, p_t = probs(f_s), probs(f_t)
    return sum(p_t[i, j] * math.log(p_t[i, j] / p_s[i, j]) for i in range(N) for j in range(N)) / N**2


def test_pkt_is_feat_weight_times_the_kl_of_cosine_conditional_probabilities(pair):
    s, t = pair
    kd = PKT(feat_weight=30000.0).term(s, t, Y, 0)["kd"]
    assert close(kd, 30000.0 * ref_pkt(s.features.pooled, t.features.pooled))


# -- SP: row-normalised batch Gram matrices of the last stage ------------------------------------------------

def test_sp_is_feat_weight_times_the_squared_gap_of_row_normalised_gram_matrices(pair):
    s, t = pair
    def gram(f):
        f = f.reshape(N, -1)
        g = torch.tensor([[dot(f[i], f[j]) for j in range(N)] for i in range(N)], dtype=torch.float64)
        return g / g.norm(dim=1, keepdim=True)
    expected = ((gram(t.features.feats[-1]) - gram(s.features.feats[-1])) ** 2).sum() / N**2
    assert close(SP(feat_weight=3000.0).term(s, t, Y, 0)["kd"], 3000.0 * expected)


# -- RKD: distances normalised by their mean, angles at each vertex, Huber losses ----------------------------

def huber(x: float) -> float:
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


def ref_rkd(s: torch.Tensor, t: torch.Tensor) -> tuple[float, float]:
    def psi_d(e):
        d = {(i, j): float((e[i] - e[j]).norm()) for i in range(N) for j in range(N)}
        mu = sum(v for (i, j), v in d.items() if i != j) / (N * (N - 1))
        return {k: v / mu for k, v in d.items()}
    def psi_a(e, i, j, k):  # the cosine of the angle at e_j; 0 where an edge is empty
        if i == j or k == j:
            return 0.0
        a, b = e[i] - e[j], e[k] - e[j]
        return float(dot(a, b) / (a.norm() * b.norm()))
    d_s, d_t = psi_d(s), psi_d(t)
    distance = sum(huber(d_s[k] - d_t[k]) for k in d_s) / N**2
    triples = list(itertools.product(range(N), repeat=3))
    angle = sum(huber(psi_a(s, *ijk) - psi_a(t, *ijk)) for ijk in triples) / N**3
    return distance, angle


def test_rkd_is_the_papers_distance_and_angle_huber_losses(pair):
    s, t = pair
    parts = RKD(distance_weight=25.0, angle_weight=50.0, feat_weight=2.0).term(s, t, Y, 0)
    distance, angle = ref_rkd(s.features.pooled, t.features.pooled)
    assert close(parts["distance"], torch.tensor(distance)) and close(parts["angle"], torch.tensor(angle))
    assert close(parts["kd"], torch.tensor(2.0 * (25.0 * distance + 50.0 * angle)))


def test_rkd_gradient_is_finite_on_the_distance_diagonal(pair):
    s, t = pair
    pooled = s.features.pooled.float().requires_grad_(True)
    RKD().term(outputs(s.features.feats, pooled), t, Y, 0)["kd"].backward()
    assert torch.isfinite(pooled.grad).all()


# -- NST: squared MMD of the channels' normalised activations, polynomial kernel (x . y)^2 -------------------

def ref_mmd(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    total = 0.0
    for n in range(N):
        s = [v / v.norm() for v in f_s[n].reshape(f_s.shape[1], -1)]
        t = [v / v.norm() for v in f_t[n].reshape(f_t.shape[1], -1)]
        k = lambda a, b: sum(dot(x, y) ** 2 for x in a for y in b) / (len(a) * len(b))
        total = total + k(t, t) + k(s, s) - 2 * k(s, t)
    return total / N


def test_nst_is_feat_weight_times_the_sum_over_stages_of_the_polynomial_mmd(pair):
    s, t = pair
    expected = sum(ref_mmd(*common(f_s, f_t)) for f_s, f_t in zip(s.features.feats[1:], t.features.feats[1:]))
    assert close(NST(feat_weight=50.0).term(s, t, Y, 0)["kd"], 50.0 * expected)


# -- CC and VID: learned parts, built from the networks' shapes ----------------------------------------------

class Fixed(torch.nn.Module):
    """A 'network' whose features are given: setup reads their shapes."""

    def __init__(self, out: Outputs) -> None:
        super().__init__()
        self.out, self.anchor = out, torch.nn.Linear(1, 1)

    def forward(self, x, features=False):
        return (self.out.logits, self.out.features) if features else self.out.logits


def built(distiller, s: Outputs, t: Outputs):
    distiller.setup(Fixed(s), Fixed(t), torch.zeros(2, 3, 8, 8))
    return distiller


def test_cc_is_feat_weight_times_the_congruence_of_consecutive_embedded_gaps(pair):
    s, t = pair
    cc = built(CC(feat_dim=4, feat_weight=0.02), s, t)
    def embed(linear, f):
        return f @ linear.weight.double().t() + linear.bias.double()
    d = (embed(cc.embed_s, s.features.pooled) - embed(cc.embed_t, t.features.pooled)).abs()
    expected = sum(dot(d[i], d[i + 1]) for i in range(N - 1)) / (N - 1)
    assert cc.embed_s.in_features == 8 and cc.embed_t.in_features == 9 and cc.embed_s.out_features == 4
    assert close(cc.term(s, t, Y, 0)["kd"], 0.02 * expected)


def test_vid_is_feat_weight_times_the_gaussian_negative_log_likelihood_summed_over_stages(pair):
    s, t = pair
    vid = built(VID(init_pred_var=5.0, eps=1e-5, feat_weight=1.5), s, t)
    var0 = torch.log1p(torch.exp(vid.log_scales[0].double())) + 1e-5
    assert torch.allclose(var0, torch.full_like(var0, 5.0))  # the variance starts at init_pred_var
    with torch.no_grad():
        for log_scale in vid.log_scales:  # away from the start, so that the variance is not one number
            log_scale.add_(torch.linspace(-1, 1, len(log_scale)))
    expected = 0.0
    for (f_s, f_t), reg, log_scale in zip(zip(s.features.feats[1:], t.features.feats[1:]), vid.regressors,
                                          vid.log_scales):
        f_s, f_t = common(f_s, f_t)
        w1, w2, w3 = (m.weight.double()[:, :, 0, 0] for m in reg if isinstance(m, torch.nn.Conv2d))
        mu = torch.einsum("oc,nchw->nohw", w1, f_s).clamp(min=0)
        mu = torch.einsum("oc,nchw->nohw", w2, mu).clamp(min=0)
        mu = torch.einsum("oc,nchw->nohw", w3, mu)
        var = (torch.log(1 + torch.exp(log_scale.double())) + 1e-5)[None, :, None, None]
        expected = expected + (0.5 * ((mu - f_t) ** 2 / var + torch.log(var))).mean()
    kd = vid.term(s, t, Y, 0)["kd"]
    assert close(kd, 1.5 * expected)
    kd.backward()
    assert all(p.grad is not None for p in vid.parameters())


# -- OFD: margins from the teacher's BN before each ReLU, partial L2 to max(t, margin) ------------------------

def ref_partial_l2(s: torch.Tensor, t: torch.Tensor, margin: torch.Tensor) -> float:
    """Per element, the paper's d_p(T, S): 0 where S <= T <= 0, else (T - S)^2, with T = max(t, m); the sum over
    channels and positions of the batch mean."""
    total = 0.0
    for n, c, h, w in itertools.product(*(range(k) for k in s.shape)):
        target, student = max(float(t[n, c, h, w]), float(margin[c])), float(s[n, c, h, w])
        total += 0.0 if student <= target <= 0 else (target - student) ** 2
    return total / s.shape[0]


def test_ofd_margin_is_the_mean_of_the_gaussians_negative_part():
    from scipy.stats import truncnorm
    gamma, beta = torch.tensor([1.0, -2.0, 0.5, 1.0]), torch.tensor([0.0, 1.0, -1.0, 4.0])  # P(x<0) of the last: 3e-5
    expected = [truncnorm.mean(-math.inf, -b / abs(g), loc=b, scale=abs(g)) for g, b in zip(gamma.tolist(),
                                                                                             beta.tolist())]
    expected[-1] = -3.0  # where P(x < 0) <= 0.001: -3 |gamma|
    assert torch.allclose(negative_mean(gamma, beta).double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-6)


@pytest.mark.parametrize("make, names", [  # mdistiller's get_bn_before_relu for each family, by their names
    (resnet32x4, ["layers.4.bn2", "layers.9.bn2", "layers.14.bn2"]),
    (resnet8, ["layers.0.bn2", "layers.1.bn2", "layers.2.bn2"]),
    (wrn_40_2, ["block2.layer.0.bn1", "block3.layer.0.bn1", "bn1"]),
    (resnet50, ["layer1.2.bn3", "layer2.3.bn3", "layer3.5.bn3", "layer4.2.bn3"]),
    (vgg13, ["block1.4", "block2.4", "block3.4", "block4.4"]),
    (shufflev1, ["layer1.3.bn3", "layer2.7.bn3", "layer3.3.bn3"]),
    (mobilenetv2, ["blocks.1.1.conv.7", "blocks.2.2.conv.7", "blocks.4.2.conv.7", "blocks.6.0.conv.7"]),
])
def test_ofd_finds_each_stages_bn_before_its_relu(make, names):
    net = make(C)
    found = {m: n for n, m in net.named_modules()}
    assert [found[bn] for bn in bn_before_relu(net, torch.zeros(2, 3, 32, 32))] == names


def test_ofd_term_is_the_weighted_partial_l2_of_the_connected_student():
    torch.manual_seed(0)
    student, teacher = resnet8(C), resnet14(C).eval()
    with torch.no_grad():  # BNs as after training: margins of every kind, one channel almost never negative
        for bn in bn_before_relu(teacher, torch.zeros(2, 3, 8, 8)):
            bn.weight.uniform_(0.2, 2.0)
            bn.bias.uniform_(-2.0, 1.0)
            bn.bias[0] = 5.0 * bn.weight[0]
    images = torch.randn(N, 3, 8, 8)
    ofd = OFD(feat_weight=0.001)
    ofd.setup(student, teacher, images[:2])
    s_out, t_out = Outputs(*student(images, features=True)), Outputs(*teacher(images, features=True))
    expected = 0.0
    for i, (f_s, f_t, conn, bn) in enumerate(zip(s_out.features.preact[1:], t_out.features.preact[1:], ofd.connectors,
                                                 bn_before_relu(teacher, images[:2]))):
        conv, norm = conn
        x = torch.einsum("oc,nchw->nohw", conv.weight.double()[:, :, 0, 0], f_s.double())
        x = (x - x.mean((0, 2, 3), keepdim=True)) / torch.sqrt(x.var((0, 2, 3), unbiased=False, keepdim=True) + norm.eps)
        from scipy.stats import truncnorm
        margin = [truncnorm.mean(-math.inf, -b / abs(g), loc=b, scale=abs(g)) if truncnorm.cdf(0, -math.inf, math.inf,
                  loc=b, scale=abs(g)) > 0.001 else -3 * abs(g) for g, b in zip(bn.weight.tolist(), bn.bias.tolist())]
        expected += ref_partial_l2(x, block_mean(f_t.double(), x.shape[2]), torch.tensor(margin)) / 2 ** (2 - i)
    kd = ofd.term(s_out, Outputs(t_out.logits, t_out.features), Y, 0)["kd"]
    assert torch.allclose(kd.double(), torch.tensor(0.001 * expected, dtype=torch.float64), rtol=1e-4)


# -- ReviewKD: the hierarchical context loss, the review's shapes, the warmup --------------------------------

def test_hcl_is_the_mse_plus_its_pooled_pyramid_weighted_by_halves():
    g = torch.Generator().manual_seed(0)
    for side, pyramid in ((8, (4, 2, 1)), (4, (2, 1)), (2, (1,)), (1, ())):
        f_s, f_t = (torch.randn(N, 3, side, side, generator=g, dtype=torch.float64) for _ in range(2))
        mse = lambda a, b: ((a - b) ** 2).mean()
        loss, weights = mse(f_s, f_t), [1.0]
        for level, p in enumerate(pyramid):
            weights.append(0.5 ** (level + 1))
            loss = loss + weights[-1] * mse(block_mean(f_s, p), block_mean(f_t, p))
        assert close(hcl(f_s.float(), f_t.float()), loss / sum(weights))


def test_reviewkd_reviews_from_the_deepest_level_into_the_teachers_shapes_and_warms_up():
    torch.manual_seed(0)
    student, teacher = resnet8(C), resnet14(C).eval()
    images = torch.randn(N, 3, 8, 8)
    review = ReviewKD(feat_weight=5.0, warmup=20)
    review.setup(student, teacher, images[:2])
    assert [abf.att_conv is None for abf in review.abfs] == [True, False, False, False]  # the deepest fuses nothing
    s_out, t_out = Outputs(*student(images, features=True)), Outputs(*teacher(images, features=True))
    t_levels = [f.detach() for f in t_out.features.preact[1:]] + [t_out.features.pooled.detach()[:, :, None, None]]
    outs = review.review(s_out, t_levels)
    assert [o.shape for o in outs] == [f.shape for f in reversed(t_levels)]
    loss = sum(hcl(o, f) for o, f in zip(outs, reversed(t_levels)))
    for epoch, factor in ((0, 1 / 20), (9, 10 / 20), (30, 1.0)):
        assert torch.allclose(review.term(s_out, t_out, Y, epoch)["kd"], 5.0 * factor * loss)


# -- AB: the hinge-squared activation-boundary loss --------------------------------------------------------

def test_ab_term_is_the_weighted_hinge_squared_boundary_loss(pair):
    s, t = pair
    ab = built(AB(margin=1.0, feat_weight=2.0), s, t)
    assert all(not isinstance(c, torch.nn.Identity) for c in ab.connectors)
    s = Outputs(s.logits, Features(s.features.feats, [2 * f - 1 for f in s.features.feats], s.features.pooled))
    t = Outputs(t.logits, Features(t.features.feats, [2 * f - 1 for f in t.features.feats], t.features.pooled))
    expected = 0.0
    for i, (f_s, f_t, conn) in enumerate(zip(s.features.preact[1:], t.features.preact[1:], ab.connectors)):
        x = conn(f_s.float()).double()
        total = sum(max(0.0, 1.0 - float(x[idx])) ** 2 if f_t[idx] > 0 else max(0.0, float(x[idx]) + 1.0) ** 2
                    for idx in itertools.product(*(range(k) for k in x.shape)))
        expected += 2.0 ** (i - 2) * total / N
    assert torch.allclose(ab.term(s, t, Y, 0)["kd"].double(), torch.tensor(2.0 * 3 / 1000 * expected,
                                                                          dtype=torch.float64), rtol=1e-5)


def test_ab_needs_no_connector_where_the_maps_already_match():
    torch.manual_seed(0)
    ab = AB()
    ab.setup(resnet8(C), resnet14(C), torch.zeros(2, 3, 8, 8))
    assert all(isinstance(c, torch.nn.Identity) for c in ab.connectors) and not list(ab.parameters())


def test_ab_first_stage_is_its_unweighted_loss_over_the_connectors_and_the_students_feature_layers(pair):
    s, t = pair
    ab = built(AB(margin=1.0, feat_weight=2.0), s, t)
    assert torch.equal(ab.term(s, t, Y, 0)["kd"], 2.0 * ab.first_term(s, t))
    student = resnet8(C)
    modules = ab.first_stage_modules(student)
    assert modules[0] is ab.connectors and student.fc not in modules
    assert {id(p) for m in modules[1:] for p in m.parameters()} == {
        id(p) for n, p in student.named_parameters() if not n.startswith("fc.")}


# -- FSP: Gram matrices of consecutive maps, and its first stage -----------------------------------------------

def block_mean(f: torch.Tensor, size: int) -> torch.Tensor:
    """Average-pooling to size x size by explicit block means (the sizes here divide)."""
    k = f.shape[2] // size
    out = torch.zeros(f.shape[0], f.shape[1], size, size, dtype=torch.float64)
    for y, x in itertools.product(range(size), range(size)):
        out[:, :, y, x] = f[:, :, y * k:(y + 1) * k, x * k:(x + 1) * k].double().mean((2, 3))
    return out


def ref_fsp(bottom: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
    size = min(bottom.shape[2], top.shape[2])
    bottom, top = block_mean(bottom, size), block_mean(top, size)
    g = torch.zeros(bottom.shape[0], top.shape[1], bottom.shape[1], dtype=torch.float64)
    for n, j, i in itertools.product(*(range(k) for k in g.shape)):
        g[n, j, i] = sum(float(bottom[n, i, y, x] * top[n, j, y, x])
                         for y, x in itertools.product(range(size), range(size))) / size ** 2
    return g


def test_fsp_matrix_and_loss_match_a_float64_computation():
    from kd.distillers.fsp import fsp_loss, fsp_matrix
    g = torch.Generator().manual_seed(1)
    shapes = [(3, 8), (4, 8), (6, 4), (8, 2)]
    s = [torch.rand(N, c, h, h, generator=g) for c, h in shapes]
    t = [torch.rand(N, c, h, h, generator=g) for c, h in shapes]
    for bottom, top in zip(s, s[1:]):
        assert torch.allclose(fsp_matrix(bottom, top).double(), ref_fsp(bottom, top), rtol=1e-5, atol=1e-7)
    expected = sum(float(((ref_fsp(s[i], s[i + 1]) - ref_fsp(t[i], t[i + 1])) ** 2).mean()) for i in range(3))
    assert math.isclose(float(fsp_loss(s, t)), expected, rel_tol=1e-5)
    fsp = FSP(feat_weight=50.0)
    s_out, t_out = outputs(s, torch.zeros(N, 8)), outputs(t, torch.zeros(N, 8))
    assert torch.equal(fsp.first_term(s_out, t_out), fsp_loss(s, t))
    assert torch.equal(fsp.term(s_out, t_out, Y, 0)["kd"], 50.0 * fsp_loss(s, t))
    student = resnet8(C)
    assert {id(p) for m in fsp.first_stage_modules(student) for p in m.parameters()} == {
        id(p) for n, p in student.named_parameters() if not n.startswith("fc.")}


def test_fsp_refuses_networks_whose_channels_differ():
    with pytest.raises(ValueError, match="FSP compares the networks' maps channel by channel"):
        FSP().setup(resnet8(C), resnet32x4(C), torch.zeros(2, 3, 8, 8))


# -- FT: the paraphraser's reconstruction first, then the factors' L1 gap ---------------------------------------

def ref_factor(f: torch.Tensor, size: int) -> list[list[float]]:
    f = block_mean(f, size)
    rows = []
    for n in range(f.shape[0]):
        m = [float((f[n, :, y, x] ** 2).mean()) for y, x in itertools.product(range(size), range(size))]
        norm = math.sqrt(sum(v * v for v in m))
        rows.append([v / norm for v in m])
    return rows


def test_ft_factor_loss_and_reconstruction_match_float64(pair):
    from kd.distillers.ft import factor_loss
    s, t = pair
    ft = built(FT(k=0.5, feat_weight=200.0), s, t)
    f_s, f_t = s.features.feats[-1], t.features.feats[-1]  # 8 channels at 2x2, 9 at 1x1
    a, b = ref_factor(f_s, 1), ref_factor(f_t, 1)
    expected = sum(abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb)) / (N * 1)
    assert math.isclose(float(factor_loss(f_s.float(), f_t.float())), expected, rel_tol=1e-5, abs_tol=1e-7)
    g = torch.Generator().manual_seed(2)
    x, y = torch.rand(N, 6, 4, 4, generator=g), torch.rand(N, 5, 2, 2, generator=g)
    a, b = ref_factor(x, 2), ref_factor(y, 2)
    expected = sum(abs(p - q) for ra, rb in zip(a, b) for p, q in zip(ra, rb)) / (N * 4)
    assert math.isclose(float(factor_loss(x, y)), expected, rel_tol=1e-5)
    with torch.no_grad():  # the term: the translator's factor of the student's map against the paraphraser's
        factor_s, factor_t = ft.translator(f_s.float()), ft.paraphraser["encoder"](f_t.float())
        size = min(factor_s.shape[2], factor_t.shape[2])
        a, b = ref_factor(factor_s, size), ref_factor(factor_t, size)
        expected = 200.0 * sum(abs(p - q) for ra, rb in zip(a, b) for p, q in zip(ra, rb)) / (N * size ** 2)
        assert math.isclose(float(ft.term(s, t, Y, 0)["kd"]), expected, rel_tol=1e-5)
        rec = ft.paraphraser["decoder"](factor_t).double()
        assert math.isclose(float(ft.first_term(s, t)), float(((rec - f_t) ** 2).mean()), rel_tol=1e-5)
    assert factor_t.shape[1] == 4 == int(9 * 0.5)  # k = 0.5 of the teacher's channels
    assert ft.first_stage_modules(resnet8(C)) == [ft.paraphraser]
    main = {id(p) for p in ft.main_parameters()}
    assert main == {id(p) for p in ft.translator.parameters()} and not main & {id(p) for p in ft.paraphraser.parameters()}


# -- KDSVD: aligned singular vectors of consecutive stages, RBF correlations --------------------------------

def ref_kdsvd(s_maps: list[torch.Tensor], t_maps: list[torch.Tensor], k: int) -> float:
    """Per image, numpy's float64 SVD of each map as the paper's H*W x C matrix (built entry by entry); the
    teacher's first k right-singular vectors (each with its largest entry positive) and normalised singular
    values, the student's first k + 3; each teacher vector's most |cosine|-aligned student vector, sign-matched;
    the squared gaps of exp(-(v_i[c] - v_{i-1}[c'])^2 / 8) over consecutive stages, summed, over the batch."""
    import numpy as np
    def matrix(f, b):
        c, h, w = f.shape[1:]
        return np.array([[float(f[b, ch, p // w, p % w]) for ch in range(c)] for p in range(h * w)])
    total = 0.0
    for b in range(s_maps[0].shape[0]):
        prev = None
        for f_s, f_t in zip(s_maps, t_maps):
            _, sv_t, vt_t = np.linalg.svd(matrix(f_t, b), full_matrices=False)
            _, _, vt_s = np.linalg.svd(matrix(f_s, b), full_matrices=False)  # min(HW, C) vectors
            sigma = sv_t[:k] / np.linalg.norm(sv_t[:k])
            t_vecs = [v if v[np.argmax(np.abs(v))] > 0 else -v for v in vt_t[:k]]
            s_vecs = list(vt_s[:k + 3])
            aligned = []
            for v in t_vecs:
                cos = [float(u @ v) for u in s_vecs]
                best = max(range(len(cos)), key=lambda i: abs(cos[i]))
                aligned.append(np.sign(cos[best]) * s_vecs[best])
            t_vecs = [sigma[j] * v for j, v in enumerate(t_vecs)]
            s_vecs = [sigma[j] * v for j, v in enumerate(aligned)]
            if prev is not None:
                for j in range(k):
                    for c in range(len(s_vecs[j])):
                        for c2 in range(len(prev[0][j])):
                            g_s = math.exp(-(s_vecs[j][c] - prev[0][j][c2]) ** 2 / 8)
                            g_t = math.exp(-(t_vecs[j][c] - prev[1][j][c2]) ** 2 / 8)
                            total += (g_s - g_t) ** 2
            prev = (s_vecs, t_vecs)
    return total / s_maps[0].shape[0]


@pytest.mark.parametrize("k", [1, 2])
def test_kdsvd_is_feat_weight_times_the_rbf_gap_of_aligned_singular_vectors(k):
    g = torch.Generator().manual_seed(0)
    channels, s_sides, t_sides = (4, 6, 8), (8, 4, 2), (4, 4, 2)  # equal channels, sizes free; the last HW < C
    s = [torch.rand(N, 3, 8, 8, generator=g, dtype=torch.float64)] + [
        torch.rand(N, c, h, h, generator=g, dtype=torch.float64) for c, h in zip(channels, s_sides)]
    t = [torch.rand(N, 3, 8, 8, generator=g, dtype=torch.float64)] + [
        torch.rand(N, c, h, h, generator=g, dtype=torch.float64) for c, h in zip(channels, t_sides)]
    s_out, t_out = outputs(s, torch.zeros(N, 8)), outputs(t, torch.zeros(N, 8))
    kdsvd = built(KDSVD(k=k, feat_weight=1.5), s_out, t_out)
    assert all(isinstance(c, torch.nn.Identity) for c in kdsvd.connectors)  # equal channels: no learned part
    expected = ref_kdsvd(s[1:], t[1:], k)
    assert expected > 0
    kd = kdsvd.term(s_out, t_out, Y, 0)["kd"]
    assert torch.allclose(kd.double(), torch.tensor(1.5 * expected, dtype=torch.float64), rtol=1e-4)


def test_kdsvd_connects_the_students_stages_whose_channels_differ(pair):
    s, t = pair
    kdsvd = built(KDSVD(), s, t)
    assert [c[0].out_channels for c in kdsvd.connectors] == [6, 7, 9]
    s = outputs([f.float().requires_grad_(True) for f in s.features.feats], s.features.pooled)
    kd = kdsvd.term(s, t, Y, 0)["kd"]
    kd.backward()
    assert torch.isfinite(kd) and all(torch.isfinite(p.grad).all() for p in kdsvd.parameters())
    assert all(torch.isfinite(f.grad).all() for f in s.features.feats[1:])


# -- every new distiller on kd's real networks: alpha, scale, the YAML --------------------------------------

NEW = {"pkt": PKT, "sp": SP, "rkd": RKD, "nst": NST, "cc": CC, "vid": VID, "ofd": OFD, "reviewkd": ReviewKD, "ab": AB,
       "kdsvd": KDSVD, "fsp": FSP, "ft": FT}


def real_batch(name: str, scale: float = 1.0):
    """(distiller, student outputs, teacher outputs, targets) on resnet8 <- resnet14, 8x8 images."""
    torch.manual_seed(0)
    student, teacher = resnet8(C), resnet14(C).eval()
    images = torch.randn(6, 3, 8, 8)
    distiller = instantiate(compose_config([f"loss={name}", f"loss.scale={scale}"]).loss)
    distiller.setup(student, teacher, images[:2])
    s_out, t_out = Outputs(*student(images, features=True)), Outputs(*teacher(images, features=True))
    return distiller, s_out, Outputs(t_out.logits.detach(), Features(*(
        [f.detach() for f in x] if isinstance(x, list) else x.detach() for x in t_out.features))), torch.arange(6) % C


@pytest.mark.parametrize("name", NEW)
def test_alpha_zero_is_exactly_cross_entropy_and_alpha_mixes_the_term(name):
    distiller, s_out, t_out, y = real_batch(name)
    assert type(distiller) is NEW[name]
    parts = distiller(s_out, None, y, alpha=0.0, epoch=0)
    assert torch.equal(parts.total, F.cross_entropy(s_out.logits, y)) and torch.equal(parts.kd, torch.zeros(()))
    parts = distiller(s_out, t_out, y, alpha=0.3, epoch=25)
    assert torch.equal(parts.kd, distiller.term(s_out, t_out, y, 25)["kd"]) and torch.isfinite(parts.kd)
    assert torch.equal(parts.total, (1 - 0.3) * parts.ce + 0.3 * parts.kd)
    parts.total.backward()
    assert all(p.grad is not None for p in distiller.main_parameters())


@pytest.mark.parametrize("name", NEW)
def test_scale_two_with_alpha_half_is_exactly_ce_plus_term(name):
    distiller, s_out, t_out, y = real_batch(name, scale=2.0)
    parts = distiller(s_out, t_out, y, alpha=0.5, epoch=0)
    assert torch.equal(parts.total, parts.ce + parts.kd)


@pytest.mark.parametrize("name, defaults", [
    ("pkt", {"feat_weight": 30000.0}), ("sp", {"feat_weight": 3000.0}), ("nst", {"feat_weight": 50.0}),
    ("rkd", {"distance_weight": 25.0, "angle_weight": 50.0, "feat_weight": 1.0}),
    ("cc", {"feat_dim": 128, "feat_weight": 0.02}), ("vid", {"init_pred_var": 5.0, "eps": 1e-5, "feat_weight": 1.0}),
    ("ofd", {"feat_weight": 0.001}), ("reviewkd", {"feat_weight": 1.0, "warmup": 20, "max_mid_channels": 512}),
    ("ab", {"margin": 1.0, "feat_weight": 0.0, "first_stage_epochs": 30, "first_stage_lr": 0.05}),
    ("kdsvd", {"k": 1, "feat_weight": 1.0}),
    ("fsp", {"feat_weight": 0.0, "first_stage_epochs": 30, "first_stage_lr": 0.05}),
    ("ft", {"k": 0.5, "feat_weight": 200.0, "first_stage_epochs": 30, "first_stage_lr": 0.01}),
])
def test_each_yaml_composes_into_its_distiller_with_the_references_defaults(name, defaults):
    distiller = instantiate(compose_config([f"loss={name}", "alpha=0.5", "loss.scale=2"]).loss)
    assert type(distiller) is NEW[name] and distiller.scale == 2.0 and distiller.needs_features
    assert all(getattr(distiller, k) == v for k, v in defaults.items())


@pytest.mark.parametrize("make, key", [
    (lambda: PKT(feat_weight=-1.0), "loss.feat_weight=-1.0"), (lambda: RKD(angle_weight=-1.0), "loss.angle_weight"),
    (lambda: RKD(distance_weight=-1.0), "loss.distance_weight"), (lambda: CC(feat_dim=0), "loss.feat_dim=0"),
    (lambda: VID(init_pred_var=0.0), "loss.init_pred_var=0.0"), (lambda: NST(scale=0.0), "loss.scale=0.0"),
    (lambda: OFD(feat_weight=-1.0), "loss.feat_weight=-1.0"), (lambda: ReviewKD(warmup=-1), "loss.warmup=-1"),
    (lambda: ReviewKD(max_mid_channels=0), "loss.max_mid_channels=0"), (lambda: AB(margin=0.0), "loss.margin=0.0"),
    (lambda: KDSVD(k=0), "loss.k=0"), (lambda: KDSVD(feat_weight=-1.0), "loss.feat_weight=-1.0"),
    (lambda: FSP(first_stage_epochs=-1), "loss.first_stage_epochs=-1"), (lambda: FT(k=0.0), "loss.k=0.0"),
    (lambda: AB(first_stage_lr=0.0), "loss.first_stage_lr=0.0"), (lambda: FT(feat_weight=-1.0), "loss.feat_weight"),
])
def test_bad_settings_name_their_key(make, key):
    with pytest.raises(ValueError, match=key):
        make()


def test_learned_parts_need_a_teacher():
    with pytest.raises(ValueError, match="VID's learned parts .* a teacher is required"):
        VID().setup(resnet8(C), None, torch.zeros(2, 3, 8, 8))
