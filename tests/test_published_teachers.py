"""Teachers from other code bases (RepDistiller/mdistiller's published checkpoints, written by PyTorch 0.4.0;
state dicts bare or wrapped as training scripts save them) load into kd's networks and compute the same logits.
Their networks are the facts recorded from their code (tests/repdistiller.py): a file holds `weights(name)`
under their names, and kd's network must give the logits their network gave on those weights."""
from __future__ import annotations

import json
import logging
import shutil
from collections import OrderedDict
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Optional

import pytest
import torch
from torch import nn

from conftest import CONF_DIR, FAST, compose_config, run_cli
from kd import published_teachers
from kd.checkpoint import CheckpointError
from kd.training.teacher import load_teacher
from repdistiller import assert_their_logits, holding, shapes, weights

# How each wrapper a training script may save from prefixes the state dict's keys.
WRAPS: dict[str, Callable[[nn.Module], nn.Module]] = {
    "none": lambda net: net,
    "DataParallel": nn.DataParallel,  # "module.", as DDP
    "torch.compile": torch.compile,  # "_orig_mod." (nothing is compiled until it runs, and it never runs here)
    "DataParallel(torch.compile)": lambda net: nn.DataParallel(torch.compile(net)),
}


def pytorch_0_4(state: OrderedDict) -> OrderedDict:
    """`state` as PyTorch 0.4.0 (RepDistiller's README names it) wrote it: no BatchNorm num_batches_tracked (new
    in 0.4.1) and every module's metadata at version 1 (such a file's metadata: pytorch/pytorch#8481)."""
    old = OrderedDict((k, v) for k, v in state.items() if not k.endswith(".num_batches_tracked"))
    old._metadata = OrderedDict((name, {**meta, "version": 1}) for name, meta in state._metadata.items())
    return old


def state_of(state: dict[str, torch.Tensor], wrap: str = "none", counters: bool = True) -> OrderedDict:
    """`state` as a network holding it saves it inside the wrapper `wrap`; without `counters`, as PyTorch 0.4.0
    saved it. The network stays on the CPU (DataParallel moves it to a GPU where there is one)."""
    net = holding(state)
    saved = WRAPS[wrap](net).state_dict()
    net.cpu()
    return saved if counters else pytorch_0_4(saved)


def save(state: dict[str, torch.Tensor], path: Path, key: Optional[str] = "model", legacy: bool = False) -> Path:
    """`state` bare (key None) or under `key` beside RepDistiller's other entries; `legacy`: PyTorch's
    serialization before 1.6 (not a zip), in which RepDistiller's files are written."""
    ckpt = state if key is None else {
        "epoch": 240, key: state, "best_acc": torch.tensor(79.42),
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.0005, "momentum": 0.9}]}}
    torch.save(ckpt, path, _use_new_zipfile_serialization=not legacy)
    return path


def save_theirs(state: dict[str, torch.Tensor], path: Path, data_parallel: bool = False, legacy: bool = False,
                counters: bool = True) -> Path:
    return save(state_of(state, "DataParallel" if data_parallel else "none", counters), path, legacy=legacy)


def assert_same_network(model: nn.Module, name: str) -> None:
    """kd's network holds their every tensor of `weights(name)` under kd's names, BatchNorm's counters as PyTorch
    fills them into a network from a file without them (the network's own: 0 in a new one, as `weights` has
    them), and computes their logits (which shows that the names were mapped right)."""
    want, got = published_teachers.to_kd(weights(name)), model.state_dict()
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert_their_logits(model, name)


def load(path: Path, arch: str, num_classes: int = 100):
    cfg = compose_config([f"teacher={arch}"], out_dir="unused")
    return load_teacher(path, cfg, SimpleNamespace(num_classes=num_classes, name=f"cifar{num_classes}"))


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("data_parallel", [False, True])
@pytest.mark.parametrize("arch", ["resnet8", "resnet20", "resnet8x4", "resnet32x4"])
def test_their_checkpoint_gives_their_logits_in_kds_network(arch, data_parallel, legacy, tmp_path):
    model, fmt = load(save_theirs(weights(arch), tmp_path / "ckpt_epoch_240.pth", data_parallel, legacy), arch)
    assert fmt == "RepDistiller/mdistiller"
    assert_their_logits(model, arch)


def truncated(d: Path) -> Path:
    full = save_theirs(weights("resnet8"), d / "full.pth")
    (d / "t.pth").write_bytes(full.read_bytes()[:5000])
    return d / "t.pth"


