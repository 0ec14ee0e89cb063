"""The streaming source: batches decoded from their files in DataLoader workers, never the whole split at once.

The third pipeline behind the one batch interface (kd/data/pipeline.py): it yields (normalized float images,
labels, dataset indices) on the device, has `begin_epoch`, and its `generator` is what a checkpoint saves. Its
order is kd/data/order.py's: the epoch's permutation and global batches (this rank's share of each) are drawn in
the main process from `generator`, exactly as the device pipeline draws them; a batch sampler hands each batch's
indices to a worker, which reads and decodes those files (kd/data/image_files.py) and crops each image to
`image_size`:
- the clean view, Resize(image_size / crop_pct) + CenterCrop (aug=none, evaluation, an aug of the cifar recipe);
- RandomResizedCrop(image_size) for an aug of the imagenet recipe, its boxes drawn from a seed the main process
  drew for that batch from `generator`, so a worker's draws are the seed's alone, whatever the worker count.
The rest of the augmentation (the cifar recipe's padded crop, the flip, RandAugment, Mixup/CutMix) then runs on
the device from `generator`, as it does on an in-memory batch. Host memory is bounded by the workers' prefetch
(num_workers x prefetch_factor batches), not by the dataset's size.

Resume is at the epoch: a checkpoint is written at an epoch's end with the generator's state, and a run killed
mid-epoch repeats that epoch from its start with the same draws. Each teacher view other than `same` needs the
split's images at any index on demand, which a stream does not hold: it is refused (`check_streamable`).
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.io import ImageReadMode, decode_jpeg, read_file

from kd.config import AugmentScope, Pipeline, TeacherView
from kd.data.image_files import ImageFiles, read_image
from kd.data.order import epoch_order, global_batches
from kd.data.pipeline import Batch, Normalize, one_cpu_thread
from kd.data.resized_crop import center_view, random_resized_crops

PREFETCH = 2  # batches each worker decodes ahead: torch's default, and the bound on the stream's host memory
Item = tuple[list[int], int]  # a batch's dataset indices, and the seed of its random crops


class StreamError(ValueError):
    """A setting the streaming source cannot serve; the message names it and what to use instead."""


def crop_batch(images: list[torch.Tensor], files: ImageFiles, random_crop: bool, seed: int) -> torch.Tensor:
    """Each decoded image cropped to image_size: RandomResizedCrop with boxes from `seed`, else the clean view.
    The boxes come from a CPU generator wherever the images are, so a GPU decode crops as a worker does."""
    if random_crop:
        return random_resized_crops(images, files.image_size, torch.Generator().manual_seed(seed))
    return torch.stack([center_view(image, files.image_size, files.crop_pct) for image in images])


class BatchFiles(Dataset):
    """Item (indices, seed): that batch's images, decoded and cropped (in a worker), and its indices as a tensor
    (made in the worker and pinned by the DataLoader: the main process only copies it to the device, no host
    sync); with `encoded`, the files' bytes instead of images, for the main process to decode on the GPU."""

    def __init__(self, files: ImageFiles, random_crop: bool, encoded: bool) -> None:
        self.files = files
        self.random_crop = random_crop
        self.encoded = encoded

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, item: Item):
        indices, seed = item
        if self.encoded:
            return [read_file(str(self.files.paths[i])) for i in indices], torch.tensor(indices)
        torch.set_num_threads(1)  # one core per worker: the workers are the parallelism
        images = [read_image(str(self.files.paths[i])) for i in indices]
        return crop_batch(images, self.files, self.random_crop, seed), torch.tensor(indices)


class EpochItems:
    """The batch sampler: the epoch's (indices, seed) items, which the pipeline sets before each pass."""

    def __init__(self) -> None:
        self.items: list[Item] = []

    def __iter__(self) -> Iterator[Item]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


