"""Experiment trackers, one run per job: `logger=none` (null), `logger=wandb` (wandb_tracker), and
`kd-sync` (sync), which uploads a sweep's offline W&B runs."""
