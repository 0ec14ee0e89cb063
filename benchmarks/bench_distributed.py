"""What data parallelism costs a step, measured on this CPU (gloo, 2 ranks), and projected on paper for GPUs.

    python benchmarks/bench_distributed.py            # ~3 min on 2 idle CPU cores
    python benchmarks/bench_distributed.py --quick    # a smoke run of seconds

Measured, one table:
- the gradients' all-reduce (kd/training/distributed.py: one flat buffer, gloo) against the training step it
  ends, for kd's resnet8 (digits) and resnet8x4 (CIFAR) students, 2 ranks of one process each on this machine,
  each rank's share of the global batch;
- the data path's ATen ops per step of one rank of 2 against one process (kd/training/sync_guard.py's OpRecord
  over DevicePipeline's batches, aug=fc): a rank dispatches the same ops on half the images, no extra ones.
Projected, not measured (printed under its own heading, every number marked as such): ResNet34 -> ResNet18 at
global batch 512 on 8 H100s over NVLink, and on 2 nodes of 8 over InfiniBand.
"""
from __future__ import annotations

import argparse
import itertools
import os
import socket
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from kd.data.augment import FlipCrop
from kd.data.pipeline import DevicePipeline, Normalize
from kd.models.resnet import resnet8, resnet8x4
from kd.training.distributed import World
from kd.training.sync_guard import OpRecord

