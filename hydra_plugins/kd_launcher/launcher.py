"""kd's grid launchers: hydra-submitit-launcher's SLURM and local launchers, plus what a grid needs.

Selected by the presets in launchers/hydra/launcher/ (see launchers/README.md). On top of
`submitit_slurm` / `submitit_local` they
- submit one job per pack (the cells that differ only in the loss's settings, trained together);
- fail a cell's job when the cell raises (traceback in its logs, SLURM state FAILED); the
  stock launcher catches the error, so submitit logs "completed" and SLURM says COMPLETED;
- end the sweep non-zero with one message naming every failed cell (the stock sweep stops
  at the first failed cell it reads, without the table);
- train a pack data-parallel over the job's tasks (`tasks_per_node` x `nodes`, with trainer.devices and
  trainer.nodes set to match: docs/distributed.md), each task a rank, from submitit's environment;
- run one pack per GPU at a time locally: submitit's LocalExecutor starts every job at once
  and gives each the same first GPUs (CUDA_VISIBLE_DEVICES=0..gpus_per_node-1);
- make a cell use the CPU threads it reserved (cpus_per_task), not every core of the node.
Requeue on preemption or timeout is submitit's own: `checkpoint` resubmits the same pack
(the same cells, so the same output dirs, named by their overrides), and kd's `fit` resumes each cell from its checkpoint.pt.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides, setup_globals
from omegaconf import OmegaConf, open_dict

from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher, SlurmLauncher
from hydra_plugins.kd_launcher.follow import PackLogFollower
from hydra_plugins.kd_launcher.packed import SweepFailedError, run_pack
from kd.runs.packs import group_packs
from kd.runs.search import is_search
from kd.runs.sweep_dir import SUBMITTED_FILE

log = logging.getLogger(__name__)

POLL_S = 1.0  # seconds between checks for a finished local pack
JobArgs = tuple  # the arguments of one pack's __call__: ([(overrides, job_num), ...], singletons)


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


def failed_trial(overrides: list[str], err: Exception) -> JobReturn:
    """A search's trial whose pack's job died: failed, with the job's error, for its sweeper to tell."""
    ret = JobReturn(overrides=list(overrides), status=JobStatus.FAILED)
    ret.return_value = err
    return ret


class PackFailedError(RuntimeError):
    """Cells of a pack failed for different reasons; the message names each."""


class _GridCells:
    """Mixin over hydra-submitit-launcher's BaseSubmititLauncher (which it must precede in the bases).

    One submitted job trains one pack: the cells that differ only in the loss's settings (kd/runs/packs.py).
    """

    _EXECUTOR: str
    params: dict[str, Any]
    config: Any
    hydra_context: Any

    def __call__(self, cells: list[tuple[list[str], int]], singleton_state: dict,
                 devices: Optional[str] = None) -> list[JobReturn]:
        """Run one pack inside its job, raising its cells' errors so that submitit and SLURM see the job fail."""
        import submitit

        if devices is not None:  # before anything in this process initialises CUDA
            os.environ["CUDA_VISIBLE_DEVICES"] = devices
        if submitit.JobEnvironment().num_tasks > 1:  # the pack is one data-parallel job, each task a rank of it
            # MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK for torch.distributed (kd/training/distributed.py); each
            # rank picks its GPU among the pack's by its local rank, so CUDA_VISIBLE_DEVICES stays as it is.
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        cpus = self.params.get("cpus_per_task")
        if cpus:
            import torch

            torch.set_num_threads(cpus)  # its share of the node: packs that run side by side never oversubscribe it
            print(f"kd: this pack uses {cpus} CPU thread(s) of the {os.cpu_count()} core(s) here "
                  f"(hydra.launcher.cpus_per_task={cpus}; change it to split the cores otherwise)", flush=True)
        names = ", ".join(f"#{num} ({' '.join(filter_overrides(overrides))})" for overrides, num in cells)
        print(f"kd: pack of {len(cells)}: {names} on "
              f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '(unset)')}", flush=True)
        Singleton.set_state(singleton_state)
        setup_globals()
        configs = []
        for overrides, num in cells:
            config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(config.hydra.job):
                config.hydra.job.id = submitit.JobEnvironment().job_id
                config.hydra.job.num = num
            configs.append(config)
        returns = run_pack(self.hydra_context, configs)
        failed = [(num, ret) for (_, num), ret in zip(cells, returns) if ret.status == JobStatus.FAILED]
        for num, ret in failed:
            # Hydra's job logging is still set up: this lands in the cells' logs next to results.json.
            log.error("cell #%d failed (%s: %s); %s/results.json has status=failed", num,
                      type(ret._return_value).__name__, ret._return_value, ret.hydra_cfg.hydra.runtime.output_dir)
        if is_search(self.config.hydra):  # each trial's own return, failed or not, is the sweeper's to tell
            return returns
        errors = {id(ret._return_value): ret._return_value for _, ret in failed}
        if len(errors) == 1:
            raise next(iter(errors.values()))  # the cell's own exception (the pack's, if it stopped them all)
        if errors:
            raise PackFailedError("; ".join(f"#{num}: {type(ret._return_value).__name__}: {ret._return_value}"
                                            for num, ret in failed))
        return returns

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        """Submit every pack, wait for all of them, and fail the sweep if any cell failed.

        Written anew rather than wrapping the stock `launch`, which submits one job per cell
        (no packs, no per-GPU scheduling locally) and stops collecting at the first cell without a result.
        """
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
        configs = [self.hydra_context.config_loader.load_sweep_config(self.config, list(o)) for o in job_overrides]
        packs = group_packs(configs)
        log.info("kd %s launcher: %d cell(s) in %d pack(s), sweep dir %s", self._EXECUTOR, len(job_overrides),
                 len(packs), sweep_dir)
        args: list[JobArgs] = []
        for pack in packs:
            cells = [(list(job_overrides[i]), initial_job_idx + i) for i in pack]
            log.info("\tpack: %s", ", ".join(f"#{num} {' '.join(filter_overrides(o))}" for o, num in cells))
            args.append((cells, Singleton.get_state()))
        jobs = self._run(self._executor(), args)
        return self._collect(jobs, args, job_overrides, initial_job_idx, sweep_dir)

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

    def _collect(self, jobs: list[Any], args: list[JobArgs], job_overrides: Sequence[Sequence[str]],
                 initial_job_idx: int, sweep_dir: Path) -> list[JobReturn]:
        from submitit.core.utils import UncompletedJobError

        returns, failed = [], []
        names = cell_names(job_overrides)
        for job, (cells, _) in zip(jobs, args):
            try:
                returns.extend(job.results()[0])
            except UncompletedJobError as err:  # a cell raised (FailedJobError) or the pack's job died
                if is_search(self.config.hydra):  # its trials fail; the search goes on with the other packs'
                    returns.extend(failed_trial(overrides, err) for overrides, _ in cells)
                    continue
                which = ", ".join(f"#{num} {names[num - initial_job_idx]}" for _, num in cells)
                failed.append((len(cells), f"  {which}: {error_summary(err)}\n      job {job.job_id}, "
                                           f"log {job.paths.stderr}"))
        if failed:
            from kd.report.grid_table import print_grid_table

            print_grid_table(sweep_dir)
            count = sum(n for n, _ in failed)
            raise SweepFailedError(
                f"{count} of {len(job_overrides)} cells failed or did not finish (sweep {sweep_dir}):\n" +
                "\n".join(line for _, line in failed) +
                "\nEach cell's results.json says whether it completed or failed, with the traceback. Fix, then "
                "rerun the same command with hydra.sweep.dir set to this sweep: completed cells are skipped.")
        return returns



