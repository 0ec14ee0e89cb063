"""The one seeded order of a split's images per epoch, cut into global batches and (data-parallel) into each rank's share.

Every pipeline (device-resident, DataLoader, streaming) draws its batches' indices here, so that a run's data order
is the seed's alone whichever pipeline decodes the images, and a rank of a data-parallel run sees its share of the
same global batches a single process sees. World size 1 (the default) is a single process: its shard is the batch.
"""
from __future__ import annotations

from typing import Iterator

import torch


def epoch_order(n: int, generator: torch.Generator, shuffle: bool) -> torch.Tensor:
    """A permutation of range(n) from `generator` (on its device), or range(n) in order."""
    device = generator.device
    return torch.randperm(n, device=device, generator=generator) if shuffle else torch.arange(n, device=device)


def rank_share(batch: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """Rank `rank`'s contiguous share of a global batch: sizes differ by at most one image where it does not divide."""
    return batch.tensor_split(world_size)[rank] if world_size > 1 else batch


def global_batches(order: torch.Tensor, batch_size: int, rank: int = 0, world_size: int = 1
                   ) -> Iterator[torch.Tensor]:
    """The epoch's global batches of `batch_size` indices in `order`, each cut to this rank's share."""
    for start in range(0, len(order), batch_size):
        yield rank_share(order[start:start + batch_size], rank, world_size)


def rank_augment_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of a data-parallel rank's augmentation draws in an epoch: each rank draws for its own share only
    (no rank augments the others' images), from its own stream, so the ranks' draws are not one process's but
    are of the same distribution; keyed by the epoch, so that a resumed rank draws what it would have."""
    return (seed * 0xA24BAED4963EE407 + (epoch + 1) * 0x9FB21C651E98DF25 + (rank + 1) * 0xC2B2AE3D27D4EB4F) % (1 << 63)
