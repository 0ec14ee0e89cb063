"""The runs room: what a sweep is on disk and how a job runs in it. A job (job) checks its cells (checks,
targets), locks its dir (locking), trains a pack through kd.training and records results.json (results,
provenance); sweep dirs and cell dir names (sweep_dir), a cell's overrides (overrides), which cells pack
together (packs), and SLURM submission (submit)."""
