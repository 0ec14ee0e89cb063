"""The training room: a pack's epochs and steps (engine), its students (students, stacking), the teacher's
own training and loading (teacher, published_teachers) and its views (teacher_views), the diagnostics, the
device, CPU threads, compilation (capture) and progress lines. It knows nothing of sweeps, trackers or reports:
kd/runs/job.py hands it a pack of cells and a tracker's log function."""
