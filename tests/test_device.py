"""The device a job trains on: logged with its reason at the start, a CPU fallback on a CUDA build warned
about, a bad trainer.device refused before any work, and the speed switches recorded as they took effect."""
from __future__ import annotations

import logging

import pytest
import torch

from conftest import FAST, compose_config, run_cli
from kd.training.device import DeviceError, check_device, resolve_device
from kd.runs.job import train


def test_a_real_job_logs_its_device_and_why(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="kd.training.device")
    result = train(compose_config([*FAST, "alpha=0", "trainer.device=cpu"], out_dir=tmp_path / "job"))
    (record,) = [r for r in caplog.records if r.name == "kd.training.device"]
    assert (record.levelno, record.getMessage()) == (logging.INFO, "device: cpu (trainer.device=cpu)")
    assert result["device_choice"] == "trainer.device=cpu"
    # bf16 and compile are on in the config (the CUDA defaults) but CUDA-only: off as the job ran
    assert result["config"]["trainer"]["bf16"] and result["config"]["trainer"]["compile"]
    assert result["speed"] == {"bf16": False, "compile": False, "graph_capture": False, "channels_last": True,
                               "cudnn_benchmark": False}


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_cuda_job_logs_its_gpu_and_runs_with_the_speed_switches_on(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="kd.training.device")
    result = train(compose_config([*FAST, "alpha=0.5", "trainer.device=auto"], out_dir=tmp_path / "job"))
    (record,) = [r for r in caplog.records if r.name == "kd.training.device"]
    assert record.getMessage() == f"device: cuda:0 ({torch.cuda.get_device_name(0)}) (trainer.device=auto found CUDA)"
    assert result["status"] == "completed" and result["device_choice"] == "trainer.device=auto found CUDA"
    assert result["speed"] == {"bf16": True, "compile": True, "graph_capture": False, "channels_last": True,
                               "cudnn_benchmark": True}


@pytest.mark.cuda
def test_auto_says_what_it_found(caplog):
    caplog.set_level(logging.INFO, logger="kd.training.device")
    device, why = resolve_device("auto")
    (record,) = [r for r in caplog.records if r.name == "kd.training.device"]
    if torch.cuda.is_available():
        assert device.type == "cuda" and why == "trainer.device=auto found CUDA"
        assert record.levelno == logging.INFO and torch.cuda.get_device_name(0) in record.getMessage()
    elif torch.version.cuda is not None:  # a CUDA build of torch without a usable GPU (this CI's machine)
        assert device.type == "cpu" and record.levelno == logging.WARNING
        assert record.getMessage() == f"device: cpu ({why})"
        assert why.startswith(f"trainer.device=auto: torch {torch.__version__} is a CUDA build but "
                              f"torch.cuda.is_available() is False: ")
        assert why.endswith("; the run continues on the CPU")
    else:
        assert device.type == "cpu" and record.levelno == logging.INFO and "has no CUDA" in why


@pytest.mark.parametrize("name", ["gpu", "CUDA", "cuda:", "cuda:x", "cpu0", ""])
def test_a_name_that_is_no_device_is_refused(name):
    with pytest.raises(DeviceError, match=rf"trainer.device={name} is not a device; use one of auto, cpu, cuda"):
        check_device(name)


@pytest.mark.cuda
def test_a_cuda_device_this_machine_lacks_is_refused():
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    lacks = "torch cannot use CUDA here" if count == 0 else f"only {count} CUDA device"
    with pytest.raises(DeviceError, match=rf"trainer.device=cuda:{count} but {lacks}"):
        check_device(f"cuda:{count}")


def test_cli_refuses_trainer_device_gpu_before_any_work(tmp_path):
    proc = run_cli([*FAST, "trainer.device=gpu", f"hydra.run.dir={tmp_path / 'job'}"], cwd=tmp_path)
    assert proc.returncode == 1
    assert "trainer.device=gpu is not a device; use one of auto, cpu, cuda, cuda:N (N a GPU index), mps" in proc.stderr
    assert not (tmp_path / "job" / "results.json").exists()
