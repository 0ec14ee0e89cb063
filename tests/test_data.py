"""The real torchvision CIFAR loaders on small fixture files in CIFAR's on-disk format; digits."""
import hashlib
import pickle

import numpy as np
import pytest
import torch
import torchvision
from hydra.errors import InstantiationException

from conftest import compose_config, run_cli
from kd.data.datasets import DataUnavailableError, cifar10, cifar100, digits
from kd.runs.results import read_results
from kd.runs.job import train

MEAN, STD = [0.5] * 3, [0.25] * 3


def _md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


def _write(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f)


@pytest.fixture
def cifar100_fixture(tmp_path, monkeypatch):
    """A 6-train / 4-test image CIFAR-100 in the real layout (`cifar-100-python/{train,test,meta}`)."""
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(0)
    splits = {}
    for name, n in (("train", 6), ("test", 4)):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(x) for x in rng.integers(0, 100, n)]
        _write(folder / name, {"data": data, "fine_labels": labels, "coarse_labels": [0] * n, "filenames": []})
        splits[name] = (data, labels)
    _write(folder / "meta", {"fine_label_names": [f"class{i}" for i in range(100)], "coarse_label_names": []})
    # torchvision checks the files' md5 against the real dataset's; point it at the fixture's.
    cls = torchvision.datasets.CIFAR100
    monkeypatch.setattr(cls, "train_list", [["train", _md5(folder / "train")]])
    monkeypatch.setattr(cls, "test_list", [["test", _md5(folder / "test")]])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": _md5(folder / "meta")})
    return tmp_path, splits


def test_cifar100_loads_the_on_disk_format_as_uint8_chw(cifar100_fixture):
    root, splits = cifar100_fixture
    data = cifar100(str(root), MEAN, STD, download=False)
    assert data.name == "cifar100" and data.num_classes == 100
    assert data.train_images.shape == (6, 3, 32, 32) and data.train_images.dtype == torch.uint8
    assert data.test_images.shape == (4, 3, 32, 32)
    raw, labels = splits["train"]
    # CIFAR rows are channel planes of 1024 pixels each: R, then G, then B.
    assert torch.equal(data.train_images[0], torch.from_numpy(raw[0].reshape(3, 32, 32)))
    assert data.train_labels.tolist() == labels


def test_cifar_offline_without_files_names_the_path_and_the_fix(tmp_path):
    root = tmp_path / "nothing-here"
    with pytest.raises(DataUnavailableError) as err:
        cifar10(str(root), MEAN, STD, download=False)
    assert str(root) in str(err.value) and "data.download" in str(err.value)
    assert not root.exists()


def test_cifar_download_failure_is_a_clear_error_not_a_urllib_traceback(tmp_path, monkeypatch):
    import urllib.request

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.setattr(urllib.request.OpenerDirector, "open", offline)
    root = tmp_path / "nonexistent" / "cifar"
    with pytest.raises(DataUnavailableError) as err:
        cifar100(str(root), MEAN, STD, download=True)
    message = str(err.value)
    assert str(root) in message and "could not be downloaded" in message and "KD_DATA_DIR" in message
    assert not (tmp_path / "nonexistent").exists()  # the failed download left no dirs behind


def test_corrupt_cifar_files_are_reported(cifar100_fixture):
    root, _ = cifar100_fixture
    (root / "cifar-100-python" / "train").write_bytes(b"garbage")
    with pytest.raises(DataUnavailableError, match="cifar100"):
        cifar100(str(root), MEAN, STD, download=False)


def test_digits_split_is_deterministic_stratified_and_cifar_shaped():
    a, b = digits(MEAN, STD), digits(MEAN, STD)
    assert torch.equal(a.train_images, b.train_images) and torch.equal(a.test_labels, b.test_labels)
    assert a.train_images.shape[1:] == (3, 16, 16) and a.train_images.dtype == torch.uint8
    assert len(a.train_labels) + len(a.test_labels) == 1797
    assert a.test_labels.bincount().min() >= 30  # every digit is in the test split
    assert digits(MEAN, STD, image_size=32).train_images.shape[1:] == (3, 32, 32)


def test_the_data_step_loads_and_reports_the_digits_without_training(tmp_path):
    run = tmp_path / "run"
    proc = run_cli(["stage=data", "data=digits", "logger=none", f"hydra.run.dir={run}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "data digits ready: 300 training and 360 test images, 10 classes, in " in proc.stdout
    result = read_results(run / "results.json")
    assert result["status"] == "completed" and result["data_location"].endswith("digits.csv.gz")
    assert result["data_bytes"] > 0 and "history" not in result and not (run / "checkpoint.pt").exists()


def test_the_data_step_verifies_cifar_on_disk(cifar100_fixture, tmp_path):
    root, _ = cifar100_fixture
    cfg = compose_config(["stage=data", "data=cifar100", f"data.root={root}", "data.download=false", "logger=none"],
                         out_dir=tmp_path / "run")
    found = train(cfg)
    folder = root / "cifar-100-python"
    assert found["data_location"] == str(folder) and found["data_files"] == 3
    assert found["data_bytes"] == sum(p.stat().st_size for p in folder.iterdir())
    assert (found["train_images"], found["test_images"], found["num_classes"]) == (6, 4, 100)
    (folder / "test").write_bytes(b"truncated")
    with pytest.raises(InstantiationException, match="incomplete or corrupt"):  # torchvision's md5 check
        train(compose_config(["stage=data", "data=cifar100", f"data.root={root}", "data.download=false",
                              "logger=none"], out_dir=tmp_path / "run2"))


def test_the_data_step_on_a_missing_root_fails_clearly_and_creates_nothing(tmp_path):
    root = tmp_path / "nonexistent" / "cifar"
    proc = run_cli(["stage=data", "data=cifar100", f"data.root={root}", "data.download=false", "logger=none",
                    f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert proc.returncode == 1
    assert f"cifar100 is not under {root}" in proc.stderr and "set data.download=true" in proc.stderr, proc.stderr
    assert not (tmp_path / "nonexistent").exists()


def test_rank_shares_of_a_global_batch_are_the_single_process_batch():
    """kd/data/order.py: a data-parallel run's ranks together see exactly the batches one process sees."""
    from kd.data.order import epoch_order, global_batches

    order = epoch_order(10, torch.Generator().manual_seed(0), shuffle=True)
    single = list(global_batches(order, 4))
    shares = [list(global_batches(order, 4, rank, 3)) for rank in range(3)]
    assert [b.tolist() for b in single] == [torch.cat([s[k] for s in shares]).tolist() for k in range(len(single))]
    assert [len(s[0]) for s in shares] == [2, 1, 1]  # 4 images over 3 ranks: sizes differ by at most one
    assert sorted(torch.cat(single).tolist()) == list(range(10))
