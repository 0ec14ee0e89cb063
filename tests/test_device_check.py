"""benchmarks/device_check.sh's dry mode: every step of the GPU check, in tiny form on the CPU, so that the one
prepared call a lent GPU gets does not rot between loans. It fetches the wheels from PyPI, as `fetch` does."""
from __future__ import annotations

import json
import os
import subprocess

import pytest

from conftest import REPO


@pytest.mark.slow
@pytest.mark.timeout(1500)  # 4 min 47 s on 2 busy cores (load average ~5); each step stops at 300 s
def test_the_dry_run_writes_the_results_json_of_every_step(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "KD_HOME": str(tmp_path / "home")}
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "device_check.sh"), "dry"], env=env,
                          capture_output=True, text=True, timeout=1400)
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-3000:]
    (path,) = out.glob("*-cpu-dry.json")
    result = json.loads(path.read_text())
    assert result["gpu"] is None and result["dry"] is True and result["commit"] not in ("", "unknown")
    assert {name: s["exit"] for name, s in result["steps"].items()} == dict.fromkeys(
        ["install", "tests", "gpu_benchmark", "multirun", "profile"], 0)
    assert result["cuda_tests"]["failed"] == result["cuda_tests"]["errors"] == 0
    assert result["cuda_tests"]["passed"] + result["cuda_tests"]["skipped"] > 0
    ways = "abcd"
    assert list(result["ways"]) == list(ways) and all(result["ways"][w]["fc"] > 0 for w in ways)
    assert all(result["projected_grid_hours"][w] > 0 for w in ways)
    multirun = result["multirun"]
    assert multirun["exit"] == 0 and multirun["cells"] == 4 and multirun["wall_s"] > 0
    assert multirun["compile_s"] is not None  # 2 epochs: the first one's extra can be read off
    profile = result["profile"]["ways"]
    assert list(profile) == list(ways)
    for way in profile.values():  # a CPU: the host's side only
        assert way["host_ms_per_step"] > 0 and len(way["top_cpu_ops"]) == 10
        assert way["kernels_per_step"] is None and way["gpu_busy_fraction"] is None
    assert "| way | none | fc | fcra | teacher | projected grid |" in done.stdout
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [path.name, "summary.txt", "tests.log", "gpu_benchmark.log", "multirun.log", "profile.log", "raw.tar.gz"])
