"""kd's Hydra plugins: the SLURM/local grid launchers and the search path to launchers/ presets."""
