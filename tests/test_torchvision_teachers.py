"""torchvision's published weights as the teacher: `teacher.weights=IMAGENET1K_V1` (downloaded by torch.hub, a clear
error where there is no network) or the file itself, `teacher.checkpoint=.../resnet34-b627a593.pth`, whose hash
kd checks as torch.hub does. The files here are written in torchvision's format (a state dict saved with
torch.save under a name carrying its sha256 prefix); the real ones are 45-100 MB downloads."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torchvision.models as tv

from conftest import FAST, REPO, compose_config, run_cli
from kd.checkpoint import CheckpointError
from kd.training.teacher import check_given_checkpoint, load_teacher
from kd.training.torchvision_teachers import describe, weights_file

UNREACHABLE = "http://127.0.0.1:9"  # the discard port: a proxy that refuses every connection, as offline


def torchvision_file(folder: Path, prefix: str | None = None, num_classes: int = 10) -> tuple[Path, dict]:
    """torchvision's ResNet18 saved as torchvision publishes it: `resnet18-<sha256 prefix>.pth` (the real prefix,
    or `prefix`)."""
    state = tv.resnet18(num_classes=num_classes).state_dict()
    staged = folder / "staged.pth"
    torch.save(state, staged)
    digest = hashlib.sha256(staged.read_bytes()).hexdigest()
    return staged.rename(folder / f"resnet18-{prefix or digest[:8]}.pth"), state


def load(path: Path, *overrides: str):
    cfg = compose_config(["teacher=resnet18", f"teacher.checkpoint={path}", *overrides], out_dir="unused")
    return load_teacher(path, cfg, SimpleNamespace(num_classes=10, name="digits"))


def test_a_file_named_with_its_sha256_prefix_loads_checked(tmp_path):
    path, state = torchvision_file(tmp_path)
    model, fmt = load(path)
    assert fmt == f"bare state dict, sha256 {path.stem.split('-')[1]} checked"
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_a_file_whose_hash_is_not_its_names_is_refused(tmp_path):
    path, _ = torchvision_file(tmp_path, prefix="b627a593")
    with pytest.raises(CheckpointError, match=r"its sha256 begins [0-9a-f]{8}, but its name says b627a593"):
        load(path)


def test_teacher_weights_reads_torchvisions_file_from_torch_hubs_cache_and_checks_it(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    hub = tmp_path / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    torchvision_file(hub, num_classes=1000)[0].rename(hub / "resnet18-f37072fd.pth")  # not the published bytes
    assert weights_file("resnet18", "IMAGENET1K_V1") == hub / "resnet18-f37072fd.pth"
    with pytest.raises(CheckpointError, match="but its name says f37072fd"):
        load(hub / "resnet18-f37072fd.pth")
    assert describe(hub / "resnet34-b627a593.pth", "bare state dict", "b627a593") == (
        "torchvision ResNet34_Weights.IMAGENET1K_V1, sha256 b627a593 checked")  # as provenance records the real one


@pytest.mark.parametrize("overrides, message", [
    (["teacher.weights=IMAGENET1K_V9"], "none of torchvision's ResNet18_Weights: IMAGENET1K_V1, DEFAULT"),
    (["teacher=mobilenetv1", "teacher.weights=IMAGENET1K_V1"], "not for teacher=mobilenetv1"),
    (["teacher.weights=IMAGENET1K_V1", "teacher.checkpoint=x.pth"], "set one of them to null"),
])
def test_bad_teacher_weights_are_refused_before_any_work(overrides, message):
    cfg = compose_config(["teacher=resnet18", "alpha=0.5", *overrides], out_dir="unused")
    with pytest.raises(ValueError, match=message):
        check_given_checkpoint(cfg)


def test_offline_teacher_weights_fail_saying_where_to_put_the_file(tmp_path):
    """In a process of its own: urllib keeps the first proxy settings it reads for the rest of a process."""
    env = {**os.environ, "TORCH_HOME": str(tmp_path), "https_proxy": UNREACHABLE, "HTTPS_PROXY": UNREACHABLE,
           "no_proxy": "", "NO_PROXY": "", "PYTHONPATH": str(REPO)}
    run = subprocess.run([sys.executable, "-c", "from kd.training.torchvision_teachers import weights_file; "
                          "weights_file('resnet18', 'IMAGENET1K_V1')"], env=env, capture_output=True, text=True)
    assert run.returncode != 0
    want = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert "teacher.weights=IMAGENET1K_V1: torchvision's ResNet18_Weights.IMAGENET1K_V1 could not be downloaded from " \
           "https://download.pytorch.org/models/resnet18-f37072fd.pth" in run.stderr
    assert f"put it at {want}" in run.stderr and "teacher.checkpoint=<its path>" in run.stderr
    assert not want.exists()


@pytest.mark.slow
def test_a_run_distils_from_torchvisions_file_and_records_its_checked_hash(tmp_path, isolated_kd_home):
    path, _ = torchvision_file(tmp_path)
    run = run_cli([*FAST, "alpha=0.5", "teacher=resnet18", f"teacher.checkpoint={path}",
                   f"hydra.run.dir={tmp_path / 's'}"], cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    results = json.loads((tmp_path / "s" / "results.json").read_text())
    assert results["status"] == "completed"
    assert results["teacher_format"] == f"bare state dict, sha256 {path.stem.split('-')[1]} checked"
    assert results["teacher_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
