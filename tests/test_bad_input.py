"""Every bad input fails before training, names the key or file and the fix, and leaves what was there alone.

Composition errors (typo'd keys, wrong types, unknown options) are unit-tested in test_config.py and
bad teacher files partly in test_teacher.py; here each is also run where a job's files already are.
"""
from __future__ import annotations

import re
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import InstantiationException

import kd.training.students
from conftest import CONF_DIR, FAST, compose_config, run_cli
from kd.models import resnet as models
from kd.checkpoint import CheckpointError, load_checkpoint
from kd.runs.results import RESULTS_FILE, read_results
from kd.runs.checks import check_cell
from kd.runs.job import train
from kd.train import CheckOutputDir, unwritable_reason
from image_folders import write_folder, write_image
from reliability import (ONE_THREAD, last_lines, metrics, no_training, one_torch_thread,  # noqa: F401 (fixtures)
                         snapshot)

STUDENT = [*FAST, "alpha=0"]  # no teacher: the cheapest real job


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A completed one-epoch job (results.json, checkpoint.pt), trained once for the module."""
    job = tmp_path_factory.mktemp("finished") / "job"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    train(compose_config(STUDENT, out_dir=job))
    torch.set_num_threads(threads)
    return job


@pytest.fixture
def completed_job(finished, tmp_path) -> Path:
    job = tmp_path / "completed"
    shutil.copytree(finished, job)  # copy2: mtimes kept
    return job


@pytest.fixture
def interrupted_job(completed_job) -> Path:
    """What a SIGKILL leaves: a checkpoint and no results.json."""
    (completed_job / RESULTS_FILE).unlink()
    return completed_job


BAD_VALUES = {
    "alpha=1.5": r"alpha=1.5 is outside \[0, 1\]; set alpha=0 \(plain CE\) .. alpha=1 \(pure distillation\)",
    "alpha=-0.1": r"alpha=-0.1 is outside \[0, 1\]",
    "loss.temperature=0": r"loss.temperature=0.0 must be > 0 \(the paper uses 4\)",
    "loss.temperature=-4": r"loss.temperature=-4.0 must be > 0",
    "trainer.epochs=0": r"trainer.epochs=0 must be >= 1",
    "trainer.batch_size=0": r"trainer.batch_size=0 must be >= 1",
    "trainer.checkpoint_every=0": r"trainer.checkpoint_every=0 must be >= 1",
    # Checked after the data is loaded, but a finished job's dir is recognised first.
    "trainer.batch_size=5000": r"results.json holds the completed results of a different config. Use a new "
                               r"hydra.sweep.dir \(or hydra.run.dir\)",
}


@pytest.mark.parametrize("override", BAD_VALUES)
def test_bad_value_leaves_a_finished_job_untouched(override, completed_job, no_training):
    before = snapshot(completed_job)
    with pytest.raises(ValueError, match=BAD_VALUES[override]):
        train(compose_config([*STUDENT, override], out_dir=completed_job))
    assert snapshot(completed_job) == before


def teacher_file(path: Path, arch: str = "resnet8", num_classes: int = 10, kd_format: bool = True) -> Path:
    """A teacher checkpoint as kd writes it, or (kd_format=False) one from another code base that keeps its state
    dict under a key kd does not read."""
    state = getattr(models, arch)(num_classes=num_classes).state_dict()
    torch.save({"arch": arch, "num_classes": num_classes, "data": "digits", "state_dict": state,
                "test_top1": 50.0} if kd_format else {"weights": state, "epoch": 30}, path)
    return path


def truncated(path: Path) -> Path:
    teacher_file(path)
    path.write_bytes(path.read_bytes()[:4096])
    return path


def cifar_root(root: Path, corrupt: bool) -> Path:
    if corrupt:
        folder = root / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        for name in ("data_batch_1", "test_batch", "batches.meta"):
            (folder / name).write_bytes(b"not a pickle")
    return root


def cifar(root: Path, download: bool = False) -> list[str]:
    return ["data=cifar10", f"data.root={root}", f"data.download={download}", "trainer.epochs=1", "logger=none",
            "alpha=0"]


def with_teacher(path: Path, teacher: str = "resnet8") -> list[str]:
    return [*FAST, "alpha=0.5", f"teacher={teacher}", f"teacher.checkpoint={path}"]


def folder(root: Path, *overrides: str) -> list[str]:
    return ["data=folder", f"data.root={root}", "data.image_size=8", "trainer.epochs=1", "logger=none", "alpha=0",
            *overrides]


def pets(d: Path, **kwargs) -> Path:
    """A 3-class fixture folder: 8 train and 4 test images per class."""
    return write_folder(d / "pets", **kwargs)


def without(root: Path, path: str) -> Path:
    shutil.rmtree(root / path)
    return root


def with_class(root: Path, split: str, name: str, images: int) -> Path:
    (root / split / name).mkdir()
    for i in range(images):
        write_image(root / split / name / str(i), i)
    return root


def corrupt(root: Path) -> Path:
    (root / "train" / "apple" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n but not an image")
    return root


# name: inputs dir -> (overrides, error, message); instantiate wraps the data loader's DataUnavailableError
BAD_INPUTS: dict[str, Callable[[Path], tuple[list[str], type, str]]] = {
    "batch size larger than the dataset": lambda d: (
        [*STUDENT, "trainer.batch_size=5000"], ValueError,
        r"trainer.batch_size=5000 is larger than the 300 training images of digits; lower trainer.batch_size"),
    "data root missing": lambda d: (
        cifar(d / "no-such-dir"), InstantiationException,
        r"cifar10 is not under .*no-such-dir \(Dataset not found or corrupted.*\)\. Put a complete extracted "
        r"'cifar-10-batches-py' folder in .*no-such-dir, or set data.download=true"),
    "data root with corrupt files": lambda d: (
        cifar(cifar_root(d / "data", corrupt=True)), InstantiationException,
        r"cifar10 in .*data/cifar-10-batches-py is incomplete or corrupt"),
    "data root with corrupt files, offline download": lambda d: (
        cifar(cifar_root(d / "data", corrupt=True), download=True), InstantiationException,
        r"cifar10 in .*cifar-10-batches-py is incomplete or corrupt and could not be downloaded .* Fix: on a "
        r"machine with internet"),
    "folder root missing": lambda d: (
        folder(d / "nowhere"), InstantiationException,
        r"data.root=.*nowhere does not exist or is not a directory. Point data.root at a folder laid out as "
        r"ROOT/train/<class>/<image> and ROOT/test/<class>/<image>"),
    "folder without train/": lambda d: (
        folder(without(pets(d), "train")), InstantiationException,
        r"pets has no train/ folder. kd reads .*pets/train/<class>/<image> and .*pets/test/<class>/<image> .*add "
        r".*pets/train or point data.root at the folder that holds it"),
    "folder without test/": lambda d: (
        folder(without(pets(d), "test")), InstantiationException, r"pets has no test/ folder"),
    "folder with a class in test that train lacks": lambda d: (
        folder(with_class(pets(d), "test", "kiwi", 2)), InstantiationException,
        r"pets/test has class folder\(s\) kiwi that .*pets/train lacks: add their training images to train/, or "
        r"remove them from test/"),
    "folder with an empty class folder": lambda d: (
        folder(with_class(pets(d), "train", "kiwi", 0)), InstantiationException,
        r"pets/train/kiwi holds no image \(kd reads files ending in .jpg, .jpeg, .png.*\): add images or remove "
        r"the empty class folder"),
    "folder with a corrupt image": lambda d: (
        folder(corrupt(pets(d))), InstantiationException,
        r"cannot read image .*pets/train/apple/broken.png \(UnidentifiedImageError: .*\). Replace or delete the "
        r"file; nothing was cached"),
    "train_size larger than the split": lambda d: (
        folder(pets(d), "data.train_size=25"), InstantiationException,
        r"data.train_size=25 is larger than the 24 training images of pets; lower it, or set data.train_size=null"),
    "train_size smaller than the classes": lambda d: (
        folder(pets(d), "data.train_size=2"), InstantiationException,
        r"data.train_size=2 is smaller than the 3 classes of pets: a class-balanced subset needs at least one "
        r"image per class; raise it"),
    "val_size larger than the split": lambda d: (
        folder(pets(d), "data.val_size=22"), InstantiationException,
        r"data.val_size=22 must be between 3 \(one image per class of pets\) and 21 \(its 24 training images less "
        r"one per class to train on\)"),
    "val_size smaller than the classes": lambda d: (
        [*STUDENT, "data.val_size=5"], InstantiationException,
        r"data.val_size=5 must be between 10 \(one image per class of digits\) and 1427"),
    "train_size + val_size larger than the split": lambda d: (
        [*STUDENT, "data.train_size=300", "data.val_size=1200"], InstantiationException,
        r"data.train_size=300 \+ data.val_size=1200 = 1500 is more than the 1437 training images of digits; "
        r"lower one of them"),
    "train_size leaving fewer images out than classes": lambda d: (
        [*STUDENT, "data.train_size=1430"], InstantiationException,
        r"data.train_size=1430 leaves 7 of the 1437 training images of digits unused, fewer than its 10 classes, so "
        r"the subset cannot be class-balanced; set data.train_size to 1437 \(all\) or at most 1427"),
    "val_size with the folder's own val/": lambda d: (
        folder(pets(d, val=2), "data.val_size=3"), InstantiationException,
        r"data.val_size=3, but .*pets/val exists and is the validation split"),
    "teacher checkpoint truncated": lambda d: (
        with_teacher(truncated(d / "cut.pt")), CheckpointError,
        r"teacher checkpoint .*cut.pt is truncated or corrupt \(RuntimeError: PytorchStreamReader failed"),
    "teacher checkpoint of another architecture": lambda d: (
        with_teacher(teacher_file(d / "t.pt"), teacher="resnet14"), CheckpointError,
        r"holds resnet8 with 10 classes, but the config asks for resnet14 with 10 classes \(digits\). Point "
        r"teacher.checkpoint at"),
    "teacher checkpoint for another number of classes": lambda d: (
        with_teacher(teacher_file(d / "t.pt", num_classes=100)), CheckpointError,
        r"holds resnet8 with 100 classes, but the config asks for resnet8 with 10 classes"),
    "teacher checkpoint from another code base": lambda d: (
        with_teacher(teacher_file(d / "t.pt", kd_format=False)), CheckpointError,
        r"t.pt is not one kd wrote \(it lacks arch, num_classes, state_dict\), nor a state dict, bare or under one "
        r"of 'model', 'state_dict', 'net' .*its top-level keys are: weights, epoch"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_fails_before_training_and_keeps_the_checkpoint(case, interrupted_job, tmp_path, monkeypatch,
                                                                 no_training, isolated_kd_home):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.setattr(urllib.request.OpenerDirector, "open", offline)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    overrides, error, message = BAD_INPUTS[case](inputs)
    before = {"job": snapshot(interrupted_job), "inputs": snapshot(inputs)}
    with pytest.raises(error, match=message):
        train(compose_config(overrides, out_dir=interrupted_job))
    after = {"job": snapshot(interrupted_job), "inputs": snapshot(inputs)}
    written = after["job"].pop(RESULTS_FILE)  # the one new file: the failure, for the sweep's table
    assert written and after == before
    results = read_results(interrupted_job / RESULTS_FILE)
    assert results["status"] == "failed" and re.search(message, results["error"])
    # No decoded-image cache nor a temp file of one; a corrupt image is found while decoding, under the cache's
    # (empty) lock file, which stays as the teacher cache's do.
    assert not [p for p in isolated_kd_home.glob("images/*") if p.suffix != ".lock"]


def test_a_missing_teacher_checkpoint_is_refused_before_anything(completed_job, tmp_path, no_training):
    before = snapshot(completed_job)
    with pytest.raises(CheckpointError, match=r"teacher.checkpoint=.*nope.pt does not exist. Fix the path, or set "
                                              r"teacher.checkpoint=null"):
        train(compose_config(with_teacher(tmp_path / "nope.pt"), out_dir=completed_job))
    assert snapshot(completed_job) == before
    # an alpha=0 cell loads no teacher, so its teacher.checkpoint is not checked
    check_cell(compose_config([*STUDENT, f"teacher.checkpoint={tmp_path / 'nope.pt'}"], out_dir=tmp_path / "plain"))


def test_a_folder_without_data_root_is_refused_before_anything(completed_job, no_training):
    before = snapshot(completed_job)
    with pytest.raises(ValueError, match=r"data.root must be set: add data.root=... to the command \(data.root: the "
                                         r"folder holding train/<class>/<image> and test/<class>/<image>\)"):
        train(compose_config(["data=folder", *STUDENT[1:]], out_dir=completed_job))
    assert snapshot(completed_job) == before


def test_unwritable_out_dir_is_refused_before_anything(tmp_path, no_training):
    regular_file = tmp_path / "a-file"
    regular_file.write_text("keep me")
    with pytest.raises(PermissionError, match=r"output dir .*a-file/job is not writable \(Not a directory\). Set "
                                              r"hydra.run.dir / hydra.sweep.dir \(or out_dir\) to a writable place"):
        train(compose_config(STUDENT, out_dir=regular_file / "job"))
    with pytest.raises(PermissionError, match=r"output dir /proc/kd-job is not writable"):
        train(compose_config(STUDENT, out_dir="/proc/kd-job"))  # root may write anywhere, but not here
    assert regular_file.read_text() == "keep me"


def test_unwritable_run_and_sweep_dirs_are_refused_before_hydra_creates_them(tmp_path):
    regular_file = tmp_path / "a-file"
    regular_file.write_text("")
    assert unwritable_reason(regular_file / "x" / "y") == f"{regular_file} is a file"
    assert unwritable_reason(Path("/proc/kd/report/grid_table")) == "cannot create files in /proc: No such file or directory"
    assert unwritable_reason(tmp_path / "new" / "dir") is None and not (tmp_path / "new").exists()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("config", overrides=[f"hydra.sweep.dir={regular_file}/sweep"], return_hydra_config=True)
    with pytest.raises(SystemExit, match=rf"hydra.sweep.dir={regular_file}/sweep is not writable \({regular_file} "
                                         r"is a file\). Set hydra.sweep.dir to a writable dir"):
        CheckOutputDir().on_multirun_start(config=cfg)


def test_disk_full_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch, one_torch_thread):
    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full")
    job, args = tmp_path / "job", [*STUDENT, "trainer.epochs=2"]
    save_atomic = kd.training.students.save_atomic

    def disk_full_after_first_save(obj, path: Path) -> None:
        save_atomic(obj, path)
        # The next save's temp file is /dev/full: the kernel answers its writes with a real ENOSPC.
        path.with_name(path.name + ".tmp").symlink_to("/dev/full")

    monkeypatch.setattr(kd.training.students, "save_atomic", disk_full_after_first_save)
    with pytest.raises(CheckpointError, match=r"could not write .*job/checkpoint.pt \(OSError: \[Errno 28\] No space "
                                              r"left on device\); the previous checkpoint.pt, if any, is intact"):
        train(compose_config(args, out_dir=job))
    assert load_checkpoint(job / "checkpoint.pt", "checkpoint", "")["epoch"] == 1
    assert sorted(p.name for p in job.iterdir() if not p.name.startswith(".kd.lock")) == ["checkpoint.pt",
                                                                                           RESULTS_FILE]  # no temp file
    assert read_results(job / RESULTS_FILE)["status"] == "failed"

    monkeypatch.setattr(kd.training.students, "save_atomic", save_atomic)  # space freed: the same command resumes
    resumed = train(compose_config(args, out_dir=job))
    assert metrics(resumed) == metrics(train(compose_config(args, out_dir=tmp_path / "uninterrupted")))


def kd_files(job: Path) -> dict:
    """The job's own files; Hydra rewrites .hydra/ and appends to train.log on every launch."""
    return {k: v for k, v in snapshot(job).items() if not k.startswith(".hydra") and not k.endswith(".log")}


