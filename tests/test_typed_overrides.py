"""A misspelt key or option, as typed on the command line: named once with kd's "did you mean", before Hydra
composes anything (no advice to add it with `+`, no list of options repeated per cell)."""
from __future__ import annotations

import pytest

from conftest import FAST, run_cli
from kd.runs.typed_overrides import TypedOverrideError, check_typed_overrides


def test_a_misspelt_key_gets_kds_suggestion_and_no_plus_advice(tmp_path):
    proc = run_cli(["data=digits", "trainer.epocs=3"], cwd=tmp_path)
    assert proc.returncode == 1
    assert "Error: trainer.epocs is not a setting kd knows (did you mean trainer.epochs?)" in proc.stderr, proc.stderr
    assert "+trainer.epocs" not in proc.stderr and not (tmp_path / "outputs").exists()


def test_a_misspelt_option_in_a_grid_is_named_once(tmp_path):
    proc = run_cli(["-m", *FAST, "aug=fcrx,none", "alpha=0,0.5"], cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.count("fcrx") == 1 and "aug=fcrx: no such option (did you mean fcra?)" in proc.stderr
    assert "Config search path" not in proc.stderr and not (tmp_path / "multirun").exists()


@pytest.mark.parametrize("overrides", [["trainer.epochs=3", "teacher.optim.optimizer.lr=0.1", "aug=fc,fcra"],
                                       ["+trainer.anything=1"],  # kd's later check answers for added keys
                                       ["pair=vgg13-vgg8", "hydra/launcher=slurm", "data.root=/x", "loss.beta=2"],
                                       ["aug=glob(fc*)"]])
def test_valid_overrides_pass(overrides):
    check_typed_overrides(overrides, [])


def test_a_config_dirs_own_options_and_groups_count(tmp_path):
    (tmp_path / "aug").mkdir()
    (tmp_path / "aug" / "invert.yaml").write_text("_target_: my.RandomInvert\n")
    with pytest.raises(TypedOverrideError, match="aug=invert: no such option"):
        check_typed_overrides(["aug=invert"], [])
    check_typed_overrides(["aug=invert", "experiment=mine"], [tmp_path])  # experiment: perhaps the user's group
    with pytest.raises(TypedOverrideError, match=r"teacher.epoch is not a setting kd knows \(did you mean teacher.epochs"):
        check_typed_overrides(["teacher.epoch=3"], [tmp_path])
