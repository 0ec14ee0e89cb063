"""Distill a teacher into a student under one augmentation policy; Hydra picks the cell.

    python kd/train.py                                   # one run with the defaults
    python kd/train.py -m alpha=0,0.25,0.5,0.75,1.0 aug=none,fc,fcra   # the paper's grid
    python kd/train.py -m alpha=0,0.25,0.5,0.75,1.0 aug=none,fc,fcra data=digits   # in minutes, on a CPU
    python kd/train.py stage=teacher                     # only train (or verify) the cached teacher
    python kd/train.py stage=data data=cifar100          # only download (if allowed) and verify the data
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python kd/train.py`: make the package importable without installing it
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hydra  # noqa: E402  (torch and the training code load only once a job runs: kd/runs/job.py)
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.experimental.callback import Callback  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from kd.config import register_schemas  # noqa: E402
from kd.paths import CONF_DIR  # noqa: E402
from kd.runs.rank import is_writer  # noqa: E402
from kd.runs.sweep_dir import register_resolvers  # noqa: E402

register_schemas()
register_resolvers()


def unwritable_reason(path: Path) -> str | None:
    """Why no files can be created at `path` (probed with a temp dir, removed again); None if they can."""
    existing = path.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file"
    try:
        os.rmdir(tempfile.mkdtemp(dir=existing))
    except OSError as err:
        return f"cannot create files in {existing}: {err.strerror}"
    return None


# Where this process's run or sweep writes, once Hydra has resolved it: what a Ctrl-C's resume line names.
STARTED: dict[str, Any] = {"output_dir": None, "multirun": False}


class CheckOutputDir(Callback):
    """Refuse an unwritable hydra.run.dir / hydra.sweep.dir up front, naming the key to change.

    Otherwise Hydra's own mkdir fails with a bare OSError. Hydra turns a callback's exceptions
    into warnings, so a callback stops the run with SystemExit.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, "hydra.run.dir")
        refuse_taken_run_dir(config)
        STARTED.update(output_dir=Path(config.hydra.run.dir), multirun=False)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, "hydra.sweep.dir")
        STARTED.update(output_dir=Path(config.hydra.sweep.dir), multirun=True)

    @staticmethod
    def _check(config: DictConfig, key: str) -> None:
        HydraConfig.instance().set_config(config)  # as Hydra does next: the dir may use ${hydra:job.name}
        path = Path(OmegaConf.select(config, key))
        reason = unwritable_reason(path)
        if reason is not None:
            raise SystemExit(f"Error: {key}={path} is not writable ({reason}). Set {key} to a writable dir.")


def refuse_taken_run_dir(config: DictConfig) -> None:
    """A single run into a dir that holds another config's finished results, or that another run is training in,
    is refused here, before Hydra rewrites the dir's .hydra/ files (they would then describe the refused run)."""
    run_dir = Path(OmegaConf.select(config, "hydra.run.dir"))
    if not run_dir.is_dir() or not is_writer():  # a data-parallel job's rank 0 checks and locks
        return
    from kd.runs.job import completed_results
    from kd.runs.locking import LOCK_FILE, JobDirBusyError, exclusive_job_dir

    # kd.runs.checks.CheckEveryCell, the callback before this one, has refused bad values: a bad value is named
    # as such, not as "another config"
    cfg = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
    try:
        completed_results(run_dir, cfg)
        if (run_dir / LOCK_FILE).exists():
            with exclusive_job_dir(run_dir, wait=False):
                pass
    except (ValueError, JobDirBusyError) as err:
        raise SystemExit(f"Error: {type(err).__name__}: {err} Nothing was written.") from None


# An absolute config dir: relative to a module Hydra would look for a `conf` package instead.
@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> dict[str, Any] | float:
    """The job (run by hydra/launcher=basic; kd's launchers train packs themselves): its results, or under a
    search its objective, the one number a search's sweeper takes (kd/runs/search.py)."""
    from kd.runs.job import in_multirun, train
    from kd.runs.search import check_search, is_search, objective

    search = in_multirun() and is_search(HydraConfig.get())
    if search:
        check_search(cfg)  # before training: a search without a val split has nothing honest to return
    result = train(cfg)
    if not in_multirun() and is_writer():  # a multirun ends with its grid table instead
        print(finished_line(result, Path(cfg.out_dir)))
    return objective(result, cfg) if search else result


def finished_line(result: dict[str, Any], out_dir: Path) -> str:
    """What a single run ends with: its number, and where its results are."""
    where = f"results in {out_dir / 'results.json'}"
    if "final_top1" in result:
        picked = (f", {result['test_top1_at_best_val']:.2f}% at the epoch best on val ({result['best_epoch']})"
                  if result.get("test_top1_at_best_val") is not None else "")
        return f"kd: final test top-1 {result['final_top1']:.2f}%{picked}; {where}"
    if result.get("teacher_top1") is not None:
        return f"kd: teacher test top-1 {result['teacher_top1']:.2f}% ({result['teacher_checkpoint']}); {where}"
    return f"kd: done; {where}"


def cli() -> None:
    """`python kd/train.py` and `kd-train`: the Hydra app, where Ctrl-C and SIGTERM end in one line that says what
    was kept and the command that resumes, not a traceback (kd/runs/interrupts.py)."""
    from kd.runs.interrupts import Terminated, report_and_exit, sigterm_raises
    from kd.runs.swept_group_keys import one_value_sweeps
    from kd.runs.torch_pair import check_torch_pair
    from kd.runs.hydra_args import split_args
    from kd.runs.typed_overrides import TypedOverrideError, check_typed_overrides
    from kd.training.cpu import share_cores_when_busy, usable_cores

    args = split_args(sys.argv[1:])
    try:
        check_typed_overrides(args.overrides_to_check(), args.config_dirs())
        if args.parsed is not None and args.parsed.multirun:  # `loss=ab,ft loss.first_stage_epochs=2`
            given = dict(zip(args.overrides, one_value_sweeps(args.overrides)))  # kd/runs/swept_group_keys.py
            sys.argv = [sys.argv[0]] + [given.get(arg, arg) for arg in sys.argv[1:]]
    except TypedOverrideError as err:
        raise SystemExit(f"Error: {err}. Fix that override and rerun; nothing was written.") from None
    if args.runs_a_job():
        shared = share_cores_when_busy(usable_cores())  # before torch loads: OpenMP reads its wait policy then
        if shared is not None:
            print(shared, file=sys.stderr)
        check_torch_pair()  # its torch and torchvision must work together
    try:
        with sigterm_raises():
            main()
    except (KeyboardInterrupt, Terminated) as err:
        report_and_exit(err, STARTED["output_dir"], STARTED["multirun"])


if __name__ == "__main__":
    # Run the importable kd.train, not this __main__ copy: submitit launchers pickle the task
    # function, and only an importable one pickles by reference (by value it drags in torch's modules).
    from kd.train import cli as importable_cli

    importable_cli()