def test_cli_bad_value_in_a_finished_job_dir(completed_job, tmp_path):
    before = kd_files(completed_job)
    proc = run_cli([*STUDENT, "alpha=1.5", f"hydra.run.dir={completed_job}"], cwd=tmp_path, env=ONE_THREAD)
    assert proc.returncode == 1
    assert "ValueError: alpha=1.5 is outside [0, 1]; set alpha=0 (plain CE) .. alpha=1 (pure distillation)" in last_lines(
        proc.stderr), proc.stderr
    assert kd_files(completed_job) == before


COMPOSITION_ERRORS = {
    "model=resnet9": "Error: model=resnet9: no such option (did you mean resnet8?); model takes imagenet_resnet50, mobilenetv1,",
    "trainer.epochs=ten": "Value 'ten' of type 'str' could not be converted to Integer\n    full_key: trainer.epochs",
}


@pytest.mark.parametrize("override", COMPOSITION_ERRORS)
def test_cli_composition_error_is_readable_and_creates_no_dir(override, tmp_path):
    proc = run_cli([*STUDENT, override, f"hydra.run.dir={tmp_path / 'job'}"], cwd=tmp_path, env=ONE_THREAD)
    assert proc.returncode == 1 and COMPOSITION_ERRORS[override] in proc.stderr, proc.stderr
    assert not (tmp_path / "job").exists()


