"""Why augmentation helps a student, or not: the literature's diagnostics, per cell and epoch.

All of them accumulate on the device and are read once per epoch, like the loop's own sums (no per-step
host sync). They exist for cells that distil (alpha > 0): an alpha=0 cell never runs the teacher.

The teacher on the views it saw in training (kd/training/teacher_views.py), from its softmax at T=1:
- `diag/teacher_top1`: its top-1 (%) against the view's labels (soft targets: their larger share);
- `diag/teacher_p_true`: its mean probability of the view's target (soft targets: the expected one, sum p * y);
- `diag/t_stddev`: Wang et al.'s "stddev of the teacher's mean probability", T. stddev (NeurIPS 2022, "What
  makes a 'good' data augmentation in knowledge distillation", sec. 3; their helper/loops.py, `check_ce_var`):
  the teacher's mean probability vector over each chunk of training images, its (unbiased) standard
  deviation across the epoch's chunks per class, averaged over the classes. A chunk here is one full training
  batch (theirs: 5 batches of 64), the epoch's last, smaller batch left out. A smaller chunk gives a larger
  stddev: compare it between cells of one batch size (a pack always shares it).
The student against the teacher on the test split (Stanton et al., NeurIPS 2021, "Does knowledge
distillation really work?"): `diag/test_agreement`, the % of test images whose top-1 class is the
teacher's, and `diag/test_kl`, KL(teacher || student) of their softmaxes at T=1, nats per image.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

TEACHER_KEYS = ("diag/teacher_top1", "diag/teacher_p_true", "diag/t_stddev")
TEST_KEYS = ("diag/test_agreement", "diag/test_kl")


class TeacherViewStats:
    """One epoch of the teacher's outputs on one kind of view, summed on the device."""

    def __init__(self, device: torch.device, batch_size: int) -> None:
        self.sums = torch.zeros(3, device=device, dtype=torch.float64)  # top-1 hits, p_true, images
        self.chunk_means: list[torch.Tensor] = []  # the mean probability vector of each full batch
        self.batch_size = batch_size

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        p = F.softmax(logits.detach().float(), dim=1)
        hard = labels if labels.ndim == 1 else labels.argmax(1)
        p_true = p.gather(1, hard[:, None])[:, 0] if labels.ndim == 1 else (p * labels).sum(1)
        n = labels.shape[0]  # known on the host: no sync
        self.sums += torch.stack([(p.argmax(1) == hard).sum().double(), p_true.double().sum(),
                                  p.new_full((), float(n), dtype=torch.float64)])  # a fill, not a host copy
        if n == self.batch_size:
            self.chunk_means.append(p.double().mean(0))

    def read(self) -> dict[str, float]:
        """The epoch's numbers: one host read."""
        stddev = (torch.stack(self.chunk_means).std(0).mean()[None] if len(self.chunk_means) > 1
                  else torch.full((1,), math.nan, device=self.sums.device, dtype=torch.float64))
        hits, p_true, n, t_stddev = torch.cat([self.sums, stddev]).tolist()
        return {"diag/teacher_top1": 100.0 * hits / n, "diag/teacher_p_true": p_true / n, "diag/t_stddev": t_stddev}


def fidelity_sums(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """(top-1 agreements, summed KL(teacher || student)) of one batch, on the device."""
    log_s = F.log_softmax(student_logits.float(), dim=1)
    log_t = F.log_softmax(teacher_logits.float(), dim=1)
    kl = (log_t.exp() * (log_t - log_s)).sum(1)
    return torch.stack([(student_logits.argmax(1) == teacher_logits.argmax(1)).sum().float(), kl.sum()])
