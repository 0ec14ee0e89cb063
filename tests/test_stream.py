"""The streaming source (kd/data/stream.py) on full-size JPEGs: the device pipeline's order, augmentations and
resume, decoded per batch in workers; the ImageNet recipe's crops; what it refuses; ImageNet's and Tiny ImageNet's
own layouts (kd/data/imagenet_layouts.py); and the whole path through a real grid."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms as T

from conftest import TRAIN_SCRIPT, cell_dir, compose_config, run_cli
from image_folders import write_photo_folder, write_tiny_imagenet
from kd.config import TeacherView, defining_config
from kd.data.augment import FlipCrop, FlipCropRandAugment, NoAugment
from kd.data.image_files import ImageFiles, read_image, should_stream
from kd.data.image_folder import ImageFolderError, scan
from kd.data.imagenet_layouts import imagenet, tiny_imagenet
from kd.data.pipeline import DevicePipeline, Normalize
from kd.data.resized_crop import RATIO, SCALE, center_view, random_boxes
from kd.data.stream import StreamError, StreamPipeline, check_streamable
from kd.runs.results import RESULTS_FILE, collect_sweep, read_results
from kd.training.teacher import teacher_recipe
from reliability import ONE_THREAD, kill_after_checkpoint, metrics, same_weights

CPU = torch.device("cpu")
SIZE = 48  # pixels the tests stream at: full-size files, small crops, fast steps


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """kd's folder layout: 3 classes of full-size (250-500 x 200-500 px) JPEGs, 12 training and 6 test images."""
    return write_photo_folder(tmp_path_factory.mktemp("photos"), {"train": 12, "test": 6}, classes=3)


def train_files(root: Path, size: int = SIZE, crop_pct: float = 1.0) -> tuple[ImageFiles, torch.Tensor]:
    found = scan(root)
    return ImageFiles(np.array(found.files("train")), size, crop_pct), found.labels("train")


def stream(files, labels, aug, workers: int = 0, seed: int = 0) -> StreamPipeline:
    normalize = Normalize((0.5,) * 3, (0.25,) * 3, CPU, channels_last=False)
    return StreamPipeline(files, labels, aug, normalize, 5, torch.Generator().manual_seed(seed), True, 3, workers)


def epochs(batches, n: int = 2) -> list[tuple[torch.Tensor, ...]]:
    return [batch for _ in range(n) for batch in batches]


def same_batches(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for p, q in zip(a, b) for x, y in zip(p, q))


@pytest.mark.parametrize("aug", [NoAugment(), FlipCrop(), FlipCropRandAugment(form="grouped")], ids=["none", "fc", "fcra"])
def test_a_stream_yields_the_in_memory_pipelines_batches_for_the_same_seed(photos, aug):
    """The same order, labels, indices and (cifar recipe) augmentation draws as DevicePipeline on the same images:
    the loop cannot tell where its batches came from."""
    files, labels = train_files(photos)
    in_memory = torch.stack([center_view(read_image(str(p)), SIZE, 1.0) for p in files.paths])
    normalize = Normalize((0.5,) * 3, (0.25,) * 3, CPU, channels_last=False)
    device = DevicePipeline(in_memory, labels, aug, normalize, 5, torch.Generator().manual_seed(0), True, 3)
    streamed = epochs(stream(files, labels, aug))
    assert len(streamed) == 6 and streamed[0][0].shape == (5, 3, SIZE, SIZE)
    assert same_batches(streamed, epochs(device))


def test_the_imagenet_recipe_crops_each_file_alike_whatever_the_worker_count(photos):
    """RandomResizedCrop from the full-size file in the workers, from a seed per batch that the main process
    draws: 0 and 2 workers give the same batches; they are not the clean view."""
    files, labels = train_files(photos)
    aug = FlipCropRandAugment(recipe="imagenet", form="grouped")
    in_workers = epochs(stream(files, labels, aug, workers=2))
    assert same_batches(in_workers, epochs(stream(files, labels, aug, workers=0)))
    clean = epochs(stream(files, labels, NoAugment()))
    assert all(x.shape == y.shape for (x, *_), (y, *_) in zip(in_workers, clean))
    assert not any(torch.equal(x, y) for (x, *_), (y, *_) in zip(in_workers, clean))


