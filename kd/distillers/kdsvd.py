"""Self-supervised knowledge distillation using singular value decomposition (Lee et al., ECCV 2018), the
recipe of mdistiller's KDSVD (its CIFAR config: k = 1, CE + 1 term), which follows the authors' TensorFlow code
(sseung0703/KD_methods_with_TF, nets/SVP.py and Distillation.py's KD_SVD).

Each stage's map (feats[1:]) is one matrix per image, whose top right-singular vectors are kept: the teacher's
first k, the student's first k + 3, each L2-normalised, and the teacher's k singular values L2-normalised. Each
teacher vector picks the student vector most aligned with it (largest |cosine|), sign-flipped to agree; both
sides' vectors are then scaled by the teacher's singular values. Between consecutive stages i-1 and i, each
network's vectors give an RBF correlation exp(-(v_i[c] - v_{i-1}[c'])^2 / 8) per pair of entries and per vector;
term = feat_weight * sum over stage pairs of the squared gap between the student's and the (constant) teacher's
correlations (non-finite entries zeroed), divided by the batch.

Where kd differs, and why:
- The matrix is the paper's and the authors' code's H*W x C (positions x channels), so that the right-singular
  vectors live in channel space. mdistiller views the NCHW map as (C*H) x W without permuting it (a translation
  of the authors' NHWC reshape), which decomposes image columns instead; that is clearly not the method, so kd
  does not follow it there. mdistiller's own pair (resnet32x4 -> resnet8x4) has equal channels stage by stage.
- The method needs the student's and the teacher's vectors in one space (equal channels per stage). Where a
  stage's channels differ, the student's map goes through a connector onto the teacher's channels (1x1 conv
  without bias, He-initialised, then BatchNorm: the authors' TF2 code's aux layers, OFD's connector), learned
  with the student; where they are equal there is none, as in mdistiller.
- The sign of each teacher vector is fixed (its largest-magnitude entry positive): an SVD's sign is arbitrary,
  so the references' term (the teacher's correlations between two stages depend on both signs) depends on
  the SVD library; kd's is a function of the features, the same on a CPU and a GPU.
The gradient flows through the SVD, as in mdistiller (torch's SVD backward; the authors wrote their own).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from kd.distillers.base import Outputs
from kd.distillers.common import FeatureDistiller, probed_stages, stage_maps
from kd.distillers.ofd import connector

RBF_WIDTH = 8.0  # the references' exp(-d^2 / 8)


def finite(x: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


def top_singular(f: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The map's first n singular values (B, n) and right-singular vectors (B, C, n), as an H*W x C matrix per
    image, each L2-normalised (fewer than n where min(H*W, C) < n)."""
    x = f.float().flatten(2).transpose(1, 2)  # (B, H*W, C)
    _, s, vh = torch.linalg.svd(x, full_matrices=False)
    s, v = finite(s[:, :n]), finite(vh[:, :n].transpose(1, 2))
    return F.normalize(s, dim=1), F.normalize(v, dim=1)


def fix_sign(v: torch.Tensor) -> torch.Tensor:
    """Each vector (a column of (B, C, k)) flipped so that its largest-magnitude entry is positive."""
    peak = torch.gather(v, 1, v.abs().argmax(1, keepdim=True))
    return v * torch.where(peak < 0, -1.0, 1.0)


def align(v_s: torch.Tensor, v_t: torch.Tensor) -> torch.Tensor:
    """For each teacher vector, the student's most aligned one (largest |cosine|), with the cosine's sign."""
    cosine = v_s.transpose(1, 2) @ v_t  # (B, k_s, k_t)
    best = cosine.abs() == cosine.abs().amax(1, keepdim=True)
    return v_s @ torch.where(best, torch.sign(cosine), torch.zeros_like(cosine))


def rbf(v: torch.Tensor, v_prev: torch.Tensor) -> torch.Tensor:
    """exp(-(v[c] - v_prev[c'])^2 / 8) for every entry pair and vector: (B, C_i, C_{i-1}, k)."""
    return torch.exp(-(v.unsqueeze(2) - v_prev.unsqueeze(1)).pow(2) / RBF_WIDTH)


class KDSVD(FeatureDistiller):
    """term = feat_weight * sum_i sum (rbf(v_s,i, v_s,i-1) - rbf(v_t,i, v_t,i-1))^2 / B; mdistiller's k = 1, weight 1."""

    reference = "mdistiller's KDSVD weight is 1"

    def __init__(self, k: int = 1, feat_weight: float = 1.0, scale: float = 1.0) -> None:
        super().__init__(feat_weight, scale)
        if not k >= 1:
            raise ValueError(f"loss.k={k} must be >= 1 (the teacher's singular vectors per stage; mdistiller uses 1)")
        self.k = k
        self.connectors = nn.ModuleList()

    def setup(self, student: nn.Module, teacher: Optional[nn.Module], images: torch.Tensor) -> None:
        self.connectors.extend(nn.Identity() if f_s.shape[1] == f_t.shape[1] else connector(f_s.shape[1], f_t.shape[1])
                               for f_s, f_t in probed_stages(student, teacher, images, "KDSVD"))

    def term(self, student: Outputs, teacher: Outputs, targets: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
        if not len(self.connectors):
            raise RuntimeError("KDSVD.setup(student, teacher, images) must run before its term")
        total, prev = 0.0, None
        for (f_s, f_t), conn in zip(stage_maps(student, teacher, "KDSVD"), self.connectors):
            s_t, v_t = top_singular(f_t.detach(), self.k)
            _, v_s = top_singular(conn(f_s.float()), self.k + 3)
            v_t = fix_sign(v_t)
            v_s = align(v_s, v_t)
            v_t, v_s = v_t * s_t.unsqueeze(1), v_s * s_t.unsqueeze(1)
            if prev is not None:
                gap = (rbf(v_s, prev[0]) - rbf(v_t, prev[1])).pow(2)
                total = total + finite(gap).sum()
            prev = (v_s, v_t)
        return {"kd": self.feat_weight * total / student.logits.shape[0]}
