"""Data parallelism of the one loop: which rank this process is, its process group, and what ranks sync per step.

    torchrun --nproc_per_node=2 kd/train.py data=digits trainer.devices=2 hydra.run.dir=runs/ddp

A single process is world size 1 (`SINGLE`): every method here is then a no-op, and `fit` runs as it always has.
The rank and world size come from the environment torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT),
or that kd's SLURM launcher exports from submitit's (submitit.helpers.TorchDistributedEnvironment); the process
group is torch.distributed's (NCCL on CUDA, gloo on CPUs).

Why one all-reduce of the gradients rather than DistributedDataParallel: DDP reduces the gradients of the one
module it wraps, in that module's forward. A kd student's gradient also reaches its distiller's learned parts
(outside the network), and in pack_mode=stacked parameters that are slices of a stack run through vmap. One
all-reduce of every gradient its optimizer steps covers the three alike, with DDP's arithmetic (the mean of the
ranks' gradients); what it gives up is DDP's overlap of the reduction with the backward (benchmarks/README.md).
"""
from __future__ import annotations

import contextlib
import datetime
import logging
import os
import socket
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional, Union

import torch
import torch.distributed as dist
from omegaconf import DictConfig
from torch import nn

from kd.config import PackMode, Pipeline

log = logging.getLogger(__name__)

TIMEOUT_S = 300  # a collective waiting this long for a dead or hung rank fails instead of hanging the job
LAUNCH = ("launch one process per rank: `torchrun --nproc_per_node={devices} --nnodes={nodes} kd/train.py ...`, "
          "or kd's SLURM launcher with hydra.launcher.tasks_per_node={devices} hydra.launcher.nodes={nodes}")


@dataclass(frozen=True)
class World:
    """This process's place among the ranks of one data-parallel job."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def writer(self) -> bool:
        """Rank 0 alone writes checkpoints, results.json, progress lines and the W&B run."""
        return self.rank == 0

    @property
    def backend(self) -> Optional[str]:
        return dist.get_backend() if self.size > 1 and dist.is_initialized() else None

    def device(self, device: torch.device) -> torch.device:
        """A CUDA rank trains on its node's GPU `local_rank` (of those visible); a CPU rank on the CPU."""
        if self.size == 1 or device.type != "cuda":
            return device
        index = self.local_rank % torch.cuda.device_count()
        torch.cuda.set_device(index)
        return torch.device("cuda", index)

    def loss_scale(self, n: int, device: torch.device) -> Union[float, torch.Tensor]:
        """What a rank's mean loss over its `n` images is multiplied by before its backward, so that the mean of
        the ranks' gradients is that of the global batch's mean loss, even where the ranks' shares differ by one
        image (DDP's plain mean would weigh the last, uneven batch's images unequally)."""
        if self.size == 1:
            return 1.0
        total = torch.tensor([float(n)], device=device)
        dist.all_reduce(total)
        return n * self.size / total

    def average_gradients(self, params: Iterable[nn.Parameter]) -> None:
        """Every rank's gradients replaced by their mean over the ranks, in one all-reduce of one flat buffer.
        A parameter without a gradient has none on every rank (the same code ran), and keeps none."""
        if self.size == 1:
            return
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat.div_(self.size)
        for g, part in zip(grads, flat.split([g.numel() for g in grads])):
            g.copy_(part.view_as(g))

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """`t` summed over the ranks (metrics: images, correct, summed losses), in place."""
        if self.size > 1:
            dist.all_reduce(t)
        return t

    def max(self, t: torch.Tensor) -> torch.Tensor:
        """`t`'s largest over the ranks, in place: the step a loss went non-finite on any rank stops every rank."""
        if self.size > 1:
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t

    def broadcast_state(self, modules: Iterable[nn.Module], buffers_only: bool = False) -> None:
        """Rank 0's weights and buffers to every rank, as DDP does at its start and (buffers) at each forward:
        with per-rank BatchNorm the ranks' running statistics drift apart, and rank 0's are the checkpoint's."""
        if self.size == 1:
            return
        for module in modules:
            tensors = module.buffers() if buffers_only else module.state_dict().values()
            for t in tensors:
                if torch.is_tensor(t) and t.is_floating_point():
                    dist.broadcast(t, 0)


SINGLE = World()


