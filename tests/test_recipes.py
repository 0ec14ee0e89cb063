"""Recipes as their authors ran them (issue 43, item 7): the small differences from the references' code that kd had."""
from __future__ import annotations

import pytest
from hydra.utils import instantiate

from tests.conftest import compose_config

@pytest.mark.parametrize("loss", ["ab", "fsp"])
@pytest.mark.parametrize("pair, lr", [("resnet32x4-shufflev2", 0.01), ("vgg13-mobilenetv2", 0.01),
                                      ("resnet32x4-resnet8x4", 0.05)])
def test_first_stage_trains_at_the_students_lr_as_repdistillers_init(loss, pair, lr):
    """RepDistiller's train_student.py sets opt.learning_rate = 0.01 for MobileNetV2/ShuffleV1/ShuffleV2 students
    before init() (helper/pretrain.py), which trains AB's and FSP's first stage at opt.learning_rate."""
    cfg = compose_config([f"pair={pair}", f"loss={loss}"])
    assert cfg.optim.optimizer.lr == lr  # the main stage's, from conf/pair/
    assert instantiate(cfg.loss).first_stage_lr == lr


def test_cifar100_is_normalized_with_the_references_constants():
    """RepDistiller's dataset/cifar100.py and mdistiller's mdistiller/dataset/cifar100.py both normalize with these:
    their published teachers were trained on them."""
    data = compose_config(["data=cifar100"]).data
    assert list(data.mean) == [0.5071, 0.4867, 0.4408] and list(data.std) == [0.2675, 0.2565, 0.2761]
