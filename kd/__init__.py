"""kd: Hydra-configured sweeps for knowledge distillation x data augmentation.

OpenMP's wait policy is left as PyTorch ships it (idle threads spin briefly): a job alone runs fastest so,
1.2-1.8x faster than with sleeping threads (benchmarks/README.md). Where kd itself runs several jobs on
one machine it gives each its share of the cores instead (kd/cpu.py); a machine already busy is named
in one warning at job start. Set OMP_WAIT_POLICY=PASSIVE yourself to share cores with other programs.
"""
