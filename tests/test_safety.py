"""Nothing kd reads runs code from a file, and W&B credentials never reach its logs, configs or results."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from hydra.errors import InstantiationException

from conftest import FAST, compose_config, run_cli
from kd.checkpoint import CheckpointError
from kd.runs.results import RESULTS_FILE, read_results
from kd.runs.job import train
from reliability import ONE_THREAD, no_training, snapshot  # noqa: F401 (a fixture)

STUDENT = [*FAST, "alpha=0"]


class RunsCode:
    """Unpickling this runs a shell command that creates `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_run_checkpoint_holding_a_pickled_object_is_refused_not_run(tmp_path, no_training):
    job, marker = tmp_path / "job", tmp_path / "code-ran"
    job.mkdir()
    torch.save({"model": RunsCode(marker), "epoch": 1}, job / "checkpoint.pt")
    before = snapshot(job)
    with pytest.raises(CheckpointError, match=r"run checkpoint .*checkpoint.pt holds a pickled Python object \(\w+"
                                              r"\.system\), not only tensors; kd loads checkpoints with "
                                              r"weights_only=True and refuses it.* Delete .*checkpoint.pt"):
        train(compose_config(STUDENT, out_dir=job))
    assert not marker.exists()
    after = snapshot(job)
    after.pop(RESULTS_FILE)  # the failure, recorded
    assert after == before and read_results(job / RESULTS_FILE)["status"] == "failed"
    torch.load(job / "checkpoint.pt", weights_only=False)  # the file really is dangerous
    assert marker.exists()


def test_teacher_checkpoint_holding_a_pickled_object_is_refused_not_run(tmp_path, no_training):
    teacher, marker = tmp_path / "teacher.pt", tmp_path / "code-ran"
    torch.save({"arch": "resnet8", "num_classes": 10, "state_dict": RunsCode(marker), "test_top1": 1.0}, teacher)
    with pytest.raises(CheckpointError, match=r"teacher checkpoint .*teacher.pt holds a pickled Python object"):
        train(compose_config([*FAST, "alpha=0.5", "teacher=resnet8", f"teacher.checkpoint={teacher}"],
                             out_dir=tmp_path / "job"))
    assert not marker.exists()


def test_tampered_cifar_files_are_never_unpickled(tmp_path, no_training):
    # torchvision unpickles CIFAR's files, but only after their md5 matched the published dataset's.
    folder, marker = tmp_path / "data" / "cifar-10-batches-py", tmp_path / "code-ran"
    folder.mkdir(parents=True)
    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
                 "batches.meta"):
        (folder / name).write_bytes(pickle.dumps(RunsCode(marker)))
    with pytest.raises(InstantiationException, match="is incomplete or corrupt"):
        train(compose_config(["data=cifar10", f"data.root={tmp_path / 'data'}", "data.download=false",
                              "logger=none", "alpha=0"], out_dir=tmp_path / "job"))
    assert not marker.exists()


@pytest.mark.slow
def test_wandb_api_key_is_never_written_or_logged(tmp_path, isolated_kd_home):
    secret = "kd-test-secret-" + "7" * 25  # 40 characters, like a real key
    home = tmp_path / "home"  # wandb's own settings and caches land under $HOME: search them too
    job = tmp_path / "job"
    proc = run_cli([*FAST, "alpha=0.5", "teacher=resnet8", "logger=wandb", "logger.mode=offline",
                    f"hydra.run.dir={job}"], cwd=tmp_path,
                   env={**ONE_THREAD, "WANDB_API_KEY": secret, "HOME": str(home)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert list((job / "wandb").glob("offline-run-*"))  # the tracker really ran
    assert list(isolated_kd_home.glob("teachers/*.work/wandb/offline-run-*"))  # the teacher's run too
    assert secret not in proc.stdout + proc.stderr
    files = [p for root in (tmp_path, isolated_kd_home) for p in root.rglob("*") if p.is_file()]
    assert len(files) > 10 and [p for p in files if secret.encode() in p.read_bytes()] == []