def test_a_stream_resumes_an_epoch_from_its_generators_state(photos):
    """Resume is at the epoch: the generator's state saved at an epoch's end replays the next epoch's draws."""
    files, labels = train_files(photos)
    aug = FlipCrop(recipe="imagenet")
    uninterrupted = stream(files, labels, aug)
    epochs(uninterrupted, 1)
    state = uninterrupted.generator.get_state()
    second = epochs(uninterrupted, 1)
    resumed = stream(files, labels, aug, seed=123)
    resumed.generator.set_state(state)
    assert same_batches(epochs(resumed, 1), second)


def test_a_streamed_pack_step_never_syncs_with_the_host(photos, tmp_path):
    """A pack of an alpha=0 and a distilling cell on streamed fcra (ImageNet recipe) batches from 2 workers: each
    step of an epoch after the first (which draws the epoch's order and crop seeds, one read) neither reads the
    device nor copies host data made in the step (tests/test_sync_guard.py's guard). The workers are started by
    an unwatched epoch first: forked inside the guard's dispatch mode, they would run every op through it."""
    from conftest import FAST
    from kd.data.datasets import folder
    from kd.models.resnet import resnet8
    from kd.training.capture import EAGER
    from kd.training.engine import Cell, autocast_for, make_batches, make_teaching, train_one_epoch
    from kd.training.students import make_pack
    from kd.training.sync_guard import OpRecord

    cfgs = [compose_config([*FAST, "model=resnet8", "teacher=resnet8", "aug=fcra", f"alpha={alpha}",
                            "trainer.device=cpu", "trainer.batch_size=4", "trainer.num_workers=2"],
                           out_dir=tmp_path / str(alpha)) for alpha in (0.0, 0.5)]
    splits = folder(str(photos), str(tmp_path / "cache"), image_size=16, stream="true", aug_recipe="imagenet")
    assert isinstance(splits.train_images, ImageFiles)
    cells = [Cell(c, Path(c.out_dir), {}, lambda row, step: None, f"cell{i}", "") for i, c in enumerate(cfgs)]
    teacher = resnet8(num_classes=3).eval()
    update = make_pack(cells, 3, CPU, EAGER, teacher, torch.zeros(2, 3, 16, 16))
    aug, autocast = FlipCropRandAugment(form="select", recipe="imagenet"), autocast_for(CPU, False)
    batches = make_batches(cfgs[0], splits, "train", aug, CPU, shuffle=True)
    assert isinstance(batches, StreamPipeline)
    teaching = make_teaching(cfgs[0], teacher, splits, aug, batches, {TeacherView.same}, CPU, autocast, EAGER)
    train_one_epoch(update, batches, teaching, autocast, 0, set())  # starts the workers outside the guard's mode
    record = OpRecord()
    with record.watch(batches, skip=1) as steps:
        stats = train_one_epoch(update, steps, teaching, autocast, 1, set())
    assert record.steps == len(batches) - 1 == 2 and all(st["images"] == 12 for st in stats)
    record.check()


def test_random_resized_boxes_keep_torchvisions_scale_and_ratio_and_fall_back_to_a_centre_crop():
    boxes = random_boxes([(350, 400)] * 2000, torch.Generator().manual_seed(0))
    for top, left, h, w in boxes:
        assert 0 <= top <= 350 - h and 0 <= left <= 400 - w
        assert SCALE[0] * 0.97 <= h * w / (350 * 400) <= SCALE[1]
        assert RATIO[0] * 0.95 <= w / h <= RATIO[1] * 1.05
    torch.manual_seed(0)
    theirs = [T.RandomResizedCrop.get_params(torch.zeros(3, 350, 400), list(SCALE), list(RATIO)) for _ in range(2000)]
    share = [np.mean([h * w / (350 * 400) for _, _, h, w in b]) for b in (boxes, theirs)]
    aspect = [np.mean([w / h for _, _, h, w in b]) for b in (boxes, theirs)]
    assert abs(share[0] - share[1]) < 0.02 and abs(aspect[0] - aspect[1]) < 0.02  # torchvision's distribution
    # a strip no box of ratio 3/4-4/3 and 8% of its area fits: torchvision's centre crop at the nearest ratio
    assert random_boxes([(10, 1000)], torch.Generator().manual_seed(0)) == [(0, 493, 10, 13)]


