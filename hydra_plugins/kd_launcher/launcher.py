"""kd's grid launchers: hydra-submitit-launcher's SLURM and local launchers, plus what a grid needs.

Selected by the presets in launchers/hydra/launcher/ (see launchers/README.md). On top of
`submitit_slurm` / `submitit_local` they
- fail a cell's job when the cell raises (traceback in its logs, SLURM state FAILED); the
  stock launcher catches the error, so submitit logs "completed" and SLURM says COMPLETED;
- end the sweep non-zero with one message naming every failed cell (the stock sweep stops
  at the first failed cell it reads, without the table);
- run one cell per GPU at a time locally: submitit's LocalExecutor starts every job at once
  and gives each the same first GPUs (CUDA_VISIBLE_DEVICES=0..gpus_per_node-1);
- make a cell use the CPU threads it reserved (cpus_per_task), not every core of the node.
Requeue on preemption or timeout is submitit's own: `checkpoint` resubmits the same cell
(same job number, so the same output dir), and kd's `fit` resumes from out_dir/checkpoint.pt.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra.errors import CompactHydraException
from omegaconf import OmegaConf

from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher, SlurmLauncher

log = logging.getLogger(__name__)

POLL_S = 1.0  # seconds between checks for a finished local cell
JobArgs = tuple  # the arguments of one cell's __call__: (overrides, job_dir_key, job_num, job_id, singletons)


class SweepFailedError(CompactHydraException):
    """Cells of a sweep failed. Hydra prints just this message and exits with status 1."""


def device_slots(visible: Optional[str], device_count: int, gpus_per_cell: int, cpus_per_cell: int,
                 cpu_count: int) -> list[str]:
    """CUDA_VISIBLE_DEVICES of each cell that may run at once on this machine.

    Disjoint groups of `gpus_per_cell` GPUs taken from `visible` (the launching shell's
    CUDA_VISIBLE_DEVICES, kept verbatim so UUIDs and MIG ids work) or from 0..device_count-1.
    Without GPUs (or with gpus_per_cell=0): "" (no GPU) for as many cells as the cores allow.
    """
    gpus = [d.strip() for d in visible.split(",") if d.strip()] if visible is not None else [
        str(i) for i in range(device_count)]
    if gpus_per_cell == 0 or not gpus:
        return [""] * max(1, cpu_count // max(1, cpus_per_cell))
    if len(gpus) < gpus_per_cell:
        raise ValueError(f"hydra.launcher.gpus_per_node={gpus_per_cell} but only {len(gpus)} GPU(s) are "
                         f"visible ({','.join(gpus)}); lower gpus_per_node")
    usable = len(gpus) // gpus_per_cell * gpus_per_cell
    return [",".join(gpus[i:i + gpus_per_cell]) for i in range(0, usable, gpus_per_cell)]


def cell_names(job_overrides: Sequence[Sequence[str]]) -> list[str]:
    """Each cell named by the overrides that differ between cells (`alpha=0.5 aug=fc`), all of them if none do."""
    cells = [filter_overrides(overrides) for overrides in job_overrides]
    varying = {o for cell in cells for o in cell if not all(o in other for other in cells)}
    return [" ".join(o for o in cell if o in varying) or " ".join(cell) for cell in cells]


def error_summary(err: Exception) -> str:
    """The one line that says why a job failed, from submitit's error (which carries the remote traceback)."""
    text = str(err)
    rule = "----------------------\n"
    if rule in text:  # FailedJobError: the job's traceback sits between two rules
        trace = text.split(rule)[1]
        lines = [line for line in trace.splitlines() if line.strip()]
        if lines:
            return lines[-1]
    return text.splitlines()[0] if text else type(err).__name__


