"""The streaming source (kd/data/stream.py) against the conventional DataLoader + PIL loop, on ImageNet-sized JPEGs.

    PYTHONPATH=. python benchmarks/make_imagenet_folder.py /tmp/inet --train 5000 --test 100 --classes 10
    PYTHONPATH=. python benchmarks/bench_stream.py /tmp/inet --workers 2

Four measurements, one table (image_size 224, batch --batch, --workers DataLoader workers for both ways):
1. source alone: images/s of one pass over --images training images, RandomResizedCrop(224) + flip, normalized:
   kd's stream (torchvision.io decode in the workers, flip and normalize in the main process) vs mdistiller's
   ImageNet loader (torchvision ImageFolder, PIL decode, RandomResizedCrop + RandomHorizontalFlip + ToTensor +
   Normalize per image in the workers);
2. training step: images/s of --steps SGD steps of torchvision's ResNet18 fed by each (the CPU is the bottleneck
   here: this says whether the source holds the step back, not what a GPU would do);
3. a pack: CPU seconds spent decoding (the workers' user + system time) for one pass that feeds a pack of 5 students
   (kd's loop: one decoded batch shared by the pack's cells) vs 1 student; 5 separate runs would decode 5 passes;
4. peak host memory (RSS of the main process and its workers) while streaming --memory-batches batches from folders
   of 5,000 and 20,000 training images (the 20,000: the 5,000 files hard-linked four times under other names).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
import torchvision.transforms as T
from torch.utils.data import DataLoader, Subset

from kd.data.augment import FlipCrop
from kd.data.image_files import ImageFiles
from kd.data.image_folder import scan
from kd.data.pipeline import Normalize
from kd.data.stream import StreamPipeline

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SIZE = 224


def kd_stream(root: Path, images: int, batch: int, workers: int) -> StreamPipeline:
    found = scan(root)
    files = ImageFiles(np.array(found.files("train")[:images]), SIZE, 0.875)
    normalize = Normalize(MEAN, STD, torch.device("cpu"), channels_last=True)
    return StreamPipeline(files, found.labels("train")[:images], FlipCrop(recipe="imagenet"), normalize, batch,
                          torch.Generator().manual_seed(0), True, len(found.classes), workers)


def conventional(root: Path, images: int, batch: int, workers: int) -> DataLoader:
    """mdistiller's ImageNet training loader (mdistiller/dataset/imagenet.py): ImageFolder + PIL transforms."""
    transform = T.Compose([T.RandomResizedCrop(SIZE), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(MEAN, STD)])
    dataset = torchvision.datasets.ImageFolder(str(root / "train"), transform)
    return DataLoader(Subset(dataset, range(images)), batch_size=batch, shuffle=True, num_workers=workers,
                      persistent_workers=workers > 0, generator=torch.Generator().manual_seed(0))


def descendants(pid: int) -> list[int]:
    """The live processes below `pid`, from /proc (Linux): each one's parent is field 4 of its stat line."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            pass
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a live process (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def workers_cpu_s() -> float:
    """User + system CPU seconds of this process's live children (the DataLoader workers)."""
    return sum(cpu_s(pid) for pid in descendants(os.getpid()))


def source_alone(batches) -> float:
    """Images/s of one pass, after a first batch that starts the workers."""
    it = iter(batches)
    next(it)
    seen, started = 0, time.perf_counter()
    for x, *_ in it:
        seen += x.shape[0]
    return seen / (time.perf_counter() - started)


def train_steps(batches, students: int, steps: int) -> tuple[float, float]:
    """Images/s of `steps` SGD steps of `students` ResNet18s on each batch, and the workers' CPU seconds."""
    torch.manual_seed(0)
    nets = [torchvision.models.resnet18(num_classes=10).to(memory_format=torch.channels_last) for _ in range(students)]
    optims = [torch.optim.SGD(n.parameters(), lr=0.1, momentum=0.9) for n in nets]
    it = iter(batches)
    next(it)
    cpu_before, seen, started = workers_cpu_s(), 0, time.perf_counter()
    for _, (x, y, *_) in zip(range(steps), it):
        for net, opt in zip(nets, optims):
            loss = torch.nn.functional.cross_entropy(net(x), y.argmax(1) if y.ndim > 1 else y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        seen += x.shape[0]
    return seen / (time.perf_counter() - started), workers_cpu_s() - cpu_before


def peak_rss(root: Path, batches: int, batch: int, workers: int) -> float:
    """Peak RSS (GB, main + workers) of a child process streaming `batches` batches from `root`."""
    code = (f"import itertools, sys; sys.path.insert(0, {str(Path.cwd())!r}); from pathlib import Path; "
            f"from benchmarks.bench_stream import kd_stream; "
            f"s = kd_stream(Path({str(root)!r}), 10**9, {batch}, {workers}); "
            f"[None for _ in itertools.islice(iter(s), {batches})]")
    proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(Path.cwd())})
    peak = 0
    while proc.poll() is None:
        peak = max(peak, sum(rss_bytes(pid) for pid in [proc.pid, *descendants(proc.pid)]))
        time.sleep(0.05)
    assert proc.returncode == 0, f"the streaming child failed ({proc.returncode})"
    return peak / 1e9


def replicated(root: Path, times: int) -> Path:
    """A folder with `times` hard links of each training file of `root` under new names (and its test/)."""
    out = root.with_name(f"{root.name}-x{times}")
    if not out.exists():
        for path in sorted((root / "train").rglob("*.JPEG")):
            for k in range(times):
                target = out / "train" / path.parent.name / f"{path.stem}-{k}{path.suffix}"
                target.parent.mkdir(parents=True, exist_ok=True)
                os.link(path, target)
        for path in sorted((root / "test").rglob("*.JPEG")):
            target = out / "test" / path.parent.name / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(path, target)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("root", type=Path, help="made by benchmarks/make_imagenet_folder.py (5,000 training images)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--images", type=int, default=1024, help="images of the source-alone pass")
    parser.add_argument("--steps", type=int, default=4, help="training steps of each way (batch --batch)")
    parser.add_argument("--memory-batches", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(max(1, (os.cpu_count() or 2) - args.workers) if args.workers else os.cpu_count() or 1)
    rows = []
    kd = kd_stream(args.root, args.images, args.batch, args.workers)
    ref = conventional(args.root, args.images, args.batch, args.workers)
    rows.append(("source alone, images/s", source_alone(kd), source_alone(ref)))
    step_kd, _ = train_steps(kd, 1, args.steps)
    step_ref, _ = train_steps(ref, 1, args.steps)
    rows.append(("ResNet18 SGD step + source, images/s", step_kd, step_ref))
    _, one = train_steps(kd_stream(args.root, args.images, args.batch, args.workers), 1, args.steps)
    _, five = train_steps(kd_stream(args.root, args.images, args.batch, args.workers), 5, args.steps)
    rows.append((f"decode CPU-s for {args.steps} steps: pack of 5 / 1 student", five, one))
    small = peak_rss(args.root, args.memory_batches, args.batch, args.workers)
    large = peak_rss(replicated(args.root, 4), args.memory_batches, args.batch, args.workers)
    rows.append((f"peak RSS GB streaming {args.memory_batches} batches: 20,000 / 5,000 images", large, small))
    print(f"\n| {args.workers} workers, batch {args.batch}, {SIZE} px | kd stream | DataLoader + PIL |")
    print("|---|---|---|")
    for name, a, b in rows:
        print(f"| {name} | {a:.2f} | {b:.2f} |")


if __name__ == "__main__":
    main()
