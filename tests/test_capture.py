"""Compilation and CUDA graph capture of the step: the same training as eager, and a word on where they are off."""
from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import FAST, compose_config, run_cli
from kd.training.capture import EAGER, CompilePlan, plan_compile
from kd.config import TeacherView
from kd.training.engine import Cell, autocast_for, make_batches, make_teaching, train_one_epoch
from kd.training.students import make_pack
from kd.models.resnet import resnet8
from test_augment import synthetic_splits

# lr drops to exactly 0 after the first epoch: a learning rate baked into a captured graph would keep moving weights.
# A small lr: on this noise data, float-rounding differences of 1e-6 in the logits grow ~5x per step at lr 0.05.
RECIPE = [*FAST, "aug=fc", "alpha=0.5", "trainer.batch_size=32", "optim.optimizer.lr=0.01",
          "optim.scheduler.milestones=[1]", "optim.scheduler.gamma=0", "trainer.compile=true",
          "trainer.graph_capture=true"]


def train_two_epochs(cfg, plan: CompilePlan, device: torch.device, tmp_path,
                     alphas: tuple[float, ...] = ()) -> tuple[list[dict], list[dict]]:
    """(per-epoch stats, the students' parameters after each epoch) for one cell, or a pack of `alphas`'s cells,
    trained with `plan`."""
    splits = synthetic_splits(n=144, size=16)  # 4 batches of 32 and a partial one of 16, as CIFAR's last
    cfgs = [cfg] if not alphas else [OmegaConf.merge(cfg, {"alpha": alpha}) for alpha in alphas]
    cells = [Cell(c, tmp_path, {}, lambda row, step: None, "", "") for c in cfgs]
    example = torch.zeros(2, 3, 16, 16, device=device)
    update = make_pack(cells, 10, device, plan, example=example)
    autocast = autocast_for(device, cfg.trainer.bf16)
    torch.manual_seed(0)
    batches = make_batches(cfg, splits, "train", instantiate(cfg.aug), device, shuffle=True)
    teaching = make_teaching(cfg, resnet8(num_classes=10), splits, instantiate(cfg.aug), batches,
                             {TeacherView(cfg.trainer.teacher_view)}, device, autocast, plan)
    stats, weights = [], []
    for epoch in range(2):
        stats += train_one_epoch(update, batches, teaching, autocast, epoch, set(), plan)
        update.end_epoch(list(range(len(cells))))
        weights.append({f"{k}.{name}": v.detach().clone().float().cpu() for k, s in enumerate(update.students)
                        for name, v in s.model.named_parameters()})
    return stats, weights


def assert_trains_alike(eager: tuple, compiled: tuple, rtol: float, atol: float) -> None:
    (eager_stats, eager_weights), (compiled_stats, compiled_weights) = eager, compiled
    for a, b in zip(eager_stats, compiled_stats):
        assert b["train/loss"] == pytest.approx(a["train/loss"], rel=rtol, abs=atol)
    for name, w in eager_weights[-1].items():
        torch.testing.assert_close(compiled_weights[-1][name], w, rtol=rtol, atol=atol)
    # lr 0 in epoch 2: not a single parameter moved, compiled or not.
    assert all(torch.equal(compiled_weights[0][k], compiled_weights[1][k]) for k in compiled_weights[0])


@pytest.mark.slow
def test_the_compiled_step_trains_as_eager_on_the_cpu(tmp_path):
    """The code path of graph capture (compiled student and teacher, the eager optimizer step under the schedule)
    run by inductor's CPU backend, where CUDA graphs themselves are skipped: about 30 s of compiling."""
    cfg = compose_config([*RECIPE, "trainer.device=cpu"], out_dir=tmp_path)
    device = torch.device("cpu")
    eager = train_two_epochs(cfg, EAGER, device, tmp_path)
    compiled = train_two_epochs(cfg, CompilePlan("reduce-overhead", "test", batch_size=32), device, tmp_path)
    assert_trains_alike(eager, compiled, rtol=1e-2, atol=1e-3)