class _GridCells:
    """Mixin over hydra-submitit-launcher's BaseSubmititLauncher (which it must precede in the bases)."""

    _EXECUTOR: str
    params: dict[str, Any]
    config: Any

    def __call__(self, sweep_overrides: list[str], job_dir_key: str, job_num: int, job_id: str,
                 singleton_state: dict, devices: Optional[str] = None) -> JobReturn:
        """Run one cell inside its job, re-raising its error so that submitit and SLURM see the job fail."""
        if devices is not None:  # before anything in this process initialises CUDA
            os.environ["CUDA_VISIBLE_DEVICES"] = devices
        cpus = self.params.get("cpus_per_task")
        if cpus:
            import torch

            torch.set_num_threads(cpus)
        print(f"kd: cell #{job_num} ({' '.join(filter_overrides(sweep_overrides))}) on "
              f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '(unset)')}", flush=True)
        ret = super().__call__(sweep_overrides, job_dir_key, job_num, job_id, singleton_state)  # type: ignore[misc]
        if ret.status == JobStatus.FAILED:
            try:
                _ = ret.return_value  # raises the cell's own exception
            except Exception:
                # Hydra's job logging is still set up: this lands in the cell's <job>.log next to results.json.
                log.exception("cell #%d failed; %s/results.json has status=failed", job_num,
                              ret.hydra_cfg.hydra.runtime.output_dir)
                raise
        return ret

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        """Submit every cell, wait for all of them, and fail the sweep if any cell failed.

        Written anew rather than wrapping the stock `launch`, which submits every cell at once
        (no per-GPU scheduling locally) and stops collecting at the first cell without a result.
        """
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
        log.info("kd %s launcher: %d cell(s), sweep dir %s", self._EXECUTOR, len(job_overrides), sweep_dir)
        args: list[JobArgs] = []
        for i, overrides in enumerate(job_overrides):
            num = initial_job_idx + i
            log.info("\t#%d : %s", num, " ".join(filter_overrides(overrides)))
            args.append((list(overrides), "hydra.sweep.dir", num, f"job_id_for_{num}", Singleton.get_state()))
        jobs = self._run(self._executor(), args)
        return self._collect(jobs, args, sweep_dir)

    def _executor(self) -> Any:
        """A submitit executor from the preset, mapping keys exactly as hydra-submitit-launcher does."""
        import submitit

        params = dict(self.params)
        init = {"folder": params.pop("submitit_folder")}
        if "max_num_timeout" in params:
            init[f"{self._EXECUTOR}_max_num_timeout"] = params.pop("max_num_timeout")
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, **init)
        generic = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{k if k in generic else f"{self._EXECUTOR}_{k}": v for k, v in params.items()})
        return executor

    def _run(self, executor: Any, args: list[JobArgs]) -> list[Any]:
        raise NotImplementedError

    def _collect(self, jobs: list[Any], args: list[JobArgs], sweep_dir: Path) -> list[JobReturn]:
        from submitit.core.utils import UncompletedJobError

        returns, failed = [], []
        names = cell_names([overrides for overrides, *_ in args])
        for job, name, (_, _, num, _, _) in zip(jobs, names, args):
            try:
                returns.append(job.results()[0])
            except UncompletedJobError as err:  # the cell raised (FailedJobError) or its job died
                failed.append(f"  #{num} {name}: {error_summary(err)}\n      job {job.job_id}, log {job.paths.stderr}")
        if failed:
            from kd.sweep import print_grid_table

            print_grid_table(sweep_dir)
            raise SweepFailedError(
                f"{len(failed)} of {len(jobs)} cells failed (sweep {sweep_dir}):\n" + "\n".join(failed) +
                "\nTracebacks: each cell's log above, and <cell dir>/results.json (status failed). Fix, then rerun "
                "the same command with hydra.sweep.dir set to this sweep: completed cells are skipped.")
        return returns


class KdSlurmLauncher(_GridCells, SlurmLauncher):
    """The grid as one SLURM job array (at most `array_parallelism` cells running at once)."""

    def _run(self, executor: Any, args: list[JobArgs]) -> list[Any]:
        jobs = executor.map_array(self, *zip(*args))
        log.info("kd slurm launcher: submitted job array %s (%d cells)", jobs[0].job_id.split("_")[0], len(jobs))
        return jobs


class KdLocalLauncher(_GridCells, LocalLauncher):
    """The grid on this machine: one cell per `gpus_per_node` GPUs at a time, or CPU cells without GPUs."""

    def _run(self, executor: Any, args: list[JobArgs]) -> list[Any]:
        slots = self._slots()
        jobs: list[Any] = [None] * len(args)
        pending = list(range(len(args)))[::-1]
        busy: dict[int, Any] = {}
        while pending or busy:
            for slot, devices in enumerate(slots):
                if slot not in busy and pending:
                    i = pending.pop()
                    jobs[i] = busy[slot] = executor.submit(self, *args[i], devices=devices)
            time.sleep(POLL_S)
            busy = {slot: job for slot, job in busy.items() if not job.done()}
        return jobs

    def _slots(self) -> list[str]:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        count = 0
        if visible is None:
            import torch

            count = torch.cuda.device_count()
        gpus_per_cell = self.params.get("gpus_per_node") or 0
        slots = device_slots(visible, count, gpus_per_cell, self.params.get("cpus_per_task") or 1, os.cpu_count() or 1)
        if gpus_per_cell and not any(slots):
            log.warning("kd local launcher: no GPU visible; running the cells on CPU")
        log.info("kd local launcher: %d cell(s) at a time, CUDA_VISIBLE_DEVICES per cell: %s", len(slots),
                 ", ".join(repr(s) for s in slots))
        return slots
