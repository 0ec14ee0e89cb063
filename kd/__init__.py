"""kd: Hydra-configured sweeps for knowledge distillation x data augmentation."""
