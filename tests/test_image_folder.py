"""data=folder on folders written with Pillow; the class-balanced train/val subsets of every dataset."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from conftest import FAST_TEACHER, run_cli
from image_folders import CLASSES, write_folder, write_image
from kd.data.datasets import digits, folder, split_training

MEAN, STD = [0.5] * 3, [0.25] * 3


def load(root: Path, cache: Path, **kwargs) -> "kd.data.ImageSplits":  # noqa: F821
    return folder(str(root), str(cache), **kwargs)


def image_hashes(images: torch.Tensor) -> set[str]:
    return {hashlib.sha256(x.numpy().tobytes()).hexdigest() for x in images}


def test_classes_and_labels_are_torchvisions_imagefolder(tmp_path):
    root = write_folder(tmp_path / "pets", train=8, test=4)
    splits = load(root, tmp_path / "cache", image_size=16)
    for split in ("train", "test"):
        reference = torchvision.datasets.ImageFolder(str(root / split))
        assert reference.classes == sorted(CLASSES) == ["Mango", "apple", "zebra"]
        assert splits.split(split)[1].tolist() == reference.targets
    assert splits.name == "pets" and splits.num_classes == 3 and splits.val_images is None
    assert splits.train_images.shape == (24, 3, 16, 16) and splits.train_images.dtype == torch.uint8
    assert splits.test_images.shape == (12, 3, 16, 16)


def test_every_image_mode_becomes_rgb_and_a_square_of_image_size(tmp_path):
    root = tmp_path / "gray"
    for split in ("train", "test"):
        for name, value in (("dark", 30), ("light", 220)):
            (root / split / name).mkdir(parents=True)
            for i, (w, h) in enumerate([(40, 20), (20, 40)]):  # not square: resized, then center-cropped
                Image.new("L", (w, h), value).save(root / split / name / f"{i}.jpg")
                Image.new("RGBA", (w, h), (value, value, value, 0)).save(root / split / name / f"a{i}.png")
    splits = load(root, tmp_path / "cache", image_size=8)
    assert splits.train_images.shape == (8, 3, 8, 8)
    means = splits.train_images.flatten(1).float().mean(1).round()
    assert means.tolist() == [30] * 4 + [220] * 4 and splits.train_labels.tolist() == [0] * 4 + [1] * 4
    assert (splits.train_images == splits.train_images[:, :1]).all()  # gray stays gray in all three channels
    assert splits.mean == pytest.approx([125 / 255] * 3, abs=1e-4)  # from the training images, none given
    assert splits.std == pytest.approx([95 / 255] * 3, abs=1e-4)
    assert load(root, tmp_path / "cache", image_size=8, mean=MEAN, std=STD).mean == tuple(MEAN)


def test_the_cache_is_read_instead_of_decoding_and_a_changed_folder_is_decoded_again(tmp_path):
    root, cache = write_folder(tmp_path / "pets"), tmp_path / "cache"
    first = load(root, cache)
    (cached,) = cache.glob("*.pt")
    # The same folder at another image size is another cache file.
    assert load(root, cache, image_size=16).train_images.shape[-1] == 16 and len(list(cache.glob("*.pt"))) == 2
    stamp = cached.stat().st_mtime_ns
    # An image overwritten with garbage of the same size and mtime: the listing is unchanged, so a second
    # load that decoded would fail; it reads the cache.
    victim = next((root / "train" / "apple").glob("*.png"))
    stat = victim.stat()
    victim.write_bytes(b"\0" * stat.st_size)
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    second = load(root, cache)
    assert torch.equal(second.train_images, first.train_images) and cached.stat().st_mtime_ns == stamp
    assert len(list(cache.glob("*.pt"))) == 2
    # A changed folder (a touched file, an added image) is decoded again, under a new name.
    os.utime(victim)
    with pytest.raises(ValueError, match=rf"cannot read image {victim} .*Replace or delete the file"):
        load(root, cache)
    victim.unlink()
    write_image(root / "train" / "apple" / "new", 99)
    third = load(root, cache)
    assert len(third.train_labels) == len(first.train_labels) and len(list(cache.glob("*.pt"))) == 3


def test_the_grid_cells_decode_once_when_they_start_together(tmp_path):
    """Two processes load a fresh folder at once: one decodes under the lock, the other reads its file."""
    root, cache = write_folder(tmp_path / "pets"), tmp_path / "cache"
    code = (f"import logging; logging.basicConfig(level=logging.INFO); from kd.data.datasets import folder; "
            f"s = folder({str(root)!r}, {str(cache)!r}); print(int(s.train_images.sum()))")
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
             for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    assert outputs[0][0] == outputs[1][0] and len(list(cache.glob("*.pt"))) == 1
    assert sum("decoding" in err for _, err in outputs) == 1, outputs


def test_subsets_are_class_balanced_fixed_by_the_seed_and_val_never_overlaps(tmp_path):
    root = write_folder(tmp_path / "pets", train=20, test=5)
    cache = tmp_path / "cache"
    a = load(root, cache, train_size=30, val_size=12, split_seed=0)
    assert Counter(a.train_labels.tolist()) == {0: 10, 1: 10, 2: 10}
    assert Counter(a.val_labels.tolist()) == {0: 4, 1: 4, 2: 4}
    train, val, test = (image_hashes(x) for x in (a.train_images, a.val_images, a.test_images))
    assert len(train) == 30 and len(val) == 12 and not train & val and not val & test and not train & test
    b = load(root, cache, train_size=30, val_size=12, split_seed=0)
    assert torch.equal(a.train_images, b.train_images) and torch.equal(a.val_images, b.val_images)
    c = load(root, cache, train_size=30, val_size=12, split_seed=1)
    assert image_hashes(c.train_images) != train
    # The hold-out is drawn first: another train_size validates on the very same images.
    assert image_hashes(load(root, cache, train_size=15, val_size=12).val_images) == val


def test_a_folders_own_val_split_is_the_validation_set(tmp_path):
    root = write_folder(tmp_path / "pets", train=6, test=3, val=2)
    splits = load(root, tmp_path / "cache")
    assert splits.val_labels.tolist() == torchvision.datasets.ImageFolder(str(root / "val")).targets
    assert not image_hashes(splits.val_images) & image_hashes(splits.train_images)
    with pytest.raises(ValueError, match=rf"data.val_size=3, but {root / 'val'} exists and is the validation split. "
                                         r"Set data.val_size=null to use it, or remove"):
        load(root, tmp_path / "cache", val_size=3)


@pytest.mark.parametrize("dataset", ["digits", "cifar-shaped"])
def test_one_subset_function_for_every_dataset(dataset):
    labels = np.repeat(np.arange(10), 50) if dataset == "cifar-shaped" else digits(MEAN, STD).train_labels.numpy()
    train, val = split_training(labels, 10, dataset, train_size=100, val_size=50, seed=3)
    assert len(train) == 100 and len(val) == 50 and not set(train) & set(val)
    assert max(np.bincount(labels[train])) - min(np.bincount(labels[train])) <= 1
    again, _ = split_training(labels, 10, dataset, train_size=100, val_size=50, seed=3)
    assert np.array_equal(train, again)


def test_digits_keeps_its_quickstart_subset_and_gains_a_val_split():
    plain, held = digits(MEAN, STD, train_size=300), digits(MEAN, STD, train_size=250, val_size=50)
    assert len(plain.train_labels) == 300 and plain.val_images is None
    assert len(held.train_labels) == 250 and len(held.val_labels) == 50
    assert not image_hashes(held.val_images) & image_hashes(held.test_images)


@pytest.mark.slow
def test_a_short_folder_grid_runs_with_a_val_split_and_reports_the_best_val_epoch(tmp_path):
    """A short real multirun on a fixture folder: the grid, results with the best-val epoch, kd-report's table."""
    root = write_folder(tmp_path / "pets", train=8, test=4)
    sweep = tmp_path / "sweep"
    proc = run_cli(["-m", "data=folder", f"data.root={root}", "data.image_size=16", "data.val_size=6",
                    "model=resnet8", "teacher=resnet8", "alpha=0,1", "aug=none,fc", "trainer.epochs=2",
                    "trainer.batch_size=8", "teacher.batch_size=8", "logger=none", *FAST_TEACHER,
                    f"hydra.sweep.dir={sweep}"], cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/results.json"))]
    assert {(r["aug"], r["alpha"]) for r in results} == {(g, a) for g in ("none", "fc") for a in (0.0, 1.0)}
    for r in results:
        assert r["status"] == "completed" and r["data"] == "folder:pets" and len(r["history"]) == 2
        best = max(r["history"], key=lambda row: row["val/top1"])
        assert (r["best_epoch"], r["test_top1_at_best_val"]) == (best["epoch"], best["test/top1"])
    assert "Students' test top-1 at the epoch with the best val top-1 (%)" in proc.stdout
    report = subprocess.run([sys.executable, "-m", "kd.report", str(sweep), "--metric", "test_top1_at_best_val"],
                            capture_output=True, text=True, cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    assert "| none" in report.stdout and "| Gains (fc - none)" in report.stdout
    assert "test top-1 at the epoch with the best val top-1" in (sweep / "gains.md").read_text()


def test_report_refuses_the_best_val_metric_for_a_sweep_without_val(tmp_path):
    job = tmp_path / "sweep" / "0"
    job.mkdir(parents=True)
    (job / "results.json").write_text(json.dumps({  # as an older kd wrote it: no val keys
        "stage": "student", "status": "completed", "aug": "none", "alpha": 0.0, "seed": 0, "final_top1": 50.0,
        "best_top1": 60.0, "history": [{"epoch": 1, "test/top1": 50.0}]}))
    report = subprocess.run([sys.executable, "-m", "kd.report", str(tmp_path / "sweep"), "--metric",
                             "test_top1_at_best_val"], capture_output=True, text=True, cwd=tmp_path)
    assert report.returncode == 2
    assert ("--metric test_top1_at_best_val needs a validation split, and 1 job(s) of " in report.stderr
            and "Rerun the grid with data.val_size=N" in report.stderr), report.stderr


@pytest.mark.slow
def test_a_finished_folder_job_is_skipped_only_for_the_same_folder(tmp_path):
    """A folder's root is its content: the same run dir with another folder is refused, not reported as done."""
    pets, cars = write_folder(tmp_path / "pets", train=4, test=2), write_folder(tmp_path / "cars", train=4, test=2)
    run = ["data=folder", "data.image_size=8", "model=resnet8", "teacher=resnet8", "alpha=0", "trainer.epochs=1",
           "trainer.batch_size=4", "logger=none", f"hydra.run.dir={tmp_path / 'run'}"]
    first = run_cli([*run, f"data.root={pets}"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    again = run_cli([*run, f"data.root={pets}"], cwd=tmp_path)
    assert again.returncode == 0 and "already completed with this config (skipped" in again.stderr + again.stdout
    other = run_cli([*run, f"data.root={cars}"], cwd=tmp_path)
    assert other.returncode != 0
    assert "holds the completed results of a different config" in other.stderr
