"""Data parallelism of the one loop (docs/distributed.md): real gloo processes on this CPU, under torchrun, against
one process training on the same global batches.

Why a tolerance, not bit for bit: a sum over the global batch is added up in another order when each rank sums
its half and an all-reduce adds the halves (BatchNorm's statistics, the mean gradient), so float32 rounding
differs in the last bits; SGD carries that along, ~1e-7 per step on digits (2.4e-7 after 4 steps, 3.6e-7 after
6). Early training at digits' lr 0.05 amplifies it within a few steps (1.3e-3 after 6 steps of a KD cell, 1.7e-3
after 10 of a CE-only one), as much as any reordering: one process on 1 thread against 2 threads ends those 6
steps 3.6e-3 apart. The cells here train at lr 0.01.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import FAST_TEACHER, TRAIN_SCRIPT, run_cli

TOLERANCE = 1e-5  # max |weight difference| after the runs below (6 steps): what float32 reordering leaves
# 96 digits in batches of 32 for 2 epochs: 6 steps, an epoch boundary (checkpoint, BatchNorm broadcast) between.
# lr 0.01, not digits' 0.05: at 0.05 the first steps' large updates amplify float rounding (1.3e-3 after these 6 steps
# of a KD cell taught by the 1-epoch teacher below, 2.4e-7 at 0.01).
CELL = ["data=digits", "data.image_size=8", "data.train_size=96", "trainer.epochs=2", "trainer.batch_size=32",
        "logger=none", "aug=none", "optim.optimizer.lr=0.01"]
RANKS = ["trainer.devices=2", "trainer.sync_bn=true"]


def torchrun(args: list[str], cwd: Path, timeout: int = 600, **popen) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node=2 kd/train.py <args>`, as a user would run it."""
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(TRAIN_SCRIPT), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          **popen)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> list[str]:
    """A digits teacher trained once for the module's cells (1 epoch of all 300 training images: they compare
    runs, not accuracy). A teacher of 1 epoch on 96 images instead let CRD's exp(score / 0.07) amplify the float
    differences to 1.9e-4 in 6 steps."""
    home = tmp_path_factory.mktemp("teacher_home")
    done = run_cli(["stage=teacher", *CELL[:2], "logger=none", *FAST_TEACHER, f"hydra.run.dir={home / 'run'}"], home,
                   env={"KD_HOME": str(home), "KD_DATA_DIR": str(home / "data")})
    assert done.returncode == 0, done.stderr[-3000:]
    (path,) = (home / "teachers").glob("*.pt")
    return [f"teacher.checkpoint={path}", "teacher.min_top1=0"]


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoint.pt", weights_only=False)["model"]


def largest_difference(a: Path, b: Path) -> float:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    return max(float((wa[k].double() - wb[k].double()).abs().max()) for k in wa)


def one_and_two_ranks(args: list[str], tmp_path: Path) -> tuple[Path, Path, subprocess.CompletedProcess]:
    one, two = tmp_path / "one", tmp_path / "two"
    single = run_cli([*args, f"hydra.run.dir={one}"], tmp_path)
    assert single.returncode == 0, single.stderr[-3000:]
    ranks = torchrun([*args, *RANKS, f"hydra.run.dir={two}"], tmp_path)
    assert ranks.returncode == 0, ranks.stderr[-3000:]
    return one, two, ranks


@pytest.mark.slow
def test_a_crd_cell_on_two_ranks_keeps_the_memory_banks_of_one_process(teacher, tmp_path):
    crd = [*CELL, "alpha=0.5", "loss=crd", "loss.nce_k=64", *teacher]
    one, two, _ = one_and_two_ranks(crd, tmp_path)
    assert largest_difference(one, two) < TOLERANCE
    banks = [torch.load(d / "checkpoint.pt", weights_only=False)["distiller"] for d in (one, two)]
    for name in ("bank_s", "bank_t"):  # every rank's samples moved the banks: one process's banks
        assert float((banks[0][name] - banks[1][name]).abs().max()) < TOLERANCE, name
    # Z, the global batch's mean score times the training set's size, is in the hundreds: float32's relative grain
    assert torch.allclose(banks[0]["z"], banks[1]["z"], rtol=1e-6, atol=0), (banks[0]["z"], banks[1]["z"])


