"""`logger=wandb`: one Weights & Biases run per job (the teacher's training, each grid cell).

W&B is a convenience, results.json is the record: if W&B cannot start or a call fails,
the job warns once and trains on without it. Without credentials, or when the server
cannot be reached, the run is written offline into the job's output dir, and one log
line per process (not one per run of a pack) says how to upload them.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import secrets
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import wandb
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from kd.config import WandbMode
from kd.runs.sweep_dir import sweep_id
from kd.tracking.null import NullRun

log = logging.getLogger(__name__)

RUN_FILE = "wandb_run.json"  # in the job's output dir: a requeued job resumes the same W&B run
MAX_GROUP_LEN = 128  # W&B's limit on a group name
MAX_TAG_LEN = 64  # W&B's limit on a tag


def sweep_group() -> Optional[str]:
    """`<sweep dir>#<its id>`, which all of the multirun's jobs share; None outside a multirun. The id
    (kd/runs/sweep_dir.py: sweep_id) tells apart two sweeps of one path: a deleted and re-run sweep dir, the same
    relative path in another clone."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    sweep_dir = str(HydraConfig.get().sweep.dir)
    suffix = "#" + sweep_id(Path(sweep_dir))
    return sweep_dir[-(MAX_GROUP_LEN - len(suffix)):] + suffix


def fit_tag(tag: str) -> str:
    """The tag within W&B's limit: a longer one keeps its start and ends with a digest of the whole, so two long
    values that share a start stay two tags."""
    if len(tag) <= MAX_TAG_LEN:
        return tag
    return f"{tag[:MAX_TAG_LEN - 9]}~{hashlib.sha256(tag.encode()).hexdigest()[:8]}"


def teacher_artifact_name(path: Path) -> str:
    """The teacher's artifact is named after its checkpoint file."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", f"teacher-{path.stem}")[:128]


def teacher_alias(sha256: str) -> str:
    """The alias that names the teacher file's version by its content."""
    return f"sha256-{sha256[:12]}"


def teacher_artifact(path: Path, sha256: str, top1: float) -> wandb.Artifact:
    """The teacher checkpoint as a W&B model artifact named after its cache file. Its digest comes from the
    file's content, so the artifact a student builds from the same file is the version its teacher logged."""
    artifact = wandb.Artifact(teacher_artifact_name(path), type="model",
                              metadata={"sha256": sha256, "top1": top1, "file": path.name})
    # immutable: no copy into wandb's staging dir; the cache file is only ever replaced whole (kd/training/teacher.py)
    artifact.add_file(str(path.absolute()), name=path.name, policy="immutable")
    return artifact


def sync_target(out_dir: Path) -> Path:
    """What to hand kd-sync for a job's run: the multirun's sweep dir (its every run, the teachers' too), else
    the run's own dir."""
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return Path(HydraConfig.get().sweep.dir)
    return Path(out_dir)


def read_run_file(job_dir: Path) -> Optional[dict[str, Any]]:
    """What the tracker recorded about a job's W&B run (id, project, entity, group, sync_dir), if anything."""
    path = Path(job_dir) / RUN_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def offline_run_dirs(job_dir: Path) -> list[Path]:
    """Every offline W&B run dir of a job: one per attempt (a resumed job starts a new one, same run id)."""
    info = read_run_file(job_dir)
    if info is None or "sync_dir" not in info:  # W&B never started for it (an id is written before the start)
        return []
    attempt = re.compile(rf"offline-run-\d+_\d+-{re.escape(info['id'])}(-\d+)?")  # wandb adds -N within a second
    return sorted(p for p in sync_dir_of(job_dir, info).parent.iterdir() if attempt.fullmatch(p.name))


def sync_dir_of(job_dir: Path, info: dict[str, Any]) -> Path:
    """The offline run dir a run file records: relative to the job dir (a sweep moved or copied elsewhere finds its
    own runs), or absolute where logger.dir put it outside the job dir (and in run files of kd before 2026-12-06)."""
    return Path(job_dir) / info["sync_dir"]


def newest_attempt(job_dir: Path) -> Optional[Path]:
    """The job's latest offline run dir: a resumed attempt logs the checkpointed epochs again, so it holds the
    run's whole history, and uploading an older attempt too would append epochs 1..k a second time."""
    attempts = offline_run_dirs(job_dir)
    return max(attempts, key=lambda d: (d.stat().st_mtime_ns, d.name)) if attempts else None


def is_synced(run_dir: Path) -> bool:
    return any(run_dir.glob("*.wandb.synced"))  # the marker `wandb sync` leaves


