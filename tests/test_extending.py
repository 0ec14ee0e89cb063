"""docs/extending.md's promise: a new model, loss or augmentation is one small Python file and one YAML.

The file and the YAMLs are the page's own, kept outside the repository as a
user would (the module on PYTHONPATH, the YAMLs found through `--config-dir`); a real training run
uses all three at once.
"""
import json
import os
import re

import torch

from conftest import REPO, run_cli

EXTENDING = (REPO / "docs" / "extending.md").read_text()
EXTENSION = re.search(r"```python\n# my_kd_extension.py\n(.*?)```", EXTENDING, flags=re.S).group(1)
YAML_BLOCK = re.search(r"```yaml\n(# my_conf/.*?)```", EXTENDING, flags=re.S).group(1)
# The page's YAML block holds one file per "# my_conf/<group>/<name>.yaml" header.
YAMLS = {m.group(1): m.group(2)
         for m in re.finditer(r"# my_conf/(\S+)\n(.*?)(?=# my_conf/|\Z)", YAML_BLOCK, flags=re.S)}
YAMLS["teacher/tiny_cnn.yaml"] = ("defaults:\n  - /model@arch: tiny_cnn\n  - /aug@aug: fc\n  - _self_\n"
                                  "checkpoint: null\ncache_dir: ${oc.env:KD_HOME,'~/.cache/kd'}/teachers\n")


def write_extension(root):
    (root / "my_kd_extension.py").write_text(EXTENSION)
    for name, text in YAMLS.items():
        path = root / "conf" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def on_pythonpath(folder) -> dict:
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))}


def test_a_model_loss_and_aug_of_ones_own_train_in_one_run(tmp_path):
    write_extension(tmp_path)
    env = {**on_pythonpath(tmp_path), "KD_HOME": str(tmp_path / "home")}
    args = ["--config-dir", str(tmp_path / "conf"), "model=tiny_cnn", "teacher=tiny_cnn", "loss=smoothed_kd",
            "aug=invert", "alpha=0.5", "data=digits", "data.image_size=8", "trainer.epochs=2", "logger=none",
            f"hydra.run.dir={tmp_path / 'run'}"]
    proc = run_cli(args, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["status"] == "completed"
    assert (results["model"], results["teacher"], results["aug"]) == ("tiny_cnn", "tiny_cnn", "invert")
    assert results["config"]["loss"]["smoothing"] == 0.1
    assert results["teacher_top1"] is not None and len(results["history"]) == 2
    assert all(row["train/kd"] > 0 for row in results["history"])  # the teacher's soft targets were used
    # The student's own loss never trains the teacher: the cached one records plain cross-entropy.
    (cached,) = (tmp_path / "home" / "teachers").glob("*.pt")
    assert json.loads(torch.load(cached, weights_only=True)["recipe"])["loss"]["_target_"] == "kd.distillers.base.CrossEntropy"


def test_a_misspelled_parameter_of_an_added_aug_is_named_before_training(tmp_path):
    write_extension(tmp_path)
    env = on_pythonpath(tmp_path)
    args = ["--config-dir", str(tmp_path / "conf"), "aug=invert", "+aug.prob=0.3", "alpha=0", "data=digits",
            "data.image_size=8", "logger=none", f"hydra.run.dir={tmp_path / 'run'}"]
    proc = run_cli(args, cwd=tmp_path, env=env)
    assert proc.returncode == 1
    assert ("ConfigTargetError: aug: my_kd_extension.RandomInvert takes no parameter 'prob' (it takes: p). "
            "Fix the key in the override or in the option's YAML.") in proc.stderr, proc.stderr
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_an_added_option_whose_target_cannot_be_imported_is_named(tmp_path):
    write_extension(tmp_path)  # but my_kd_extension is not put on PYTHONPATH
    proc = run_cli(["--config-dir", str(tmp_path / "conf"), "model=tiny_cnn", "alpha=0", "data=digits",
                    "data.image_size=8", "logger=none", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert proc.returncode == 1
    assert "model._target_=my_kd_extension.tiny_cnn cannot be imported" in proc.stderr, proc.stderr
    assert "on PYTHONPATH" in proc.stderr