def holding_code(d: Path) -> Path:
    torch.save({"model": SimpleNamespace(x=1)}, d / "t.pth")  # unpickling it would build an arbitrary object
    return d / "t.pth"


def unknown_layout(d: Path) -> Path:
    torch.save({"weights": state_of(weights("resnet8")), "acc": 1.0}, d / "t.pth")
    return d / "t.pth"


def two_state_dicts(d: Path) -> Path:
    torch.save({"model": state_of(weights("resnet8")), "net": state_of(weights("resnet20"))}, d / "t.pth")
    return d / "t.pth"


BAD = {
    "another architecture": (lambda d: save_theirs(weights("resnet20"), d / "t.pth"), "resnet8", 100,
                             r"holds resnet20 with 100 classes, but the config asks for resnet8 with 100 classes"),
    "another class count": (lambda d: save_theirs(weights("resnet8@10"), d / "t.pth"), "resnet8", 100,
                            r"holds resnet8 with 10 classes, but the config asks for resnet8 with 100"),
    "a truncated file": (truncated, "resnet8", 100, r"is truncated or corrupt"),
    "a pickle holding code": (holding_code, "resnet8", 100, r"holds a pickled Python object \(types.SimpleNamespace"),
    "an unknown layout": (unknown_layout, "resnet8", 100,
                          r"is not one kd wrote .*nor a state dict, bare or under one of 'model', 'state_dict', "
                          r"'net' .*its top-level keys are: weights, acc. Save the network's state dict"),
    "two state dicts": (two_state_dicts, "resnet8", 100,
                        r"holds a state dict under each of model, net; kd cannot tell which is the teacher"),
}


@pytest.mark.parametrize("case", BAD)
def test_a_bad_published_checkpoint_is_a_clear_error(case, tmp_path):
    make, arch, classes, message = BAD[case]
    with pytest.raises(CheckpointError, match=message):
        load(make(tmp_path), arch, classes)


def to_theirs(kd_state: dict[str, torch.Tensor], blocks: int) -> dict[str, torch.Tensor]:
    """kd's names back to RepDistiller's (the inverse of kd.training.published_teachers.to_kd), for a real run."""
    out = {}
    for key, value in kd_state.items():
        if key.startswith("layers."):
            _, index, rest = key.split(".", 2)
            stage, i = divmod(int(index), blocks)
            key = f"layer{stage + 1}.{i}.{rest.replace('shortcut.', 'downsample.')}"
        out[key] = value
    return out