@pytest.mark.slow
def test_a_pack_of_three_alphas_on_two_ranks_trains_each_cell_as_one_process(teacher, tmp_path):
    args = ["-m", *CELL, "alpha=0.25,0.5,0.75", *teacher]
    single = run_cli([*args, f"hydra.sweep.dir={tmp_path / 'one'}"], tmp_path)
    assert single.returncode == 0, single.stderr[-3000:]
    ranks = torchrun([*args, *RANKS, f"hydra.sweep.dir={tmp_path / 'two'}"], tmp_path)
    assert ranks.returncode == 0, ranks.stderr[-3000:]

    def by_alpha(sweep: Path) -> dict[float, Path]:  # the cells' dirs are named by their overrides, which differ
        return {json.loads((d / "results.json").read_text())["alpha"]: d for d in sweep.glob("*/") if
                (d / "results.json").is_file()}

    one, two = by_alpha(tmp_path / "one"), by_alpha(tmp_path / "two")
    assert sorted(one) == sorted(two) == [0.25, 0.5, 0.75]
    for alpha, cell in two.items():
        assert largest_difference(one[alpha], cell) < TOLERANCE, alpha
        result = json.loads((cell / "results.json").read_text())
        assert result["distributed"] == {"world_size": 2, "backend": "gloo", "per_rank_batch": 16, "sync_bn": True}
    said = ranks.stdout + ranks.stderr
    assert said.count("epoch 2/2 ") == 3, said[-3000:]  # rank 0 alone logs each cell's epochs
    assert said.count("Test top-1 (%) of the students") == 1, said[-3000:]  # and alone prints the grid's table


@pytest.mark.slow
def test_per_rank_batchnorm_trains_to_one_process_accuracy_within_the_seed_spread(tmp_path):
    """Per-rank BatchNorm (the default) normalises each half batch by its own statistics and each rank draws its
    own augmentation: other arithmetic by design, so not the same weights, but the same accuracy as one process
    within the spread between seeds (floored at 2 points: 7 of digits' 360 test images)."""
    args = ["data=digits", "data.image_size=8", "logger=none", "alpha=0", "aug=fc", "trainer.epochs=8"]
    singles = run_cli(["-m", *args, "seed=0,1,2", f"hydra.sweep.dir={tmp_path / 'one'}"], tmp_path)
    assert singles.returncode == 0, singles.stderr[-3000:]
    ranks = torchrun([*args, "seed=0", "trainer.devices=2", f"hydra.run.dir={tmp_path / 'two'}"], tmp_path)
    assert ranks.returncode == 0, ranks.stderr[-3000:]
    accuracies = [json.loads(p.read_text())["final_top1"] for p in (tmp_path / "one").glob("*/results.json")]
    assert len(accuracies) == 3
    spread = max(max(accuracies) - min(accuracies), 2.0)
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    assert two["distributed"]["sync_bn"] is False
    assert min(accuracies) - spread <= two["final_top1"] <= max(accuracies) + spread, (two["final_top1"], accuracies)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_step(rank: int, port: int, queue) -> None:
    """One rank's half of one training step of a small BatchNorm network, synchronised (kd's sync_bn path)."""
    import torch.distributed as dist

    from kd.training.distributed import World, sync_batchnorm

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    x, y, model = _batch_and_network()
    model = sync_batchnorm(model, torch.device("cpu"))
    world = World(rank, 2)
    share = slice(0, 13) if rank == 0 else slice(13, 25)  # uneven shares, as a last batch of 25 is cut
    loss = torch.nn.functional.cross_entropy(model(x[share]), y[share]) * world.loss_scale(len(y[share]), x.device)
    loss.backward()
    world.average_gradients(model.parameters())
    queue.put((rank, {k: p.grad.tolist() for k, p in model.named_parameters()},
               {k: b.tolist() for k, b in model.named_buffers()}))
    dist.destroy_process_group()


def _batch_and_network():
    torch.manual_seed(0)
    x, y = torch.randn(25, 3, 6, 6), torch.randint(0, 4, (25,))
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 5, 3), torch.nn.BatchNorm2d(5), torch.nn.ReLU(),
                                torch.nn.Flatten(), torch.nn.Linear(5 * 4 * 4, 4))
    return x, y, model


