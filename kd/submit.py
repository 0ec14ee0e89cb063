"""Train (or verify) the teacher first, then submit the grid; both through the same Hydra launcher.

    python -m kd.submit alpha=0,0.25,0.5,0.75,1.0 aug=none,fc,fcra hydra/launcher=slurm
    python -m kd.submit --dry-run ...      # print the two commands, run nothing

Run as plain `kd/train.py -m`, every grid cell would find no cached teacher: one would train it
under the lock while the others hold their GPUs and wait. Here step 1 runs `stage=teacher` with
every override that can change the teacher (data, teacher, trainer, seed, ...: one job per
distinct teacher, e.g. per seed); step 2 submits the grid only once step 1 has succeeded, and
every cell loads the cached teacher. Both steps share one sweep dir, the teacher jobs under
teacher/; rerunning the same command with that hydra.sweep.dir verifies the teacher and skips
completed cells.
"""
from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser

TRAIN = Path(__file__).resolve().parent / "train.py"
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
STUDENT_ONLY = {"alpha", "aug", "model", "loss", "optim", "stage"}  # top-level keys that never change the teacher
VALUE_FLAGS = {"-cd", "--config-dir", "-cp", "--config-path", "-cn", "--config-name"}  # Hydra flags with a value


def split_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """(Hydra flags such as `--config-dir DIR`, passed to both steps as they are; the overrides)."""
    flags, overrides = [], []
    args = iter(argv)
    for arg in args:
        if arg.startswith("-"):
            flags.append(arg)
            if arg in VALUE_FLAGS:
                flags.append(next(args))
        else:
            overrides.append(arg)
    return flags, overrides


def top_key(override: str) -> str:
    """`aug=fc` -> aug, `+optim.optimizer.lr=0.1` -> optim, `hydra/launcher=slurm` -> hydra."""
    key = OverridesParser.create().parse_override(override).key_or_group
    return key.split("@")[0].replace("/", ".").split(".")[0]


def teacher_overrides(overrides: list[str]) -> list[str]:
    """The overrides that can change the teacher; a student-only sweep (alpha, aug) collapses away."""
    return [o for o in overrides if top_key(o) not in STUDENT_ONLY]


def sweep_dir_of(overrides: list[str]) -> str:
    """The grid's sweep dir: the one given, else Hydra's default (resolved now, so both steps share it)."""
    given = [o for o in overrides if o.startswith("hydra.sweep.dir=")]
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("config", overrides=given, return_hydra_config=True)
    return str(Path(cfg.hydra.sweep.dir).absolute())


def commands(argv: list[str]) -> tuple[list[str], list[str]]:
    """The teacher command and the grid command for `python -m kd.submit <argv>`."""
    import kd.train  # noqa: F401  (registers the config schemas that `compose` needs)

    flags, overrides = split_args(argv)
    sweep_dir = sweep_dir_of(overrides)
    rest = [o for o in overrides if not o.startswith("hydra.sweep.dir=")]
    train = [sys.executable, str(TRAIN), "-m", *flags]
    teacher = [*train, "stage=teacher", *teacher_overrides(rest), f"hydra.sweep.dir={sweep_dir}/teacher"]
    grid = [*train, *rest, f"hydra.sweep.dir={sweep_dir}"]
    return teacher, grid


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    dry_run = "--dry-run" in argv
    teacher, grid = commands([a for a in argv if a != "--dry-run"])
    for name, cmd in (("teacher", teacher), ("grid", grid)):
        print(f"kd.submit {name}: {shlex.join(cmd)}", flush=True)
        if dry_run:
            continue
        rc = subprocess.run(cmd).returncode
        if rc != 0:
            print(f"kd.submit: the {name} step failed (exit status {rc})"
                  + ("; the grid was not submitted." if name == "teacher" else "."), file=sys.stderr)
            return rc
    return 0


if __name__ == "__main__":
    sys.exit(main())