STUDENTS = {"resnet8 (digits 16x16)": (resnet8, 16, 10), "resnet8x4 (CIFAR 32x32)": (resnet8x4, 32, 100)}
GLOBAL_BATCH = 64


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def timed_steps(rank: int, world_size: int, port: int, steps: int, queue) -> None:
    """One rank: `steps` SGD steps on its share of a global batch, timing the all-reduce apart from the step."""
    torch.set_num_threads(1)  # two ranks on two cores
    if world_size > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    world = World(rank, world_size)
    rows = {}
    for name, (build, size, classes) in STUDENTS.items():
        torch.manual_seed(0)
        model = build(num_classes=classes)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        n = GLOBAL_BATCH // world_size
        x, y = torch.randn(n, 3, size, size), torch.randint(0, classes, (n,))
        step_s, reduce_s = [], []
        for i in range(steps + 2):  # 2 warm-up steps
            started = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), y).backward()
            reduced = time.perf_counter()
            world.average_gradients(model.parameters())
            done = time.perf_counter()
            optimizer.step()
            ended = time.perf_counter()
            if i >= 2:
                step_s.append(ended - started)
                reduce_s.append(done - reduced)
        params = sum(p.numel() for p in model.parameters())
        rows[name] = (params, sorted(step_s)[len(step_s) // 2], sorted(reduce_s)[len(reduce_s) // 2])
    queue.put((rank, rows))
    if world_size > 1:
        dist.destroy_process_group()


def measure(world_size: int, steps: int) -> dict:
    context = mp.get_context("spawn")
    queue, port = context.Queue(), free_port()
    procs = [context.Process(target=timed_steps, args=(r, world_size, port, steps, queue)) for r in range(world_size)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=600) for _ in procs)
    for p in procs:
        p.join()
    return results[0]


def data_path_ops(world_size: int, steps: int) -> tuple[float, float]:
    """Ops and images per step of rank 0's batches (aug=fc, global batch 64, CIFAR-shaped uint8 images)."""
    torch.manual_seed(0)
    images, labels = torch.randint(0, 256, (1024, 3, 32, 32), dtype=torch.uint8), torch.randint(0, 100, (1024,))
    normalize = Normalize((0.5,) * 3, (0.25,) * 3, torch.device("cpu"), channels_last=True)
    pipeline = DevicePipeline(images, labels, FlipCrop(), normalize, GLOBAL_BATCH, torch.Generator().manual_seed(0),
                              True, 100, seed=0, rank=0, world_size=world_size)
    pipeline.begin_epoch(0)
    record, sizes = OpRecord(), []
    with record.watch(itertools.islice(pipeline, steps + 1), skip=1) as batches:
        sizes = [len(y) for _, y, _ in batches][1:]  # the warm-up batch's images are not counted, as its ops
    return record.total / record.steps, sum(sizes) / len(sizes)


# On paper. ResNet18 has 11.69M parameters (torchvision): its fp32 gradient is 46.8 MB per step. A ring all-reduce
# moves 2 (N - 1) / N of it through each GPU's link. Bus bandwidths are what NCCL's all_reduce_perf reaches, not the
# links' peak: ~360 GB/s per H100 over NVLink 4 within a node (of 450 GB/s one way), and a node's 8 x 400 Gb/s
# InfiniBand NDR (~45 GB/s per GPU after protocol) between nodes. Step time: the 8-GPU H100 ResNet-50 training rates
# published with NVIDIA's DeepLearningExamples (~3,000 images/s per GPU, bf16, channels-last, DALI) scaled by MACs to
# ResNet18 (1.8 vs 4.1 GMACs) plus the ResNet34 teacher's forward (3.6 GMACs, a third of a training step's cost).
PAPER = {
    "grad_mb": 11.69e6 * 4 / 1e6,
    "per_gpu_images_s_student_alone": 3000 * 4.1 / 1.8,
    "teacher_forward_share": 3.6 / (3 * 1.8),  # a forward is ~1/3 of forward + backward
    "nvlink_bus_gb_s": 360.0,
    "ib_bus_gb_s": 45.0,
}


def projection() -> list[tuple[str, str, str, str, str]]:
    rows = []
    per_gpu = PAPER["per_gpu_images_s_student_alone"] / (1 + PAPER["teacher_forward_share"])
    for setup, gpus, bus in (("8 H100, NVLink (1 node)", 8, PAPER["nvlink_bus_gb_s"]),
                             ("16 H100, InfiniBand (2 nodes)", 16, PAPER["ib_bus_gb_s"])):
        per_rank = 512 // gpus
        compute_ms = 1000 * per_rank / per_gpu
        moved_mb = 2 * (gpus - 1) / gpus * PAPER["grad_mb"]
        reduce_ms = moved_mb / 1e3 / bus * 1000
        # kd's one all-reduce waits for the whole backward: no overlap (DDP's buckets would hide most of it)
        efficiency = compute_ms / (compute_ms + reduce_ms)
        rows.append((setup, f"{per_rank}", f"{compute_ms:.1f} ms", f"{moved_mb:.1f} MB in {reduce_ms:.2f} ms",
                     f"{100 * efficiency:.0f}%"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few steps: a smoke run")
    args = parser.parse_args()
    steps = 3 if args.quick else 10
    one, two = measure(1, steps), measure(2, steps)
    print(f"Measured on this CPU ({os.cpu_count()} cores; gloo; global batch {GLOBAL_BATCH}; median of {steps} steps):\n")
    print("| student | params | 1 process: step | 2 ranks: step (share 32) | of it the all-reduce | all-reduce / step |")
    print("|---|---|---|---|---|---|")
    for name, (params, step, _) in one.items():
        _, step2, reduce2 = two[name]
        print(f"| {name} | {params / 1e6:.2f}M | {1000 * step:.1f} ms | {1000 * step2:.1f} ms | "
              f"{1000 * reduce2:.1f} ms | {100 * reduce2 / step2:.0f}% |")
    ops1, images1 = data_path_ops(1, steps)
    ops2, images2 = data_path_ops(2, steps)
    print("\n| data path (aug=fc) | ATen ops per step | images per step |")
    print("|---|---|---|")
    print(f"| 1 process | {ops1:.0f} | {images1:.0f} |")
    print(f"| rank 0 of 2 | {ops2:.0f} | {images2:.0f} |")
    print("\nProjected on paper, NOT measured (ResNet34 -> ResNet18, global batch 512, fp32 gradients, ring "
          "all-reduce at NCCL's bus bandwidth, no overlap of the all-reduce with the backward):\n")
    print("| setup | per-GPU batch | step compute (unmeasured) | all-reduce (unmeasured) | scaling efficiency "
          "(unmeasured) |")
    print("|---|---|---|---|---|")
    for row in projection():
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