class StreamPipeline:
    """Batches of `files` decoded per batch in `num_workers` worker processes (0: in the main process)."""

    def __init__(self, files: ImageFiles, labels: torch.Tensor, aug, normalize: Normalize, batch_size: int,
                 generator: torch.Generator, shuffle: bool, num_classes: int, num_workers: int,
                 rank: int = 0, world_size: int = 1) -> None:
        self.device = generator.device
        self.files = files
        self.labels = labels.to(self.device)
        self.aug = aug
        self.normalize = normalize
        self.batch_size = batch_size
        self.generator = generator
        self.shuffle = shuffle
        self.num_classes = num_classes
        self.rank, self.world_size = rank, world_size
        self.random_crop = getattr(aug, "recipe", "cifar") == "imagenet"
        self.on_device = aug.after_crop if self.random_crop else aug  # what follows the workers' crop
        self.gpu_decode = files.gpu_decode and self.device.type == "cuda"
        self.sampler = EpochItems()
        self.loader = DataLoader(
            BatchFiles(files, self.random_crop, encoded=self.gpu_decode), sampler=self.sampler, batch_size=None,
            num_workers=num_workers, pin_memory=self.device.type == "cuda" and not self.gpu_decode,
            persistent_workers=num_workers > 0 and shuffle,  # evaluation's workers go between passes
            prefetch_factor=PREFETCH if num_workers > 0 else None,
        )

    def __len__(self) -> int:
        return -(-len(self.files) // self.batch_size)

    def begin_epoch(self, epoch: int) -> None:
        """Nothing: each batch is augmented as it is drawn (trainer.augment_scope=epoch is refused)."""

    def epoch_items(self) -> list[Item]:
        """The epoch's batches (this rank's share) and each one's crop seed, all drawn now from `generator`."""
        order = epoch_order(len(self.files), self.generator, self.shuffle).cpu()
        batches = list(global_batches(order, self.batch_size, self.rank, self.world_size))
        seeds = (torch.randint(1 << 62, (len(batches),), device=self.device, generator=self.generator).tolist()
                 if self.random_crop else [0] * len(batches))
        return [(b.tolist(), seed) for b, seed in zip(batches, seeds)]

    def __iter__(self) -> Iterator[Batch]:
        self.sampler.items = self.epoch_items()
        for (_, seed), (decoded, idx) in zip(self.sampler.items, self.loader):
            if self.gpu_decode:  # nvJPEG on the device; the same boxes as the workers' (a CPU generator)
                decoded = crop_batch(decode_jpeg(decoded, mode=ImageReadMode.RGB, device=self.device), self.files,
                                     self.random_crop, seed)
            idx = idx.to(self.device, non_blocking=True)
            with one_cpu_thread(self.device):
                images = self.normalize(self.on_device(decoded.to(self.device, non_blocking=True), self.generator))
            labels = self.labels[idx]
            if hasattr(self.aug, "mix"):  # Mixup/CutMix: mixed images, soft targets, as in memory
                images, labels = self.aug.mix(images, labels, self.num_classes, self.generator)
            yield images, labels, idx


def check_streamable(trainer, aug, data_name: str) -> None:
    """Refuse, before any training, what a stream cannot serve, naming the setting and what to use instead."""
    why = f"{data_name} streams its images from files (data.stream)"
    if Pipeline(trainer.pipeline) != Pipeline.device:
        raise StreamError(f"{why}, through its own DataLoader workers; trainer.pipeline=dataloader is the in-memory "
                          f"reference. Drop trainer.pipeline=dataloader (or set data.stream=false if it fits).")
    if AugmentScope(trainer.augment_scope) == AugmentScope.epoch:
        raise StreamError(f"{why}: trainer.augment_scope=epoch augments the whole split held on the device once per "
                          f"epoch, which a stream never holds. Use trainer.augment_scope=batch (or "
                          f"data.stream=false if the split fits in memory).")
    if TeacherView(trainer.teacher_view) != TeacherView.same:
        raise StreamError(f"{why}: trainer.teacher_view={TeacherView(trainer.teacher_view).value} reads any image "
                          f"of the split on demand, which a stream does not hold. Use trainer.teacher_view=same "
                          f"(or data.stream=false if the split fits in memory).")
    if hasattr(aug, "pick"):
        raise StreamError(f"{why}: aug={aug.name} picks its batch from a pool the teacher scores inside the "
                          f"in-memory pipeline. Use another aug (or data.stream=false if the split fits in memory).")
