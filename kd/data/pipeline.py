"""Batches for training and evaluation: device-resident (fast, default) or a DataLoader (reference).

Both yield (normalized float images, labels, dataset indices); the indices let the
teacher's logits be looked up when they cannot change between epochs (aug=none). Where the
augmentation mixes images (Mixup, CutMix) the labels are soft targets, (N, classes) floats.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch
import torchvision.transforms as T
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from kd.data.order import epoch_order, global_batches, rank_augment_seed

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class Normalize:
    """uint8 -> float in [0, 1] -> per-channel standardization, in the training memory format."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], device: torch.device, channels_last: bool) -> None:
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float().div_(255.0).sub_(self.mean).div_(self.std)
        return x.contiguous(memory_format=self.memory_format)


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of an epoch's augmentation under trainer.augment_scope=epoch: a fixed odd-multiplier mix of the run's
    seed and the epoch, never the stream's own seed nor the teacher's independent view's (kd/training/teacher_views.py)."""
    return (seed * 0xD1B54A32D192ED03 + (epoch + 1) * 0x94D049BB133111EB) % (1 << 63)


class DevicePipeline:
    """The whole split lives on the device as uint8; an epoch is a permutation of indices.

    No workers, no PIL, no host sync: augmentation runs per image on the device, per batch as it is drawn, or
    (`epoch_seed` set: trainer.augment_scope=epoch) over the whole split once per epoch in `begin_epoch`, airbench's
    way: the same per-image draws in a few whole-tensor passes, then each step only slices the augmented split. That
    epoch's draws come from a generator seeded by `epoch_seed` and the epoch alone, so a resumed run or a pack draws
    them as an uninterrupted run alone does. A mixing or picking augmentation (Mixup, CutMix, CutMixPick) still mixes
    and picks per batch, from the pipeline's own generator; only its per-image part (fc) is done per epoch.

    Data-parallel (`world_size` > 1): every rank draws the same seeded order (kd/data/order.py) from `generator`
    and takes its `rank`'s share of each global batch; it augments that share alone, from `augment_generator`,
    re-seeded per epoch and rank. One process draws order and augmentation from the one `generator`, as always.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, aug, normalize: Normalize,
                 batch_size: int, generator: torch.Generator, shuffle: bool, num_classes: int,
                 epoch_seed: Optional[int] = None, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        device = generator.device
        self.images = images.to(device)
        self.labels = labels.to(device)
        self.aug = aug
        self.num_classes = num_classes
        self.normalize = normalize
        self.batch_size = batch_size
        self.generator = generator  # the order's (and with one process the augmentation's): checkpointed
        self.augment_generator = generator if world_size == 1 else torch.Generator(device=device)
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.shuffle = shuffle
        self.scorer = None  # a picking augmentation's: images -> one score per image (kd/data/augment_ladder.py)
        self.epoch_seed = epoch_seed  # None: augment per batch
        self.epoch_generator = torch.Generator(device=device)
        self.augmented: Optional[torch.Tensor] = None  # the split as `begin_epoch` augmented it, until __iter__ takes it

    def __len__(self) -> int:
        return -(-len(self.labels) // self.batch_size)

    def begin_epoch(self, epoch: int) -> None:
        """Per epoch (`fit` calls it before each): with `epoch_seed`, augment the whole split for the epoch's pass;
        a data-parallel rank re-seeds its own augmentation stream."""
        if self.world_size > 1:
            self.augment_generator.manual_seed(rank_augment_seed(self.seed, epoch, self.rank))
        if self.epoch_seed is not None:
            self.augmented = self.augment_all(self.epoch_generator.manual_seed(epoch_seed(self.epoch_seed, epoch)))

    def augment_all(self, generator: torch.Generator) -> torch.Tensor:
        """Every image of the split augmented (per image, as a batch of them would be), from `generator`."""
        return self.aug(self.images, generator)

    def __iter__(self) -> Iterator[Batch]:
        n = len(self.labels)
        augmented, self.augmented = self.augmented, None  # each epoch its own: a pass without begin_epoch fails
        if self.epoch_seed is not None and augmented is None:
            raise RuntimeError("trainer.augment_scope=epoch: call begin_epoch(epoch) before each pass over the batches")
        order = epoch_order(n, self.generator, self.shuffle)
        for idx in global_batches(order, self.batch_size, self.rank, self.world_size):
            if hasattr(self.aug, "pick"):  # CutMixPick: the teacher picks from a pool of mixed batches
                yield self.picked(idx, augmented)
                continue
            images, labels = self.view(idx, self.augment_generator, augmented)
            yield images, labels, idx

    def view(self, idx: torch.Tensor, generator: torch.Generator, augmented: Optional[torch.Tensor] = None,
             aug=None) -> tuple[torch.Tensor, torch.Tensor]:
        """The images `idx` augmented (and mixed, with soft targets) from `generator`, normalized: the
        student's batch from the pipeline's own generator, the teacher's independent view from its own.
        `augmented`: the whole split already augmented for this epoch (augment_scope=epoch), sliced instead.
        `aug`: another augmentation than the pipeline's (a distiller's second view, kd/training/second_views.py)."""
        aug = self.aug if aug is None else aug
        with one_cpu_thread(self.images.device):
            images = self.normalize(aug(self.images[idx], generator) if augmented is None else augmented[idx])
        labels = self.labels[idx]
        if hasattr(aug, "mix"):  # Mixup/CutMix: mixed images, soft targets (kd/data/augment_ladder.py)
            images, labels = aug.mix(images, labels, self.num_classes, generator)
        return images, labels

    def clean(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The images `idx` as stored, normalized, with their hard labels: the teacher's clean view."""
        return self.normalize(self.images[idx]), self.labels[idx]

    def picked(self, idx: torch.Tensor, augmented: Optional[torch.Tensor] = None) -> Batch:
        """A picking augmentation's batch: the pool it mixes from `idx`, cut down to len(idx) by the scores of
        `self.scorer` (the teacher's, set by the loop); the indices are each picked image's own (un-pasted) one."""
        if self.scorer is None:
            raise RuntimeError(f"aug={self.aug.name} picks its batch with the teacher, but no teacher is loaded")
        with one_cpu_thread(self.images.device):
            base = self.normalize(self.aug(self.images[idx], self.augment_generator) if augmented is None
                                  else augmented[idx])
        images, labels, rows = self.aug.pool(base, self.labels[idx], self.num_classes, self.augment_generator)
        keep = self.aug.pick(self.scorer(images), len(idx))
        return images[keep], labels[keep], idx[rows[keep]]


