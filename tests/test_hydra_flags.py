"""Hydra's own flags reach Hydra untouched (shell completion, --info, --cfg, ...), while the overrides beside them
are still checked by kd before Hydra composes anything."""
from __future__ import annotations

import pytest

from conftest import run_cli
from kd.runs.hydra_args import split_args


@pytest.mark.parametrize("flag", ["--shell-completion", "-sc"])
def test_shell_completion_install_prints_hydras_script(flag, tmp_path):
    proc = run_cli([flag, "install=bash"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "not a setting kd knows" not in proc.stderr
    assert "complete -o nospace -o default -F hydra_bash_completion" in proc.stdout, proc.stdout[-2000:]
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("args, shown", [(["--info", "config", "alpha=0.25"], "alpha: 0.25"),
                                         (["--info", "searchpath"], "Config search path"),
                                         (["--cfg", "job", "-p", "trainer", "trainer.epochs=2"], "epochs: 2")])
def test_info_and_cfg_flags_pass_with_their_arguments(args, shown, tmp_path):
    proc = run_cli(args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert shown in proc.stdout, proc.stdout[-2000:]


def test_a_typo_beside_a_flag_is_still_refused_by_kd(tmp_path):
    proc = run_cli(["--cfg", "job", "trainer.epocs=2"], cwd=tmp_path)
    assert proc.returncode == 1
    assert "Error: trainer.epocs is not a setting kd knows (did you mean trainer.epochs?)" in proc.stderr, proc.stderr


@pytest.mark.parametrize("argv, flags, overrides", [
    (["-cd", "/x", "alpha=0", "--info", "config"], ["-cd", "/x", "--info", "config"], ["alpha=0"]),
    (["--experimental-rerun", "a.pickle"], ["--experimental-rerun", "a.pickle"], []),
    (["-m", "aug=fc,none", "--config-name=mine", "--resolve"], ["-m", "--config-name=mine", "--resolve"], ["aug=fc,none"]),
])
def test_flags_and_their_values_are_told_from_overrides_by_hydras_parser(argv, flags, overrides):
    args = split_args(argv)
    assert (args.flags, args.overrides) == (flags, overrides)