@functools.cache  # once per process for each (why, where, target): a pack's cells and its teacher share one line
def say_offline(why: str, where: str, target: str) -> None:
    """The one line that says the runs are offline, where they are, and the command that uploads them."""
    log.info("W&B is offline (%s): each run is saved in %s; upload them with: kd-sync %s", why, where, target)


class WandbRun:
    """A started W&B run whose calls can fail without failing the job: the first failure warns, then all are no-ops."""

    def __init__(self, run: Any) -> None:
        self._run = run
        self._broken = False

    def _call(self, what: str, fn: Callable[[], Any], even_if_broken: bool = False) -> None:
        if self._broken and not even_if_broken:
            return
        try:
            fn()
        except Exception as err:  # wandb fails in many ways (network, service, disk); none may stop training
            if not self._broken:
                log.warning("W&B %s failed (%s: %s); training goes on without W&B, results.json is unaffected",
                            what, type(err).__name__, err)
            self._broken = True

    def log(self, metrics: dict[str, Any], step: int) -> None:
        # A resumed job logs its checkpointed epochs again (kd.training.students.resume); an online run resumed on the
        # server already holds those before its starting_step (an offline one starts at 0 and takes them).
        if step < self._run.starting_step:
            return
        self._call("log", lambda: self._run.log(metrics, step=step))

    def summary(self, values: dict[str, Any]) -> None:
        self._call("summary", lambda: self._run.summary.update(values))

    def record(self, config: dict[str, Any]) -> None:
        self._call("config", lambda: self._run.config.update(config, allow_val_change=True))

    def log_teacher(self, path: Path, sha256: str, top1: float) -> None:
        self._call("log_artifact", lambda: self._run.log_artifact(teacher_artifact(path, sha256, top1),
                                                                  aliases=[teacher_alias(sha256)]))

    def use_teacher(self, path: Path, sha256: str, top1: float) -> None:
        """Declare the teacher's artifact an input of this run; offline, where wandb refuses use_artifact ("Cannot
        use artifact when in offline mode"), the run's config names it (teacher_artifact) instead."""
        def use() -> None:
            artifact = teacher_artifact(path, sha256, top1)
            self._run.config.update({"teacher_artifact": {"name": artifact.name, "type": artifact.type,
                                                          "digest": artifact.digest, "sha256": sha256}},
                                    allow_val_change=True)
            if not self._run.offline:
                self._run.use_artifact(artifact)

        self._call("use_artifact", use)

    @property
    def offline(self) -> bool:
        return bool(self._run.offline)

    def log_values(self, values: dict[str, Any]) -> None:
        """Values outside the per-epoch history (a report run's table and figures), at wandb's next step."""
        self._call("log", lambda: self._run.log(values))

    def log_files(self, name: str, type: str, paths: list[Path]) -> None:
        def log_artifact() -> None:
            artifact = wandb.Artifact(name, type=type)
            for path in paths:
                artifact.add_file(str(path), name=path.name)
            self._run.log_artifact(artifact)

        self._call("log_artifact", log_artifact)

    def mark_preempting(self) -> None:
        self._call("mark_preempting", self._run.mark_preempting)

    def finish(self, exit_code: int) -> None:
        # Tried even after a failure: an unfinished run would be reused by the next job in this process.
        self._call("finish", lambda: self._run.finish(exit_code=exit_code), even_if_broken=True)