@pytest.mark.slow
def test_a_run_distils_from_a_pytorch_0_4_file_of_their_network_and_records_it(tmp_path, isolated_kd_home):
    """A real cell from a file as RepDistiller's are: their network, DataParallel's "module.", PyTorch 0.4.0's
    serialization, no num_batches_tracked."""
    teacher_run = run_cli([*FAST, "stage=teacher", "teacher=resnet8", "teacher.epochs=15", "teacher.min_top1=50",
                           f"hydra.run.dir={tmp_path / 't'}"], cwd=tmp_path)
    assert teacher_run.returncode == 0, teacher_run.stderr[-2000:]
    (cached,) = (isolated_kd_home / "teachers").glob("*.pt")
    state = to_theirs(torch.load(cached, weights_only=True)["state_dict"], 1)
    assert {key: tuple(value.shape) for key, value in state.items()} == shapes("resnet8@10")  # their network's
    published = save_theirs(state, tmp_path / "ckpt_epoch_240.pth", data_parallel=True, legacy=True, counters=False)
    run = run_cli([*FAST, "alpha=0.5", "teacher=resnet8", f"teacher.checkpoint={published}",
                   f"hydra.run.dir={tmp_path / 's'}"], cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "(RepDistiller/mdistiller format, prefixes module. stripped) holds resnet8 with 10 classes" in run.stdout
    assert "format, sha256" in run.stdout and "RepDistiller/mdistiller format" in run.stdout
    results = json.loads((tmp_path / "s" / "results.json").read_text())
    teacher = json.loads((tmp_path / "t" / "results.json").read_text())
    assert results["status"] == "completed" and len(results["history"]) == 1
    assert results["teacher_top1"] == teacher["teacher_top1"] > 50  # the same network, measured again
    assert results["teacher_format"] == "RepDistiller/mdistiller" and len(results["teacher_sha256"]) == 64


# ---- Every network of the benchmark's teachers (cifar_teachers.tar), and its students, in their layout ----

PUBLISHED_TEACHERS = ["wrn_40_2", "vgg13", "resnet50"]  # with resnet56, resnet110, resnet32x4 above
PAIR_STUDENTS = ["wrn_16_2", "wrn_40_1", "vgg8", "mobilenetv2", "shufflev1", "shufflev2"]


@pytest.mark.parametrize("data_parallel", [False, True])
@pytest.mark.parametrize("arch", PUBLISHED_TEACHERS + PAIR_STUDENTS)
def test_their_checkpoint_of_every_benchmark_network_gives_their_logits(arch, data_parallel, tmp_path):
    model, fmt = load(save_theirs(weights(arch), tmp_path / "ckpt_epoch_240.pth", data_parallel), arch)
    assert fmt == "RepDistiller/mdistiller"
    assert_their_logits(model, arch)


def test_a_published_checkpoint_of_another_family_is_refused_naming_what_it_holds(tmp_path):
    path = save_theirs(weights("vgg8"), tmp_path / "ckpt_epoch_240.pth", data_parallel=True)
    with pytest.raises(CheckpointError, match=r"holds vgg8 with 100 classes, but the config asks for wrn_40_2"):
        load(path, "wrn_40_2")


@pytest.mark.parametrize("key", [None, "model"])
def test_a_state_dict_of_no_kd_network_is_refused_with_its_shape(key, tmp_path):
    state = {"features.0.weight": torch.zeros(8, 3, 3, 3), "head.weight": torch.zeros(10, 8)}
    path = save(state, tmp_path / "x.pth", key)
    with pytest.raises(CheckpointError, match=r"holds none of kd's networks .*: 2 tensors, 10 classes, starting "
                                              r"features.0.weight, head.weight"):
        load(path, "vgg13", 10)


# ---- Files as PyTorch 0.4.0 wrote them, and state dicts saved bare or wrapped, as most training scripts do ----

BENCHMARK_TEACHERS = [  # conf/teacher's, published in cifar_teachers.tar
    "resnet56", "resnet110", "resnet32x4", "wrn_40_2", "vgg13", "resnet50"]


@pytest.mark.parametrize("arch", BENCHMARK_TEACHERS)
def test_every_benchmark_teacher_written_by_pytorch_0_4_loads_as_pytorch_loads_it(arch, tmp_path):
    path = save(state_of(weights(arch), counters=False), tmp_path / "ckpt_epoch_240.pth", legacy=True)
    model, fmt = load(path, arch)
    assert fmt == "RepDistiller/mdistiller"
    assert_same_network(model, arch)


@pytest.mark.parametrize("wrap", WRAPS)
@pytest.mark.parametrize("key", [None, *published_teachers.STATE_KEYS])
def test_a_state_dict_bare_or_wrapped_loads_as_pytorch_loads_it(key, wrap, tmp_path, caplog):
    path = save(state_of(weights("resnet8@10"), wrap, counters=False), tmp_path / "t.pth", key, legacy=True)
    with caplog.at_level(logging.INFO, logger=published_teachers.__name__):
        model, fmt = load(path, "resnet8", 10)
    assert fmt == (published_teachers.BARE if key is None else published_teachers.STATE_KEYS[key])
    assert f"({fmt} format" in caplog.text and ") holds resnet8 with 10 classes" in caplog.text
    assert ("stripped" in caplog.text) == (wrap != "none")  # the prefixes it took off, named
    assert_same_network(model, "resnet8@10")


def test_a_file_that_fits_two_networks_is_refused_naming_both(tmp_path):
    """kd has no two networks of the same shapes today; a second config of resnet8 makes a pair."""
    configs = tmp_path / "model"
    configs.mkdir()
    for name in ("resnet8", "resnet8_again"):
        shutil.copy(CONF_DIR / "model" / "resnet8.yaml", configs / f"{name}.yaml")
    ckpt = {"model": state_of(weights("resnet8@10"))}
    with pytest.raises(CheckpointError, match=r"t.pth \(RepDistiller/mdistiller format\) fits resnet8 "
                                              r"\(.*resnet8.yaml\) and resnet8 \(.*resnet8_again.yaml\): their "
                                              r"networks have the same shapes, so kd cannot tell .* Save it in kd's "
                                              r"own format"):
        published_teachers.read(ckpt, "teacher checkpoint t.pth", "", configs)