@contextlib.contextmanager
def one_cpu_thread(device: torch.device) -> Iterator[None]:
    """On a CPU, run augmentation's many small ops in one thread; elsewhere do nothing.

    They gain nothing from more threads, and where the cores are shared each multi-threaded
    op can stall waiting for one (fcra on 64 CIFAR images: ~9 ms either way on an idle 2-core
    machine, 23 ms in one thread vs 140-860 ms in two on a busy one).
    """
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class UInt8ImageDataset(Dataset):
    """Per-image PIL transforms over uint8 CHW tensors, as torchvision's CIFAR classes do."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform) -> None:
        self.images = images.permute(0, 2, 3, 1).numpy()
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.transform(Image.fromarray(self.images[i])), self.labels[i], i


class DataLoaderPipeline:
    """The conventional pipeline of the public KD code bases: PIL transforms in DataLoader workers."""

    rank, world_size = 0, 1  # one process only (kd/training/distributed.py refuses it data-parallel)

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, aug, mean, std, batch_size: int,
                 device: torch.device, num_workers: int, seed: int, shuffle: bool, channels_last: bool,
                 num_classes: int) -> None:
        transform = T.Compose(aug.pil_transforms(images.shape[-1]) + [T.ToTensor(), T.Normalize(mean, std)])
        self.loader = DataLoader(
            UInt8ImageDataset(images, labels, transform), batch_size=batch_size, shuffle=shuffle,
            num_workers=num_workers, pin_memory=device.type == "cuda", persistent_workers=num_workers > 0,
            generator=torch.Generator().manual_seed(seed),
        )
        self.generator = self.loader.generator  # its state is checkpointed for resume
        self.device = device
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        # torchvision.transforms.v2's MixUp/CutMix on the collated batch, where the aug mixes
        self.batch_transform = aug.batch_transform(num_classes) if hasattr(aug, "batch_transform") else None

    def __len__(self) -> int:
        return len(self.loader)

    def begin_epoch(self, epoch: int) -> None:
        """Nothing: its workers augment each image as they load it (trainer.augment_scope=epoch is refused)."""

    def __iter__(self) -> Iterator[Batch]:
        for x, y, idx in self.loader:
            if self.batch_transform is not None:
                x, y = self.batch_transform(x, y)
            x = x.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
            yield x, y.to(self.device, non_blocking=True), idx.to(self.device)