def test_sync_batchnorm_and_the_mean_gradient_of_two_cpu_ranks_are_one_process_s():
    """torch's SyncBatchNorm refuses CPU tensors: kd's CPU forward must give BatchNorm's statistics, gradients
    and running buffers on the global batch, with uneven shares weighted by their images."""
    import torch.multiprocessing as mp

    x, y, model = _batch_and_network()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    context = mp.get_context("spawn")
    queue, port = context.Queue(), free_port()
    procs = [context.Process(target=_rank_step, args=(rank, port, queue)) for rank in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    for _, grads, buffers in results:
        for name, p in model.named_parameters():
            assert torch.allclose(torch.tensor(grads[name]), p.grad, atol=1e-6), name
        for name, b in model.named_buffers():
            assert torch.allclose(torch.tensor(buffers[name]).to(b.dtype), b, atol=1e-6), name


def test_ranks_come_from_the_environment_and_must_match_devices_times_nodes(monkeypatch):
    from omegaconf import OmegaConf

    from kd.training.distributed import SINGLE, World, world_from_env

    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    assert world_from_env(OmegaConf.create({"devices": 1, "nodes": 1})) == SINGLE
    with pytest.raises(ValueError, match=r"asks for 4 ranks, but this is one process: launch .*torchrun "
                                         r"--nproc_per_node=2 --nnodes=2"):
        world_from_env(OmegaConf.create({"devices": 2, "nodes": 2}))
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert world_from_env(OmegaConf.create({"devices": 2, "nodes": 1})) == World(1, 2, 1)
    with pytest.raises(ValueError, match=r"2 ranks \(WORLD_SIZE\) but trainer.devices=4 x trainer.nodes=1 = 4"):
        world_from_env(OmegaConf.create({"devices": 4, "nodes": 1}))


def test_a_master_address_that_does_not_resolve_is_refused_at_once_naming_it(monkeypatch):
    """Found on the CI's SLURM: a node name that does not resolve left both ranks waiting in the rendezvous."""
    from kd.training.distributed import check_master_address

    monkeypatch.setenv("MASTER_ADDR", socket.gethostname())
    check_master_address()  # this host's own name resolves: nothing to say
    monkeypatch.setenv("MASTER_ADDR", "no-such-node.invalid")  # .invalid never resolves (RFC 2606)
    with pytest.raises(RuntimeError, match=r"MASTER_ADDR=no-such-node.invalid .* does not resolve on .*"
                                           r"node names resolve on every node"):
        check_master_address()


@pytest.mark.parametrize("override, says", [
    ("trainer.pipeline=dataloader", "use trainer.pipeline=device"),
    ("trainer.pack_mode=stacked", "use trainer.pack_mode=loop"),
    ("trainer.nodes=0", "trainer.nodes=0 must be >= 1"),
])
def test_settings_a_data_parallel_cell_cannot_run_with_are_refused_before_any_work(override, says):
    from conftest import compose_config
    from kd.runs.checks import check_trainer

    cfg = compose_config(["data=digits", "trainer.devices=2", "trainer.sync_bn=true", override], "/tmp/unused")
    with pytest.raises(ValueError, match=says):
        check_trainer(cfg.trainer)


def test_two_devices_asked_of_one_process_are_refused_naming_torchrun(tmp_path):
    done = run_cli([*CELL, "trainer.devices=2", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert done.returncode != 0
    assert "trainer.devices=2 trainer.nodes=1 asks for 2 ranks, but this is one process" in done.stderr
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def ranks_of(launcher_pid: int) -> dict[int, int]:
    """{rank: pid} of torchrun's worker processes, read from /proc (their RANK variable)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        rank = [v for v in environ if v.startswith(b"RANK=")]
        if parent == launcher_pid and rank:
            found[int(rank[0][5:])] = int(entry.name)
    return found


@pytest.mark.chaos
def test_a_rank_killed_mid_epoch_fails_the_job_naming_it_and_the_rerun_resumes(teacher, tmp_path):
    args = [*CELL, "data.train_size=300", "trainer.epochs=6", "alpha=0.5", *teacher, *RANKS,
            f"hydra.run.dir={tmp_path / 'run'}"]
    log = (tmp_path / "stderr.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             str(TRAIN_SCRIPT), *args], cwd=tmp_path, stdout=subprocess.PIPE, stderr=log, text=True)
    checkpoint = tmp_path / "run" / "checkpoint.pt"
    deadline = time.monotonic() + 300
    while not checkpoint.exists():  # the first epoch is checkpointed: the kill lands in a later one
        assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "stderr.log").read_text()[-3000:]
        time.sleep(0.2)
    os.kill(ranks_of(proc.pid)[1], signal.SIGKILL)
    proc.communicate(timeout=300)
    stderr = (tmp_path / "stderr.log").read_text()
    assert proc.returncode != 0
    assert "rank      : 1" in stderr and "Signal 9 (SIGKILL)" in stderr, stderr[-3000:]
    resumed = torchrun(args, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr + resumed.stdout
    whole = torchrun([*args[:-1], f"hydra.run.dir={tmp_path / 'whole'}"], tmp_path)
    assert whole.returncode == 0, whole.stderr[-3000:]
    assert largest_difference(tmp_path / "run", tmp_path / "whole") < TOLERANCE
