"""kd: Hydra-configured sweeps for knowledge distillation x data augmentation."""
import os

# Before torch loads OpenMP: idle OpenMP threads sleep instead of spinning. With libgomp's default
# spinning, two jobs sharing the cores take the cores each other waits for: a pack ran 12.6x slower
# next to another job, 1.7x with sleeping threads (benchmarks/README.md). The thread count, hence every
# result, is unchanged; a job alone pays for it: 1.2-1.3x on CIFAR-sized convolutions, 1.8x on digits'
# tiny ones. Setting OMP_WAIT_POLICY or GOMP_SPINCOUNT yourself wins.
if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
