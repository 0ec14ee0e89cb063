"""torch and torchvision: a matching pair is checked before any job, and a mismatch names both and the fix."""
from __future__ import annotations

from importlib import metadata

from kd.runs.torch_pair import check_torch_pair, matching_torch, matching_torchvision, mismatch_message


def test_each_torch_release_has_its_torchvision():
    # torchvision's README table: 0.20 <-> 2.5, 0.24 <-> 2.9, 0.29 <-> 2.14
    assert [matching_torchvision(v) for v in ("2.5.1", "2.9.1+cpu", "2.14.1+cu130")] == ["0.20", "0.24", "0.29"]
    assert [matching_torch(v) for v in ("0.20.1", "0.24.1+cpu", "0.29.1+cu130")] == ["2.5", "2.9", "2.14"]
    assert matching_torchvision("1.13.1") is None and matching_torch("0.15.2") is None  # outside the rule


def test_the_installed_pair_matches_and_passes_the_check():
    assert matching_torchvision(metadata.version("torch")) == ".".join(metadata.version("torchvision").split(".")[:2])
    check_torch_pair()


def test_a_mismatch_names_both_versions_the_cause_and_both_fixes():
    message = mismatch_message("2.13.0", "0.29.1", "operator torchvision::nms does not exist")
    assert "torchvision 0.29.1 does not work with torch 2.13.0: operator torchvision::nms does not exist" in message
    assert "pip install 'torchvision==0.28.*'" in message and "pip install 'torch==2.14.*'" in message
