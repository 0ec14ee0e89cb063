"""The benchmark's teacher-student pairs as a grid axis: every pair composes, and a digits grid over two pairs of
different families trains packed and is reported one table per pair, never averaged across pairs. The ImageNet
pairs are mdistiller's ImageNet recipe, and their KD step is mdistiller's in float64."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision.models as tv
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import CONF_DIR, FAST, compose_config, run_cli
from kd.distillers.base import Outputs
from kd.report.cli import main as report_main
from kd.runs.results import collect_sweep
from kd.training.teacher import arch_name
from reliability import ONE_THREAD

PAIRS = sorted(p.stem for p in (CONF_DIR / "pair").glob("*.yaml") if not p.stem.startswith("imagenet-"))  # CIFAR's
LOW_LR = ("mobilenetv2", "shufflev1", "shufflev2")  # the benchmark's lr 0.01 students


def test_the_eleven_pairs_are_there():
    assert len(PAIRS) == 11


@pytest.mark.parametrize("pair", PAIRS)
def test_a_pair_sets_teacher_student_and_the_benchmarks_lr(pair):
    cfg = compose_config([f"pair={pair}"], out_dir="unused")
    teacher, student = pair.split("-")
    assert arch_name(cfg.teacher.arch).replace("_", "") == teacher.replace("_", "")
    assert arch_name(cfg.model).replace("_", "") == student.replace("_", "")
    assert cfg.optim.optimizer.lr == (0.01 if student in LOW_LR else 0.05)
    assert cfg.teacher.optim.optimizer.lr == 0.05  # the teacher's own recipe is untouched


@pytest.mark.slow
def test_a_digits_grid_over_two_pairs_of_different_families_reports_one_table_per_pair(tmp_path, capsys):
    out = tmp_path / "pairs"
    done = run_cli(["-m", *FAST, "pair=vgg13-vgg8,wrn40_2-wrn16_2", "alpha=0,0.5", "aug=none,fc",
                    f"hydra.sweep.dir={out}"], cwd=tmp_path, env=ONE_THREAD)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "in 4 pack(s)" in done.stdout + done.stderr  # per pair and aug: the alphas of each train together
    assert "model vgg8: 3.92M params" in done.stdout + done.stderr
    results = collect_sweep(out)
    assert {(r["teacher"], r["model"]) for r in results} == {("vgg13", "vgg8"), ("wrn_40_2", "wrn_16_2")}
    assert all(r["status"] == "completed" for r in results)
    assert report_main([str(out)]) == 0
    printed = capsys.readouterr().out
    assert "pair=vgg13-vgg8:\n" in printed and "pair=wrn40_2-wrn16_2:\n" in printed and "(n=2)" not in printed
    assert (out / "gains.csv").read_text().startswith("pair,quantity,aug,alpha")
    assert (out / "top1_by_alpha_pair-vgg13-vgg8.png").is_file()


# mdistiller's ImageNet recipes, configs/imagenet/<pair>/{kd,dkd}.yaml at megvii-research/mdistiller a08d46f (read
# 2026-12-07): SOLVER (global BATCH_SIZE, EPOCHS, LR, LR_DECAY_STAGES, LR_DECAY_RATE, WEIGHT_DECAY, MOMENTUM), KD
# (TEMPERATURE, CE_WEIGHT, KD_WEIGHT) and DKD (CE_WEIGHT, ALPHA: the default of mdistiller/engine/cfg.py, BETA, T,
# WARMUP); their teacher is torchvision's pretrained network (tools/train.py: pretrained=True).
SOLVER = {"batch": 512, "epochs": 100, "lr": 0.2, "milestones": [30, 60, 90], "gamma": 0.1, "weight_decay": 1e-4,
          "momentum": 0.9}
IMAGENET_PAIRS = {"imagenet-r34-r18": ("r34_r18", "resnet34", "resnet18", {"beta": 0.5}),
                  "imagenet-r50-mv1": ("r50_mv1", "imagenet_resnet50", "mobilenetv1", {"beta": 2.0})}
KD = {"temperature": 1.0, "ce_weight": 0.5, "kd_weight": 0.5}
DKD = {"ce_weight": 1.0, "alpha": 1.0, "temperature": 1.0, "warmup": 1}
# conf/data/imagenet.yaml comes with the streaming source; until then the pairs compose on a folder.
ON_A_FOLDER = [] if (CONF_DIR / "data" / "imagenet.yaml").is_file() else ["data=folder", "data.root=unused"]


def test_the_two_imagenet_pairs_are_there():
    assert sorted(p.stem for p in (CONF_DIR / "pair").glob("imagenet-*.yaml")) == sorted(IMAGENET_PAIRS)


@pytest.mark.parametrize("pair", sorted(IMAGENET_PAIRS))
def test_an_imagenet_pair_is_mdistillers_recipe_with_torchvisions_teacher(pair):
    source, teacher, student, _ = IMAGENET_PAIRS[pair]
    path = CONF_DIR / "pair" / f"{pair}.yaml"
    assert f"mdistiller's configs/imagenet/{source}/kd.yaml" in path.read_text()
    assert {"override /data": "imagenet"} in OmegaConf.to_container(OmegaConf.load(path).defaults)
    cfg = compose_config([f"pair={pair}", *ON_A_FOLDER], out_dir="unused")
    assert (arch_name(cfg.teacher.arch), arch_name(cfg.model)) == (teacher, student)
    assert cfg.teacher.weights == "IMAGENET1K_V1"
    for optim, trainer in ((cfg.optim, cfg.trainer), (cfg.teacher.optim, cfg.teacher)):  # the teacher's, if trained
        assert (trainer.batch_size, trainer.epochs) == (SOLVER["batch"], SOLVER["epochs"])
        assert (optim.optimizer.lr, optim.optimizer.momentum, optim.optimizer.weight_decay) == (
            SOLVER["lr"], SOLVER["momentum"], SOLVER["weight_decay"])
        assert (list(optim.scheduler.milestones), optim.scheduler.gamma) == (SOLVER["milestones"], SOLVER["gamma"])
    assert cfg.loss._target_ == "kd.distillers.kd.KD" and cfg.loss.temperature == KD["temperature"]
    assert (1 - cfg.alpha, cfg.alpha) == (KD["ce_weight"], KD["kd_weight"]) and cfg.loss.scale == 1.0


@pytest.mark.parametrize("pair", sorted(IMAGENET_PAIRS))
def test_an_imagenet_pairs_dkd_command_gives_mdistillers_imagenet_dkd(pair):
    source, _, _, weights = IMAGENET_PAIRS[pair]
    text = (CONF_DIR / "pair" / f"{pair}.yaml").read_text()
    assert f"configs/imagenet/{source}/dkd.yaml" in text
    command = next(line for line in text.splitlines() if "loss=dkd" in line).lstrip("# ").split(" (")[0].split()
    cfg = compose_config([f"pair={pair}", *ON_A_FOLDER, *command], out_dir="unused")
    assert cfg.loss._target_ == "kd.distillers.dkd.DKD"
    assert cfg.loss.scale * (1 - cfg.alpha) == DKD["ce_weight"] and cfg.loss.scale * cfg.alpha == 1.0  # CE + term
    assert (cfg.loss.alpha, cfg.loss.beta, cfg.loss.temperature, cfg.loss.warmup) == (
        DKD["alpha"], weights["beta"], DKD["temperature"], DKD["warmup"])


def mdistillers_kd(student: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """mdistiller's ImageNet KD loss, loss_ce + loss_kd of their KD.forward_train (mdistiller/distillers/KD.py at
    a08d46f): CE_WEIGHT * cross_entropy + KD_WEIGHT * kd_loss, kd_loss the KL of log_softmax(s / T) from
    softmax(t / T) with reduction "none", summed over classes, averaged over the batch, times T^2."""
    t = KD["temperature"]
    kl = F.kl_div(F.log_softmax(student / t, dim=1), F.softmax(teacher / t, dim=1), reduction="none")
    return KD["ce_weight"] * F.cross_entropy(student, targets) + KD["kd_weight"] * kl.sum(1).mean() * t**2


def test_the_imagenet_kd_step_is_mdistillers_in_float64():
    """kd's networks and loss as pair=imagenet-r34-r18 builds them, against torchvision's networks (theirs:
    mdistiller's ImageNet ResNets are torchvision's) and mdistiller's loss, on one batch and the same weights."""
    cfg = compose_config(["pair=imagenet-r34-r18", *ON_A_FOLDER], out_dir="unused")
    torch.manual_seed(0)
    theirs = tv.resnet18().double(), tv.resnet34().double().eval()
    ours = instantiate(cfg.model, num_classes=1000).double(), instantiate(cfg.teacher.arch, num_classes=1000).double()
    for mine, net in zip(ours, theirs):
        mine.load_state_dict(net.state_dict())
    ours[1].eval()
    images, targets = torch.randn(2, 3, 64, 64, dtype=torch.float64), torch.tensor([3, 997])
    with torch.no_grad():
        teacher_logits = ours[1](images)
        torch.testing.assert_close(teacher_logits, theirs[1](images), rtol=0, atol=1e-12)
    parts = instantiate(cfg.loss)(Outputs(ours[0](images)), Outputs(teacher_logits), targets, alpha=cfg.alpha)
    parts.total.backward()
    reference = mdistillers_kd(theirs[0](images), teacher_logits, targets)
    reference.backward()
    assert parts.total.dtype == torch.float64 and parts.kd > 0.1  # a teacher the student does not match yet
    torch.testing.assert_close(parts.total, reference, rtol=1e-12, atol=0)
    grads = dict(theirs[0].named_parameters())
    for name, p in ours[0].named_parameters():
        torch.testing.assert_close(p.grad, grads[name].grad, rtol=1e-9, atol=1e-12, msg=name)