def test_the_imagenet_recipe_on_an_in_memory_batch_and_in_the_reference_pipeline():
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    aug = FlipCrop(recipe="imagenet")
    out = aug(images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and not torch.equal(out, images)
    assert isinstance(aug.pil_transforms(32)[0], T.RandomResizedCrop)
    with pytest.raises(ValueError, match="aug.recipe='imagent' must be one of cifar, imagenet"):
        FlipCrop(recipe="imagent")


def test_auto_streams_above_the_budget_and_says_the_rule(caplog):
    caplog.set_level("INFO")
    counts = {"train": 1_281_167, "test": 50_000}
    assert should_stream("auto", counts, 224, 16.0)
    assert "decode to 200.38 GB, above data.stream_above_gb=16" in caplog.text
    assert not should_stream("auto", {"train": 100_000, "test": 10_000}, 64, 16.0)
    assert should_stream("True", {"train": 10}, 32, 16.0) and not should_stream("false", counts, 224, 16.0)
    with pytest.raises(ValueError, match="data.stream=maybe must be one of auto, true, false"):
        should_stream("maybe", counts, 224, 16.0)


@pytest.mark.parametrize("override, says", [
    ("trainer.augment_scope=epoch", "trainer.augment_scope=epoch augments the whole split held on the device"),
    ("trainer.teacher_view=clean", "trainer.teacher_view=clean reads any image of the split on demand"),
    ("trainer.pipeline=dataloader", "trainer.pipeline=dataloader is the in-memory reference"),
    ("aug=fccutmixpick", "aug=fccutmixpick picks its batch from a pool the teacher scores")])
def test_a_stream_refuses_what_it_cannot_serve_by_name(override, says):
    from hydra.utils import instantiate

    cfg = compose_config(["data=digits", override], out_dir="unused")
    with pytest.raises(StreamError, match=says):
        check_streamable(cfg.trainer, instantiate(cfg.aug), "photos")


def test_the_recipe_is_part_of_a_cells_identity_and_old_identities_are_unchanged():
    fc = compose_config(["data=digits", "aug=fc"], out_dir="unused")
    resized = compose_config(["data=digits", "aug=fc", "aug.recipe=imagenet"], out_dir="unused")
    assert "recipe" not in defining_config(fc)["aug"]  # what a cell recorded before the key: still skipped, resumed
    assert defining_config(resized)["aug"]["recipe"] == "imagenet"
    folder = compose_config(["data=folder", "data.root=/x", "aug=fc"], out_dir="unused")
    assert {"stream", "crop_pct", "aug_recipe"}.isdisjoint(teacher_recipe(folder, None)["data"])  # cached teachers
    inet = compose_config(["data=imagenet", "data.root=/x", "aug=fcra"], out_dir="unused")
    assert inet.aug.recipe == "imagenet" and inet.teacher.aug.recipe == "imagenet"


def test_imagenet_and_tiny_imagenet_roots_that_are_not_their_layouts_fail_early_naming_it(tmp_path):
    with pytest.raises(ImageFolderError, match=r"does not exist.*ROOT/train/<wnid>/<image>.JPEG and ROOT/val/<wnid>"):
        imagenet(str(tmp_path / "nowhere"), str(tmp_path / "cache"), [0.5] * 3, [0.25] * 3)
    flat = write_photo_folder(tmp_path / "flat", {"train": 4}, classes=2, size=(40, 30))
    (flat / "val").mkdir()
    (flat / "val" / "ILSVRC2012_val_00000001.JPEG").write_bytes(b"")  # val/ as the archive has it: no class folders
    with pytest.raises(ImageFolderError, match=r"val holds no class folder.*sorted into their class folders"):
        imagenet(str(flat), str(tmp_path / "cache"), [0.5] * 3, [0.25] * 3)
    tiny = write_tiny_imagenet(tmp_path / "tiny", ["n01", "n02"], train=2, val=1)
    (tiny / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn99\t0\t0\t63\t63\n")
    with pytest.raises(ImageFolderError, match=r"line 1 \('val_0.JPEG\\tn99.*names no image of val/images/ with a wnid"):
        tiny_imagenet(str(tiny), str(tmp_path / "cache"))
    (tiny / "val" / "val_annotations.txt").unlink()
    with pytest.raises(ImageFolderError, match=r"has no val/val_annotations.txt. kd reads Tiny ImageNet as .*tiny/wnids.txt, .*tiny/train/<wnid>/images"):
        tiny_imagenet(str(tiny), str(tmp_path / "cache"))


def test_tiny_imagenet_in_its_real_layout_is_decoded_into_memory_and_trains(tmp_path):
    root = write_tiny_imagenet(tmp_path / "tiny-imagenet-200", ["n01443537", "n01629819", "n01641577"], train=6, val=2)
    splits = tiny_imagenet(str(root), str(tmp_path / "cache"))
    assert splits.train_images.shape == (18, 3, 64, 64) and splits.train_images.dtype == torch.uint8
    assert splits.test_labels.tolist() == [0, 1, 2, 0, 1, 2]  # from val_annotations.txt, in its order
    out = tmp_path / "run"
    done = run_cli(["data=tiny_imagenet", f"data.root={root}", "model=resnet8", "alpha=0", "trainer.epochs=1",
                    "trainer.batch_size=6", "logger=none", f"hydra.run.dir={out}"], cwd=tmp_path, env=ONE_THREAD)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "data.stream=auto: 24 images at 64 px decode to 0.00 GB, within" in done.stdout + done.stderr
    assert read_results(out / RESULTS_FILE)["status"] == "completed"


GRID = ["data=folder", "data.image_size=224", "data.stream=true", "data.aug_recipe=imagenet", "data.crop_pct=0.875",
        "model=resnet8", "teacher=resnet8", "teacher.epochs=1", "teacher.min_top1=0", "teacher.batch_size=6",
        "trainer.batch_size=6", "trainer.eval_batch_size=6", "trainer.num_workers=2", "logger=none"]


@pytest.mark.slow
def test_a_streamed_grid_at_224_px_trains_every_cell_and_reports(photos, tmp_path):
    """The issue's grid on full-size JPEGs: ResNet34 -> ResNet18, aug none/fc/fcra x alpha 0/0.5, streamed at 224 px,
    then kd-report."""
    out = tmp_path / "grid"
    args = ["-m", *GRID, f"data.root={photos}", "aug=none,fc,fcra", "alpha=0,0.5", "trainer.epochs=1",
            "model=resnet18", "teacher=resnet34", f"hydra.sweep.dir={out}"]  # the ImageNet pair's networks
    done = run_cli(args, cwd=tmp_path, env=ONE_THREAD)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    results = collect_sweep(out)
    assert len(results) == 6 and all(r["status"] == "completed" for r in results)
    assert {r["config"]["aug"].get("recipe") for r in results if r["aug"] != "none"} == {"imagenet"}
    assert {(r["config"]["model"]["_target_"], r["config"]["teacher"]["arch"]["_target_"]) for r in results} == {
        ("kd.models.imagenet_resnet.resnet18", "kd.models.imagenet_resnet.resnet34")}
    assert "data.stream=true: streaming each batch from its files" in done.stdout + done.stderr
    report = subprocess.run([sys.executable, "-m", "kd.report", str(out)], capture_output=True, text=True,
                            cwd=tmp_path, env={**os.environ, **ONE_THREAD})
    assert report.returncode == 0, report.stderr[-3000:]
    assert all(aug in report.stdout for aug in ("none", "fc", "fcra"))


@pytest.mark.chaos
def test_a_streamed_pack_killed_mid_epoch_resumes_to_the_uninterrupted_result(photos, tmp_path):
    """Resume is at the epoch: killed in epoch 2, the pack repeats it from its start with the same draws."""
    grid = [*GRID, f"data.root={photos}", "data.image_size=64", "aug=fcra", "alpha=0,0.5", "trainer.epochs=3",
            "trainer.deterministic=true", "model=resnet18", "teacher=resnet34"]
    reference = tmp_path / "reference"
    done = run_cli(["-m", *grid, f"hydra.sweep.dir={reference}"], cwd=tmp_path, env=ONE_THREAD)
    assert done.returncode == 0, done.stderr[-3000:]
    killed = tmp_path / "killed"
    args = ["-m", *grid, f"hydra.sweep.dir={killed}"]
    jobs = [cell_dir(killed, grid, alpha).name for alpha in ("alpha=0", "alpha=0.5")]
    kill_after_checkpoint(TRAIN_SCRIPT, args, killed / jobs[1] / "checkpoint.pt", 1, tmp_path / "killed.log",
                          then=0.3)  # in epoch 2
    assert not (killed / jobs[1] / RESULTS_FILE).exists()  # SIGKILL: no results.json, a checkpoint at epoch 1
    done = run_cli(args, cwd=tmp_path, env=ONE_THREAD)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from" in done.stdout + done.stderr
    for job in jobs:
        resumed, uninterrupted = read_results(killed / job / RESULTS_FILE), read_results(reference / job / RESULTS_FILE)
        assert metrics(resumed) == metrics(uninterrupted), job
        assert same_weights(killed / job / "checkpoint.pt", reference / job / "checkpoint.pt"), job
