"""RepDistiller/mdistiller teacher checkpoints load into kd's networks and compute the same logits."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import FAST, compose_config, run_cli
from kd.checkpoint import CheckpointError
from kd.training.teacher import load_teacher
from reliability import randomised

NARROW, WIDE = (16, 16, 32, 64), (32, 64, 128, 256)


class TheirBlock(nn.Module):
    """RepDistiller's BasicBlock, module names and forward as in their models/resnet.py."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            residual = self.downsample(x)
        out += residual
        return F.relu(out)


class TheirResNet(nn.Module):
    """RepDistiller's CIFAR ResNet (basic blocks), as published."""

    def __init__(self, depth: int, filters: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        n = (depth - 2) // 6
        self.inplanes = filters[0]
        self.conv1 = nn.Conv2d(3, filters[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(filters[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(filters[1], n)
        self.layer2 = self._make_layer(filters[2], n, stride=2)
        self.layer3 = self._make_layer(filters[3], n, stride=2)
        self.avgpool = nn.AvgPool2d(8)
        self.fc = nn.Linear(filters[3], num_classes)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
        layers = [TheirBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [TheirBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).view(x.size(0), -1))


def theirs(arch: str, num_classes: int = 100) -> TheirResNet:
    """Their network with random weights and BatchNorm statistics, so that a wrong mapping shows."""
    torch.manual_seed(0)
    depth, filters = int(arch.removeprefix("resnet").removesuffix("x4")), WIDE if arch.endswith("x4") else NARROW
    return randomised(TheirResNet(depth, filters, num_classes))


def save_theirs(net: nn.Module, path: Path, data_parallel: bool = False) -> Path:
    state = {("module." if data_parallel else "") + k: v for k, v in net.state_dict().items()}
    torch.save({"epoch": 240, "model": state, "best_acc": torch.tensor(79.42),
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.0005, "momentum": 0.9}]}}, path)
    return path


def load(path: Path, arch: str, num_classes: int = 100):
    cfg = compose_config([f"teacher={arch}"], out_dir="unused")
    return load_teacher(path, cfg, SimpleNamespace(num_classes=num_classes, name=f"cifar{num_classes}"))


@pytest.mark.parametrize("data_parallel", [False, True])
@pytest.mark.parametrize("arch", ["resnet8", "resnet20", "resnet8x4", "resnet32x4"])
def test_their_checkpoint_gives_their_logits_in_kds_network(arch, data_parallel, tmp_path):
    net = theirs(arch)
    model, fmt = load(save_theirs(net, tmp_path / "ckpt_epoch_240.pth", data_parallel), arch)
    assert fmt == "RepDistiller/mdistiller"
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        want, got = net(x), model.eval()(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)  # AvgPool2d(8) vs global mean: same sum, maybe another order
    assert want.std() > 0.1  # not a vacuous comparison


def truncated(d: Path) -> Path:
    full = save_theirs(theirs("resnet8"), d / "full.pth")
    (d / "t.pth").write_bytes(full.read_bytes()[:5000])
    return d / "t.pth"


def holding_code(d: Path) -> Path:
    torch.save({"model": SimpleNamespace(x=1)}, d / "t.pth")  # unpickling it would build an arbitrary object
    return d / "t.pth"


def unknown_layout(d: Path) -> Path:
    torch.save({"net": {"w": torch.zeros(1)}, "acc": 1.0}, d / "t.pth")
    return d / "t.pth"


BAD = {
    "another architecture": (lambda d: save_theirs(theirs("resnet20"), d / "t.pth"), "resnet8", 100,
                             r"holds resnet20 with 100 classes, but the config asks for resnet8 with 100 classes"),
    "another class count": (lambda d: save_theirs(theirs("resnet8", 10), d / "t.pth"), "resnet8", 100,
                            r"holds resnet8 with 10 classes, but the config asks for resnet8 with 100"),
    "a truncated file": (truncated, "resnet8", 100, r"is truncated or corrupt"),
    "a pickle holding code": (holding_code, "resnet8", 100, r"holds a pickled Python object \(types.SimpleNamespace"),
    "an unknown layout": (unknown_layout, "resnet8", 100,
                          r"nor a RepDistiller/mdistiller checkpoint .*its top-level keys are: net, acc"),
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


def test_a_run_distils_from_a_published_format_teacher_and_records_it(tmp_path, isolated_kd_home):
    teacher_run = run_cli([*FAST, "stage=teacher", "teacher=resnet8", "teacher.epochs=15", "teacher.min_top1=50",
                           f"hydra.run.dir={tmp_path / 't'}"], cwd=tmp_path)
    assert teacher_run.returncode == 0, teacher_run.stderr[-2000:]
    (cached,) = (isolated_kd_home / "teachers").glob("*.pt")
    kd_ckpt = torch.load(cached, weights_only=True)
    published = tmp_path / "ckpt_epoch_240.pth"
    torch.save({"epoch": 240, "model": {"module." + k: v for k, v in to_theirs(kd_ckpt["state_dict"], 1).items()}},
               published)
    run = run_cli([*FAST, "alpha=0.5", "teacher=resnet8", f"teacher.checkpoint={published}",
                   f"hydra.run.dir={tmp_path / 's'}"], cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "format, sha256" in run.stdout and "RepDistiller/mdistiller format" in run.stdout
    results = json.loads((tmp_path / "s" / "results.json").read_text())
    teacher = json.loads((tmp_path / "t" / "results.json").read_text())
    assert results["teacher_top1"] == teacher["teacher_top1"] > 50  # the same network, measured again
    assert results["teacher_format"] == "RepDistiller/mdistiller" and len(results["teacher_sha256"]) == 64


# ---- Every network of the benchmark's teachers (cifar_teachers.tar), and its students, in their layout ----

def their_network(arch: str, num_classes: int = 100) -> nn.Module:
    """Their module tree (tests/theirs_*.py, transcribed from RepDistiller) with random weights and BN statistics."""
    from theirs_mobilenet_shufflenet import THEIRS as MOBILE
    from theirs_wrn_vgg_resnet50 import THEIRS as OTHERS

    torch.manual_seed(0)
    return randomised({**OTHERS, **MOBILE}[arch](num_classes))


PUBLISHED_TEACHERS = ["wrn_40_2", "vgg13", "resnet50"]  # with resnet56, resnet110, resnet32x4 above
PAIR_STUDENTS = ["wrn_16_2", "wrn_40_1", "vgg8", "mobilenetv2", "shufflev1", "shufflev2"]


@pytest.mark.parametrize("data_parallel", [False, True])
@pytest.mark.parametrize("arch", PUBLISHED_TEACHERS + PAIR_STUDENTS)
def test_their_checkpoint_of_every_benchmark_network_gives_their_logits(arch, data_parallel, tmp_path):
    net = their_network(arch)
    model, fmt = load(save_theirs(net, tmp_path / "ckpt_epoch_240.pth", data_parallel), arch)
    assert fmt == "RepDistiller/mdistiller"
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():  # float64: with random BN, WRN-40's logits reach ~800, where float32 summation order shows
        want, got = net.double()(x), model.double().eval()(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert want.std() > 0.1


def test_a_published_checkpoint_of_another_family_is_refused_naming_what_it_holds(tmp_path):
    path = save_theirs(their_network("vgg8"), tmp_path / "ckpt_epoch_240.pth", data_parallel=True)
    with pytest.raises(CheckpointError, match=r"holds vgg8 with 100 classes, but the config asks for wrn_40_2"):
        load(path, "wrn_40_2")


def test_a_state_dict_of_no_kd_network_is_refused_with_its_shape(tmp_path):
    torch.save({"epoch": 1, "model": {"features.0.weight": torch.zeros(8, 3, 3, 3), "head.weight": torch.zeros(10, 8)}},
               tmp_path / "x.pth")
    with pytest.raises(CheckpointError, match=r"holds none of kd's networks .*2 tensors, 10 classes"):
        load(tmp_path / "x.pth", "vgg13", 10)
