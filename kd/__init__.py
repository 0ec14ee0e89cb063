"""kd: Hydra-configured sweeps for knowledge distillation x data augmentation."""
import os

# Before torch loads OpenMP: idle OpenMP threads sleep instead of spinning. Spinning threads of two jobs
# sharing the cores take the cores each other waits for (a step measured 30x slower next to another job;
# benchmarks/README.md). The thread count, hence every result, is unchanged. OMP_WAIT_POLICY=ACTIVE spins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