class WandbTracker:
    """Opens one W&B run per job with the whole resolved config (under `config`), grouped by sweep."""

    def __init__(self, project: str, entity: Optional[str], group: Optional[str], tags: list[str],
                 mode: Union[WandbMode, str], dir: Optional[str], finish_timeout_s: float) -> None:
        self.project = project
        self.entity = entity
        self.group = group
        self.tags = list(tags)
        self.mode = WandbMode(mode)
        self.dir = dir
        self.finish_timeout_s = finish_timeout_s

    @contextlib.contextmanager
    def run(self, cfg: DictConfig, out_dir: Path, job_type: str, name: str,
            tags: Sequence[str] = ()) -> Iterator[Union[WandbRun, NullRun]]:
        """The job's run, tagged with logger.tags and `tags` (a cell's swept overrides)."""
        run = self._start(cfg, Path(out_dir), job_type, name, [*self.tags, *tags])
        if run is None:
            yield NullRun()
            return
        exit_code = 1
        try:
            yield run
            exit_code = 0
        except (KeyboardInterrupt, SystemExit):
            run.mark_preempting()  # a signal (requeue) or Ctrl-C: the job resumes into this same run
            raise
        finally:
            run.finish(exit_code)  # always: wandb would otherwise reuse this run for the next job in the process

    def _resolve_mode(self) -> tuple[Optional[str], str]:
        """(mode for wandb.init, why), where None lets wandb read WANDB_MODE."""
        if self.mode != WandbMode.auto:
            return self.mode.value, "logger.mode"
        if "WANDB_MODE" in os.environ:
            return None, "WANDB_MODE"
        if wandb.login(prompt=False, verify=False):
            return "online", "credentials found"
        return "offline", "no W&B credentials: `wandb login` or set WANDB_API_KEY to log online"

    def _start(self, cfg: DictConfig, out_dir: Path, job_type: str, name: str, tags: list[str]) -> Optional[WandbRun]:
        mode, why = None, ""
        try:
            mode, why = self._resolve_mode()
            run = self._init(cfg, out_dir, job_type, name, tags, mode, self._run_id(out_dir, mode))
        except Exception as err:  # see WandbRun._call
            failure = f"{type(err).__name__}: {err}"
            run = None
            if mode != "offline":  # no network, a server error: keep the run on disk for `wandb sync`
                with contextlib.suppress(Exception):
                    # A new id: wandb's service still holds the one that failed to start online.
                    run_id = self._run_id(out_dir, "offline", fresh=True)
                    run = self._init(cfg, out_dir, job_type, name, tags, "offline", run_id)
                    why = f"online failed: {failure}"
            if run is None:
                log.warning("W&B could not start the %s run %r (%s); training goes on without W&B, "
                            "results.json is written as usual", job_type, name, failure)
                return None
        if run.disabled:
            return WandbRun(run)
        self._record(run, out_dir, job_type, name)
        if run.offline:
            log.debug("W&B run %r is offline, saved in %s", name, run.settings.sync_dir)
            where = self.dir if self.dir is not None else "its job dir's wandb/"
            say_offline(why, where, str(sync_target(out_dir)))
        else:
            log.info("W&B run %r: %s", name, run.url)
        return WandbRun(run)

    def _run_id(self, out_dir: Path, mode: Optional[str], fresh: bool = False) -> Optional[str]:
        """The job's W&B run id: the one it had, or a new one written down before the run starts, so that a job
        killed while W&B starts resumes that run instead of opening a second one."""
        previous = None if fresh else read_run_file(out_dir)
        if previous is not None:
            return previous["id"]
        if (mode or os.environ.get("WANDB_MODE")) == "disabled":
            return None
        run_id = secrets.token_hex(6)  # W&B takes any [a-z0-9] id
        out_dir.mkdir(parents=True, exist_ok=True)
        self._write_run_file(out_dir, {"id": run_id})
        return run_id

    def _init(self, cfg: DictConfig, out_dir: Path, job_type: str, name: str, tags: list[str], mode: Optional[str],
              run_id: Optional[str]) -> Any:
        wandb_dir = Path(self.dir if self.dir is not None else out_dir)
        wandb_dir.mkdir(parents=True, exist_ok=True)  # the teacher's work dir is made later, by its first checkpoint
        return wandb.init(
            project=self.project, entity=self.entity, job_type=job_type, name=name,
            tags=list(dict.fromkeys(fit_tag(t) for t in tags)),
            group=self.group if self.group is not None else sweep_group(),
            # Under "config": the top level is for the flat keys the job records (aug: fcra, alpha: 0.5, ...),
            # which the UI can group by; the whole config's nodes (aug._target_) cannot be grouped on.
            config={"config": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)},
            dir=str(wandb_dir), mode=mode, id=run_id, resume="allow",
            # silent: kd's one offline line (say_offline) replaces the banner and footer wandb prints for every run;
            # a run's setting, so wandb's warnings (wandb.termwarn, set up per process) still reach the console.
            # create_new: a pack has one run open per cell at once
            settings=wandb.Settings(silent=True, finish_timeout=self.finish_timeout_s, reinit="create_new"),
        )

    def _record(self, run: Any, out_dir: Path, job_type: str, name: str) -> None:
        """Write RUN_FILE: the id to resume after a requeue, where `kd.report --wandb` finds the sweep, and where
        this attempt's files are (kd-sync finds every attempt's beside it)."""
        self._write_run_file(out_dir, {"id": run.id, "project": run.project, "entity": run.entity or self.entity,
                                       "group": run.group, "job_type": job_type, "name": name,
                                       "sync_dir": _relative_if_inside(Path(run.settings.sync_dir), out_dir)})

    @staticmethod
    def _write_run_file(out_dir: Path, record: dict[str, Any]) -> None:
        try:
            (out_dir / RUN_FILE).write_text(json.dumps(record, indent=2))
        except OSError as err:
            log.warning("could not write %s (%s); a resumed job will start a new W&B run", out_dir / RUN_FILE, err)


def _relative_if_inside(path: Path, base: Path) -> str:
    try:
        return str(path.absolute().relative_to(Path(base).absolute()))
    except ValueError:
        return str(path.absolute())
