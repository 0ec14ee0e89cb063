"""Contrastive representation distillation (Tian et al., ICLR 2020), RepDistiller's CIFAR recipe (crd/, the
same in mdistiller's CRD.py).

Each network's pooled features are embedded linearly into `feat_dim` (128) dimensions and L2-normalised, both
embeddings learned with the student. Two memory banks hold an embedding per training image, the student's and
the teacher's, started uniform in +-1/sqrt(feat_dim/3). For each image of the batch, its own bank entry (the
positive) and `nce_k` (16384) others (the negatives, drawn uniformly among the training images of other classes:
RepDistiller's "exact" mode) are scored against the anchor, exp(<bank entry, anchor> / nce_t), divided by a
constant Z set once, on the first batch, to the mean score times the training set's size. With the student
anchored against the teacher's bank and the teacher against the student's, each side's NCE loss is

    -(1/B) sum_b [log(P_b0 / (P_b0 + K/n + eps)) + sum_k log((K/n) / (P_bk + K/n + eps))],   eps = 1e-7,

and term = feat_weight * (student side + teacher side). After the scores, each image's bank entries move to
normalize(nce_m * entry + (1 - nce_m) * its new embedding), nce_m = 0.5. The banks, Z and the sampler's
generator are buffers and extra state of the distiller: the cell's checkpoint holds them, so a resumed run draws
and learns as the uninterrupted one.

Data-parallel (torch.distributed initialised, more than one rank), the banks, Z and the negatives stay those of
one process training on the global batch: every rank draws the negatives of the whole global batch (from the same
generator, so the ranks' draws agree) and scores its own share's; Z is the global batch's mean score; and every
rank moves the bank entries of every rank's images, gathered (`gather_rows`).

Where kd differs, and why: RepDistiller draws each image's negatives without replacement from its other-class
images in a DataLoader worker, and with replacement for a class whose other-class images are fewer than
nce_k; kd draws them on the device from the distiller's own generator (so a resume repeats them), without
replacement unless some class has fewer than nce_k other-class images, in which case every class draws with
replacement (only on small data sets; CIFAR-100 has 49500 other-class images per class). It scores each anchor
against the whole bank and takes the drawn entries (the same numbers, without the references' (B, 1 + K,
feat_dim) gather), and normalises with F.normalize's eps-guarded division where the references divide by the norm.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from kd.distillers.base import Outputs
from kd.distillers.common import FeatureDistiller, flat, probe_features, require_teacher

NCE_EPS = 1e-7  # the references' eps in the NCE loss


def nce_loss(p: torch.Tensor, n_data: int) -> torch.Tensor:
    """The NCE loss of (B, 1 + K) normalised scores, the positive first, against the uniform noise 1/n_data."""
    k = p.shape[1] - 1
    noise = k / n_data
    log_pos = torch.log(p[:, 0] / (p[:, 0] + noise + NCE_EPS))
    log_neg = torch.log(noise / (p[:, 1:] + noise + NCE_EPS))
    return -(log_pos.sum() + log_neg.sum()) / p.shape[0]


def scores(bank: torch.Tensor, idx: torch.Tensor, anchor: torch.Tensor, temperature: float) -> torch.Tensor:
    """exp(<bank[idx[b, j]], anchor[b]> / T): (B, 1 + K), the bank entries taken as constants. Every anchor is
    scored against the whole bank, then the drawn entries taken: (B, n) numbers where gathering the entries
    first would hold (B, 1 + K, feat_dim) (537 MB at RepDistiller's CIFAR-100 recipe)."""
    return torch.exp(torch.gather(anchor @ bank.detach().T, 1, idx) / temperature)


def gather_rows(t: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Every rank's rows of `t`, rank by rank (shares may differ by one row), and where this rank's begin; `t`
    itself and 0 in one process. torch's all_gather takes equal sizes: each share is padded to the largest."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return t, 0
    sizes = [torch.zeros(1, dtype=torch.long, device=t.device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([len(t)], device=t.device))
    sizes = [int(n) for n in sizes]
    padded = torch.cat([t, t.new_zeros(max(sizes) - len(t), *t.shape[1:])])
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([part[:n] for part, n in zip(parts, sizes)]), sum(sizes[:dist.get_rank()])


def global_mean(t: torch.Tensor) -> torch.Tensor:
    """The mean of `t`'s elements over every rank's `t` (the mean itself in one process)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return t.mean()
    sums = torch.stack([t.sum(), t.new_tensor(float(t.numel()))])
    dist.all_reduce(sums)
    return sums[0] / sums[1]


class CRD(FeatureDistiller):
    """term = feat_weight * (NCE of the student against the teacher's bank + NCE of the teacher against the
    student's bank); RepDistiller's feat_dim 128, nce_k 16384, nce_t 0.07, nce_m 0.5, weight 0.8."""

    needs_indices = True
    reference = "RepDistiller's and mdistiller's CRD weight is 0.8"

    def __init__(self, feat_dim: int = 128, nce_k: int = 16384, nce_t: float = 0.07, nce_m: float = 0.5,
                 feat_weight: float = 0.8, scale: float = 1.0) -> None:
        super().__init__(feat_weight, scale)
        if not feat_dim >= 1:
            raise ValueError(f"loss.feat_dim={feat_dim} must be >= 1 (the embedding's size; RepDistiller uses 128)")
        if not nce_k >= 1:
            raise ValueError(f"loss.nce_k={nce_k} must be >= 1 (negatives per image; RepDistiller uses 16384)")
        if not nce_t > 0.0:
            raise ValueError(f"loss.nce_t={nce_t} must be > 0 (RepDistiller uses 0.07)")
        if not 0.0 <= nce_m < 1.0:
            raise ValueError(f"loss.nce_m={nce_m} must be in [0, 1) (the banks' momentum; RepDistiller uses 0.5)")
        self.feat_dim, self.nce_k, self.nce_t, self.nce_m = feat_dim, nce_k, nce_t, nce_m
        self.embed_s: Optional[nn.Module] = None
        self.embed_t: Optional[nn.Module] = None
        self.generator: Optional[torch.Generator] = None
        self.replace = False

    def setup(self, student: nn.Module, teacher: Optional[nn.Module], images: torch.Tensor,
              labels: Optional[torch.Tensor] = None) -> None:
        teacher = require_teacher(teacher, "CRD")
        if labels is None:
            raise ValueError("CRD keeps a bank entry per training image: setup needs the training set's labels")
        p_s, p_t = probe_features(student, images).pooled, probe_features(teacher, images).pooled
        self.embed_s, self.embed_t = nn.Linear(p_s.shape[1], self.feat_dim), nn.Linear(p_t.shape[1], self.feat_dim)
        n, device = len(labels), images.device
        bound = 1.0 / math.sqrt(self.feat_dim / 3)
        for name in ("bank_s", "bank_t"):
            self.register_buffer(name, (torch.rand(n, self.feat_dim) * 2 - 1).mul_(bound).to(device))
        self.register_buffer("z", torch.full((2,), -1.0, device=device))  # the student's and teacher's Z; -1: unset
        # The training images sorted by class: an image's other-class images are all but its class's run.
        # Worked out once on the CPU (no device kernel to question under trainer.deterministic), kept on the device.
        labels = labels.cpu()
        counts = torch.bincount(labels)
        for name, value in (("labels", labels), ("by_class", torch.argsort(labels, stable=True)),
                            ("counts", counts), ("starts", torch.cumsum(counts, 0) - counts)):
            self.register_buffer(name, value.to(device), persistent=False)
        self.replace = bool(self.nce_k > n - int(counts.max()))  # some class has fewer than nce_k negatives
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(int(torch.randint(0, 2**62, ())))  # from the cell's seeded global RNG

    def get_extra_state(self) -> dict:
        return {"generator": self.generator.get_state()} if self.generator is not None else {}

    def set_extra_state(self, state: dict) -> None:
        if "generator" in state:
            self.generator.set_state(state["generator"])

    def draw(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, 1 + nce_k) bank rows: each image's own, then nce_k images of other classes."""
        y = self.labels[indices]
        n, b = len(self.labels), len(indices)
        if self.replace:
            others = (n - self.counts[y]).unsqueeze(1)
            r = (torch.rand(b, self.nce_k, generator=self.generator, device=y.device) * others).long()
            r = torch.minimum(r, others - 1)  # rand < 1, but its float product may round up to `others`
            r = r + (r >= self.starts[y].unsqueeze(1)) * self.counts[y].unsqueeze(1)  # skip the own class's run
            negatives = self.by_class[r]
        else:  # the nce_k smallest of uniform keys, own-class images keyed past every other: a uniform subset
            keys = torch.rand(b, n, generator=self.generator, device=y.device)
            keys = keys.masked_fill(self.labels.unsqueeze(0) == y.unsqueeze(1), 2.0)
            negatives = keys.topk(self.nce_k, dim=1, largest=False, sorted=False).indices
        return torch.cat([indices.unsqueeze(1), negatives], 1)

    def term(self, student: Outputs, teacher: Outputs, targets: torch.Tensor, epoch: int,
             indices: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.embed_s is None:
            raise RuntimeError("CRD.setup(student, teacher, images, labels) must run before its term")
        e_s = F.normalize(self.embed_s(flat(student.features.pooled)), dim=1)
        e_t = F.normalize(self.embed_t(flat(teacher.features.pooled)), dim=1)
        everyone, first = gather_rows(indices)  # the global batch's indices, and where this rank's share begins
        idx = self.draw(everyone)[first:first + len(indices)]
        out_s, out_t = scores(self.bank_t, idx, e_s, self.nce_t), scores(self.bank_s, idx, e_t, self.nce_t)
        n = len(self.labels)
        # The new state replaces the buffers (out of place: the scores' backward still reads the old banks).
        with torch.no_grad():  # Z is fixed by the first batch; set on the device, no host read per step
            z = torch.stack([global_mean(out_s), global_mean(out_t)]) * n
            self.z = torch.where(self.z < 0, z, self.z)
            embedded = gather_rows(torch.cat([e_s, e_t], 1).detach())[0]
            for name, e in (("bank_s", embedded[:, :self.feat_dim]), ("bank_t", embedded[:, self.feat_dim:])):
                bank = getattr(self, name)
                moved = bank[everyone] * self.nce_m + e * (1.0 - self.nce_m)
                setattr(self, name, bank.index_copy(0, everyone, F.normalize(moved, dim=1)))
        loss_s, loss_t = nce_loss(out_s / self.z[0], n), nce_loss(out_t / self.z[1], n)
        return {"kd": self.feat_weight * (loss_s + loss_t), "crd_student": loss_s.detach(),
                "crd_teacher": loss_t.detach()}