@pytest.mark.slow
def test_a_compiled_stacked_pack_trains_as_eager_on_the_cpu(tmp_path):
    """The grouped students (kd/training/grouped.py) compiled as one network, the path of a stacked pack under graph
    capture, run by inductor's CPU backend: as the eager stacked pack."""
    cfg = compose_config([*RECIPE, "trainer.device=cpu", "trainer.pack_mode=stacked"], out_dir=tmp_path)
    device = torch.device("cpu")
    eager = train_two_epochs(cfg, EAGER, device, tmp_path, alphas=(0.0, 0.5, 1.0))
    compiled = train_two_epochs(cfg, CompilePlan("reduce-overhead", "test", batch_size=32), device, tmp_path,
                                alphas=(0.0, 0.5, 1.0))
    assert len(eager[0]) == 6
    assert_trains_alike(eager, compiled, rtol=1e-2, atol=1e-3)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_graph_capture_on_cuda_trains_as_eager_within_bf16_tolerance(tmp_path):
    cfg = compose_config([*RECIPE, "trainer.device=cuda"], out_dir=tmp_path)
    device = torch.device("cuda")
    plan = plan_compile(cfg.trainer, device)
    assert plan.captures, plan.why
    eager = train_two_epochs(cfg, EAGER, device, tmp_path)
    captured = train_two_epochs(cfg, plan, device, tmp_path)
    assert_trains_alike(eager, captured, rtol=5e-2, atol=2e-2)


def test_where_compilation_is_off_the_plan_says_why():
    def plan(*overrides: str, device: str = "cuda") -> CompilePlan:
        return plan_compile(compose_config([*FAST, *overrides]).trainer, torch.device(device))

    assert plan().mode == "default"
    assert plan("trainer.graph_capture=true").captures
    assert plan("trainer.graph_capture=true", device="cpu") == CompilePlan(
        None, "trainer.compile=true and trainer.graph_capture=true: used on CUDA only, off on cpu, which runs eagerly")
    assert plan(device="cpu").why == "trainer.compile=true: used on CUDA only, off on cpu, which runs eagerly"
    assert plan("trainer.compile=false").why == "trainer.compile=false"
    assert plan("trainer.graph_capture=true", "trainer.pack_mode=stacked").captures  # its grouped network


@pytest.mark.slow
def test_graph_capture_without_compile_is_refused_before_any_work(tmp_path):
    proc = run_cli([*FAST, "trainer.graph_capture=true", "trainer.compile=false", f"hydra.run.dir={tmp_path}/run"],
                   cwd=tmp_path)
    assert proc.returncode != 0
    assert "trainer.graph_capture=true" in proc.stderr and "set trainer.compile=true" in proc.stderr
    assert not (tmp_path / "run" / "results.json").exists()
    ok = run_cli([*FAST, "trainer.graph_capture=true", "aug=fc", "trainer.augment_scope=epoch",
                  f"hydra.run.dir={tmp_path}/ok"], cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr[-2000:]
    # Both switches asked for something this CPU run does not do as on a GPU: the log says so, once each.
    log = (tmp_path / "ok" / "train.log").read_text()
    assert "step: eager (trainer.compile=true and trainer.graph_capture=true: used on CUDA only, off on cpu" in log
    assert "augmentation: fc over the whole training split once per epoch (trainer.augment_scope=epoch" in log


def test_under_graph_capture_the_optimizer_step_stays_eager_with_a_float_learning_rate():
    """A compiled optimizer step is a compiled call of its own: under CUDA-graph trees it starts a generation that
    frees the gradients it is about to read (what failed on the H200). It stays the optimizer's own step."""
    model = resnet8(num_classes=10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    step = CompilePlan("reduce-overhead", "test").optimizer_step(optimizer)
    assert step == optimizer.step and isinstance(optimizer.param_groups[0]["lr"], float)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_captured_stacked_pack_on_cuda_trains_as_eager_within_bf16_tolerance(tmp_path):
    cfg = compose_config([*RECIPE, "trainer.device=cuda", "trainer.pack_mode=stacked"], out_dir=tmp_path)
    device = torch.device("cuda")
    plan = plan_compile(cfg.trainer, device)
    assert plan.captures, plan.why
    eager = train_two_epochs(cfg, EAGER, device, tmp_path, alphas=(0.0, 0.5, 1.0))
    captured = train_two_epochs(cfg, plan, device, tmp_path, alphas=(0.0, 0.5, 1.0))
    assert_trains_alike(eager, captured, rtol=5e-2, atol=2e-2)


@pytest.mark.slow
def test_a_compiled_forward_is_compiled_for_the_training_batch_size_alone():
    """The epoch's last partial batch (and a logit cache's larger ones) run the module eagerly: one graph, never a
    recompile or a dynamic-shape graph in place of the static one."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    forward = CompilePlan("default", "test", batch_size=4).model(model)
    full, partial = torch.randn(4, 6), torch.randn(2, 6)
    torch.testing.assert_close(forward(full), model(full))
    forward(full)
    assert torch.equal(forward(partial), model(partial))  # eager: the module's own result, bit for bit
    forward(torch.randn(4, 6))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