def test_cli_unwritable_run_dir(tmp_path):
    regular_file = tmp_path / "a-file"
    regular_file.write_text("")
    proc = run_cli([*STUDENT, f"hydra.run.dir={regular_file}/job"], cwd=tmp_path, env=ONE_THREAD)
    assert proc.returncode == 1
    assert last_lines(proc.stderr, 1) == (f"Error: hydra.run.dir={regular_file}/job is not writable ({regular_file} "
                                          f"is a file). Set hydra.run.dir to a writable dir."), proc.stderr


def test_cli_nonfinite_loss_stops_naming_epoch_and_step(tmp_path):
    job = tmp_path / "job"
    proc = run_cli([*STUDENT, "optim.optimizer.lr=1e5", f"hydra.run.dir={job}"], cwd=tmp_path, env=ONE_THREAD)
    assert proc.returncode == 1
    assert re.search(r"NonFiniteLossError: loss is NaN/inf at epoch 1 step \d+; training stopped \(the last good "
                     r"checkpoint, if any, is kept\). Lower optim.optimizer.lr", last_lines(proc.stderr)), proc.stderr
    assert read_results(job / RESULTS_FILE)["status"] == "failed"
    assert not (job / "checkpoint.pt").exists()  # the bad epoch is never saved


@pytest.mark.parametrize("override, message", [
    ("+trainer.epocs=3", "trainer.epocs is not a setting kd knows (did you mean trainer.epochs?)"),
    ("+teacher.epoch=3", "teacher.epoch is not a setting kd knows (did you mean teacher.epochs?)"),
    ("+teacher.optim.schedular=1", "teacher.optim.schedular is not a setting kd knows (did you mean "
                                   "teacher.optim.scheduler?)"),
    ("+seeds=3", "seeds is not a setting kd knows (did you mean seed?)"),
])
def test_a_key_added_with_plus_is_checked_like_any_other(override, message, completed_job, tmp_path):
    """Hydra's `+` adds a key past the struct check; kd checks the composed config against its schemas."""
    before = kd_files(completed_job)
    proc = run_cli([*STUDENT, override, f"hydra.run.dir={completed_job}"], cwd=tmp_path, env=ONE_THREAD)
    assert proc.returncode == 1 and f"UnknownKeyError: {message}" in proc.stderr, proc.stderr[-2000:]
    assert kd_files(completed_job) == before
