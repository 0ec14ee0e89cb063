"""Train (or verify) the teacher first, then submit the grid; both through the same Hydra launcher.

    python -m kd.runs.submit alpha=0,0.25,0.5,0.75,1.0 aug=none,fc,fcra hydra/launcher=slurm
    python -m kd.runs.submit --detach ...       # submit both and return (SLURM): the grid waits for the teacher there
    python -m kd.runs.submit --dry-run ...      # print the two commands, run nothing

Run as plain `kd/train.py -m`, every grid cell would find no cached teacher: one would train it
under the lock while the others hold their GPUs and wait. Here step 1 runs `stage=teacher` with
every override that can change the teacher (data, teacher, trainer, seed, ...: one job per
distinct teacher, e.g. per seed); step 2 submits the grid only once step 1 has succeeded, and
every cell loads the cached teacher. Both steps share one sweep dir, the teacher jobs under
teacher/; rerunning the same command with that hydra.sweep.dir verifies the teacher and skips
completed cells.

With --detach (a SLURM preset) nothing waits on the login node: the teacher job is submitted, then
the grid's job array with an `afterok` dependency on it, and the command prints how to follow and
collect the grid (`kd-report <sweep dir>` reports a partial sweep: finished cells, the rest listed).
"""
from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser

from kd.config import register_schemas
from kd.paths import CONF_DIR
from kd.runs.sweep_dir import SUBMITTED_FILE, register_resolvers
from kd.runs.hydra_args import split_args

TRAIN = Path(__file__).resolve().parents[1] / "train.py"
STUDENT_ONLY = {"alpha", "aug", "model", "loss", "optim", "stage"}  # top-level keys that never change the teacher


def top_key(override: str) -> str:
    """`aug=fc` -> aug, `+optim.optimizer.lr=0.1` -> optim, `hydra/launcher=slurm` -> hydra."""
    key = OverridesParser.create().parse_override(override).key_or_group
    return key.split("@")[0].replace("/", ".").split(".")[0]


def teacher_overrides(overrides: list[str]) -> list[str]:
    """The overrides that can change the teacher; a student-only sweep (alpha, aug) collapses away."""
    return [o for o in overrides if top_key(o) not in STUDENT_ONLY]


def sweep_dir_of(overrides: list[str], detach: bool = False) -> str:
    """The grid's sweep dir: the one given, else Hydra's default (resolved now, so both steps share it)."""
    given = [o for o in overrides if o.startswith(("hydra.sweep.dir=", "hydra/launcher="))]
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("config", overrides=given, return_hydra_config=True)
    if detach and "detach" not in cfg.hydra.launcher:
        raise SystemExit(f"kd.runs.submit: --detach needs a SLURM launcher preset (hydra/launcher=slurm or one built on "
                         f"it, such as mycluster); {cfg.hydra.launcher._target_} waits for its jobs.")
    return str(Path(cfg.hydra.sweep.dir).absolute())


def commands(argv: list[str], detach: bool = False) -> tuple[list[str], list[str]]:
    """The teacher command and the grid command for `python -m kd.runs.submit <argv>`.

    Detached, each sweep submits and returns; the grid's dependency on the teacher's jobs is added later.
    """
    register_schemas()  # what `compose` needs, as kd/train.py registers them
    register_resolvers()

    args = split_args(argv)
    flags, overrides = args.flags, args.overrides
    sweep_dir = sweep_dir_of(overrides, detach)
    rest = [o for o in overrides if not o.startswith("hydra.sweep.dir=")] + (["hydra.launcher.detach=true"] if detach else [])
    train = [sys.executable, str(TRAIN), "-m", *flags]
    teacher = [*train, "stage=teacher", *teacher_overrides(rest), f"hydra.sweep.dir={sweep_dir}/teacher"]
    grid = [*train, *rest, f"hydra.sweep.dir={sweep_dir}"]
    return teacher, grid


def after(teacher_sweep: Path, array: str | None = None) -> list[str]:
    """The grid's overrides that make SLURM start it only once the teacher's jobs succeeded (and drop it if not)."""
    array = array or json.loads((teacher_sweep / SUBMITTED_FILE).read_text())["array"]
    return [f"++hydra.launcher.additional_parameters.dependency=afterok:{array}",
            "++hydra.launcher.additional_parameters.kill-on-invalid-dep=yes"]


def how_to_follow(sweep_dir: Path) -> str:
    teacher = json.loads((sweep_dir / "teacher" / SUBMITTED_FILE).read_text())
    grid = json.loads((sweep_dir / SUBMITTED_FILE).read_text())
    return (f"kd.runs.submit: submitted; nothing runs here any more.\n"
            f"  teacher: job {teacher['array']}, logs in {teacher['logs']}\n"
            f"  grid: job array {grid['array']} ({len(grid['packs'])} packs), starts once the teacher succeeded; "
            f"logs in {grid['logs']}, each cell's in {sweep_dir}/<cell>/train.log\n"
            f"Follow: squeue --me -j {teacher['array']},{grid['array']}  (sacct -j {grid['array']} once done)\n"
            f"Collect, now or later: kd-report {sweep_dir}  (finished cells; the others listed as missing)\n"
            f"If the teacher fails, SLURM cancels the grid. Once squeue no longer lists these jobs, rerun this command "
            f"with hydra.sweep.dir={sweep_dir} to retry what did not complete.")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    dry_run, detach = "--dry-run" in argv, "--detach" in argv
    teacher, grid = commands([a for a in argv if a not in ("--dry-run", "--detach")], detach)
    sweep_dir = Path(grid[-1].split("=", 1)[1])
    for name, cmd in (("teacher", teacher), ("grid", grid)):
        if detach and name == "grid":  # the teacher's job id is known once it is submitted
            cmd = [*cmd[:-1], *after(sweep_dir / "teacher", "<teacher's job>" if dry_run else None), cmd[-1]]
        print(f"kd.runs.submit {name}: {shlex.join(cmd)}", flush=True)
        if dry_run:
            continue
        rc = subprocess.run(cmd).returncode
        if rc != 0:
            print(f"kd.runs.submit: the {name} step failed (exit status {rc})"
                  + ("; the grid was not submitted." if name == "teacher" else "."), file=sys.stderr)
            return rc
    if detach and not dry_run:
        print(how_to_follow(sweep_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
