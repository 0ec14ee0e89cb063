"""Every grid cell composes and instantiates; typos and wrong types fail at composition."""
import itertools

import pytest
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf.errors import ValidationError

from conftest import compose_config
from kd.data.augment import FlipCrop, FlipCropRandAugment, NoAugment

ALPHAS = [0, 0.25, 0.5, 0.75, 1.0]
AUGS = {"none": NoAugment, "fc": FlipCrop, "fcra": FlipCropRandAugment}


@pytest.mark.parametrize("data", ["cifar100", "digits"])
def test_every_grid_cell_composes_and_instantiates(data):
    archs = set()
    for alpha, aug in itertools.product(ALPHAS, AUGS):
        cfg = compose_config([f"alpha={alpha}", f"aug={aug}", f"data={data}"], out_dir="unused")
        assert cfg.alpha == alpha
        assert type(instantiate(cfg.aug)) is AUGS[aug]
        assert callable(instantiate(cfg.loss))
        archs.add((cfg.model._target_, cfg.teacher.arch._target_))
    assert len(archs) == 1  # the grid varies alpha and aug only
    student = instantiate(cfg.model, num_classes=10)
    teacher = instantiate(cfg.teacher.arch, num_classes=10)
    optimizer = instantiate(cfg.optim.optimizer)(student.parameters())
    instantiate(cfg.optim.scheduler)(optimizer)
    assert sum(p.numel() for p in teacher.parameters()) > sum(p.numel() for p in student.parameters())


def test_paper_recipe_is_the_default():
    cfg = compose_config([], out_dir="unused")
    assert cfg.model._target_.endswith("resnet8x4") and cfg.teacher.arch._target_.endswith("resnet32x4")
    assert cfg.data._target_ == "kd.data.cifar100"
    opt, sched = cfg.optim.optimizer, cfg.optim.scheduler
    assert (opt.lr, opt.momentum, opt.weight_decay) == (0.05, 0.9, 5e-4)
    assert (cfg.trainer.batch_size, cfg.trainer.epochs) == (64, 240)
    assert list(sched.milestones) == [150, 180, 210] and sched.gamma == 0.1
    assert cfg.loss.temperature == 4.0
    assert instantiate(cfg.aug).pil_transforms(32)[0].padding == 4  # RandomCrop(32, padding=4)
    fcra = compose_config(["aug=fcra"], out_dir="unused").aug
    assert (fcra.num_ops, fcra.magnitude) == (2, 14)


def test_literal_paper_models_compose():
    cfg = compose_config(["model=resnet8", "teacher=resnet32"], out_dir="unused")
    assert sum(p.numel() for p in instantiate(cfg.model, num_classes=100).parameters()) == 83_892


def test_unknown_aug_option_fails_at_composition():
    with pytest.raises(ConfigCompositionException, match="aug"):
        compose_config(["aug=foo"])


def test_misspelled_key_fails_at_composition():
    with pytest.raises(ConfigCompositionException, match="epocs"):
        compose_config(["trainer.epocs=3"])


def test_wrong_type_fails_at_composition():
    with pytest.raises((ConfigCompositionException, ValidationError), match="ten"):
        compose_config(["trainer.epochs=ten"])


def test_crop_padding_defaults_to_an_eighth_of_the_image():
    fc = instantiate(compose_config(["aug=fc", "data=digits"], out_dir="unused").aug)
    assert [fc.pil_transforms(size)[0].padding for size in (32, 16)] == [4, 2]
    assert instantiate(compose_config(["aug=fc", "aug.padding=3"], out_dir="unused").aug).padding_for(32) == 3