def world_from_env(t: DictConfig) -> World:
    """The rank and world size of this process, refused where they disagree with trainer.devices * trainer.nodes."""
    asked = t.devices * t.nodes
    if "WORLD_SIZE" not in os.environ:
        if asked > 1:
            raise ValueError(f"trainer.devices={t.devices} trainer.nodes={t.nodes} asks for {asked} ranks, but this "
                             f"is one process: {LAUNCH.format(devices=t.devices, nodes=t.nodes)}")
        return SINGLE
    world = World(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
    if world.size != asked:
        raise ValueError(f"this job has {world.size} ranks (WORLD_SIZE) but trainer.devices={t.devices} x "
                         f"trainer.nodes={t.nodes} = {asked}: set trainer.devices to the processes per node and "
                         f"trainer.nodes to the nodes, as launched")
    return world


def check_data_parallel(t: DictConfig) -> None:
    """Settings a data-parallel cell cannot run with, refused before any work."""
    for key in ("devices", "nodes"):
        if t[key] < 1:
            raise ValueError(f"trainer.{key}={t[key]} must be >= 1")
    if t.devices * t.nodes == 1:
        return
    if t.pipeline != Pipeline.device:
        raise ValueError("trainer.devices/nodes > 1 shards the device pipeline's seeded order by rank; "
                         "trainer.pipeline=dataloader has no such shards: use trainer.pipeline=device")
    if t.graph_capture:
        raise ValueError("trainer.graph_capture=true cannot capture the gradients' all-reduce of a data-parallel "
                         "step: drop trainer.graph_capture, or train on one device")
    if t.sync_bn and t.pack_mode == PackMode.stacked:
        raise ValueError("trainer.sync_bn=true cannot synchronise the BatchNorm of stacked students (one vmapped "
                         "forward): use trainer.pack_mode=loop")


def check_master_address() -> None:
    """A MASTER_ADDR this host cannot resolve would leave every rank waiting for the rendezvous until its timeout:
    refuse it at once, naming where it came from (torchrun's flag, or SLURM's first node name)."""
    address = os.environ.get("MASTER_ADDR")
    if not address:
        return
    try:
        socket.getaddrinfo(address, None)
    except socket.gaierror as e:
        raise RuntimeError(f"MASTER_ADDR={address} (rank 0's host: torchrun's --master_addr, or on SLURM the job's "
                           f"first node name) does not resolve on {socket.gethostname()} ({e.strerror}): the ranks "
                           f"cannot meet. Make the job's node names resolve on every node (DNS or /etc/hosts), or "
                           f"with torchrun pass --master_addr=<rank 0's address>") from None


@contextlib.contextmanager
def process_group(world: World, device: torch.device, out_dirs: list[str]) -> Iterator[None]:
    """torch.distributed's process group for the job's ranks (none for one process), torn down at its end.

    Every rank must write to the same output dirs (rank 0 writes there, the others resume from there): a
    hydra.run.dir with a timestamp resolved a second apart on two ranks is refused here, naming both."""
    if world.size == 1:
        yield
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    check_master_address()
    dist.init_process_group(backend, rank=world.rank, world_size=world.size,
                            timeout=datetime.timedelta(seconds=TIMEOUT_S),
                            device_id=device if device.type == "cuda" else None)
    try:
        dirs: list = [None] * world.size
        dist.all_gather_object(dirs, out_dirs)
        if any(d != dirs[0] for d in dirs):
            raise ValueError(f"the ranks resolved different output dirs ({dirs[0]} on rank 0, "
                             f"{next(d for d in dirs if d != dirs[0])} on another): set hydra.run.dir (or "
                             f"hydra.sweep.dir) to a fixed path, without ${{now:...}}")
        log.info("data-parallel: rank %d of %d (%s), local rank %d", world.rank, world.size, backend,
                 world.local_rank)
        yield
    finally:
        dist.destroy_process_group()


def quiet_other_ranks(world: World) -> None:
    """Rank 0 alone prints the progress lines; the others say only warnings and errors (each their own)."""
    if not world.writer:
        logging.getLogger("kd").setLevel(logging.WARNING)


def provenance(world: World, per_rank_batch: int, sync_bn: bool) -> dict:
    """What results.json records of how the cell was spread over ranks."""
    return {"world_size": world.size, "backend": world.backend or "none (one process)",
            "per_rank_batch": per_rank_batch, "sync_bn": bool(sync_bn and world.size > 1)}


class _SumOverRanks(torch.autograd.Function):
    """An all-reduce (sum) whose backward all-reduces the gradient: every rank's loss reaches every rank's input.
    torch.distributed.nn.functional.all_reduce does this but is deprecated, its successor has no backward."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        dist.all_reduce(t)
        return t

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class CpuSyncBatchNorm(nn.SyncBatchNorm):
    """trainer.sync_bn on CPU ranks (gloo): torch's SyncBatchNorm computes its statistics with GPU kernels and
    refuses CPU tensors, so here the global batch's mean and variance come from two differentiable all-reduces. The same state as
    BatchNorm2d: a checkpoint loads into either."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized()):
            return super().forward(x)
        channels = x.shape[1]
        dims = [0, *range(2, x.ndim)]
        shape = (1, channels, *[1] * (x.ndim - 2))
        count = x.new_tensor([x.numel() / channels])
        sums = _SumOverRanks.apply(torch.cat([x.sum(dims), count]))
        total = sums[-1]
        mean = sums[:channels] / total
        centred = x - mean.view(shape)
        var = _SumOverRanks.apply(centred.square().sum(dims)) / total  # two passes, as batch_norm's own: no cancellation
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * total / (total - 1), alpha=m)
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        return y * self.weight.view(shape) + self.bias.view(shape) if self.affine else y


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """The model with its BatchNorm layers computing the global batch's statistics (trainer.sync_bn=true)."""
    model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if device.type == "cpu":
        for module in model.modules():
            if type(module) is nn.SyncBatchNorm:
                module.__class__ = CpuSyncBatchNorm  # the same state; only its forward differs
    return model