class KdSlurmLauncher(_GridCells, SlurmLauncher):
    """The grid as one SLURM job array, one task per pack (at most `array_parallelism` packs running at once)."""

    def __init__(self, detach: bool, **params: Any) -> None:
        super().__init__(**params)
        self.detach = detach

    def _run(self, executor: Any, args: list[JobArgs]) -> list[Any]:
        jobs = executor.map_array(self, *zip(*args))
        log.info("kd slurm launcher: submitted job array %s (%d packs)", jobs[0].job_id.split("_")[0], len(jobs))
        return jobs

    def _collect(self, jobs: list[Any], args: list[JobArgs], job_overrides: Sequence[Sequence[str]],
                 initial_job_idx: int, sweep_dir: Path) -> list[JobReturn]:
        """Wait for every pack, or with `detach`, record what was submitted (sweep_dir/submitted.json) and return."""
        if not self.detach:
            return super()._collect(jobs, args, job_overrides, initial_job_idx, sweep_dir)
        names = cell_names(job_overrides)
        submitted = {"array": jobs[0].job_id.split("_")[0],
                     "packs": {job.job_id: [names[num - initial_job_idx] for _, num in cells]
                               for job, (cells, _) in zip(jobs, args)},
                     "logs": str(Path(jobs[0].paths.stdout).parent.parent)}
        (sweep_dir / SUBMITTED_FILE).write_text(json.dumps(submitted, indent=2))
        returns = []
        for overrides in job_overrides:
            ret = JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED)
            ret.return_value = submitted["array"]
            returns.append(ret)
        return returns


class KdLocalLauncher(_GridCells, LocalLauncher):
    """The grid on this machine: one pack per `gpus_per_node` GPUs at a time, or CPU packs without GPUs."""

    def _run(self, executor: Any, args: list[JobArgs]) -> list[Any]:
        slots = self._slots()
        jobs: list[Any] = [None] * len(args)
        pending = list(range(len(args)))[::-1]
        busy: dict[int, int] = {}  # slot: the pack running in it
        follower = PackLogFollower(len(args))
        while pending or busy:
            for slot, devices in enumerate(slots):
                if slot not in busy and pending:
                    busy[slot] = i = pending.pop()
                    jobs[i] = executor.submit(self, *args[i], devices=devices)
            time.sleep(POLL_S)
            for slot, i in list(busy.items()):
                done = jobs[i].done()
                follower.echo(i, jobs[i], final=done)
                if done:
                    del busy[slot]
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
            log.warning("kd local launcher: no GPU visible; running the packs on CPU")
        log.info("kd local launcher: %d pack(s) at a time, CUDA_VISIBLE_DEVICES per pack: %s", len(slots),
                 ", ".join(repr(s) for s in slots))
        return slots
