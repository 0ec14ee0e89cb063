"""The CIFAR ResNets match the public KD benchmarks' shapes (RepDistiller's parameter counts)."""
import pytest
import torch

from kd.models import resnet as models

ALL = ["resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet8x4", "resnet32x4"]


@pytest.mark.parametrize("name, millions", [("resnet8", 0.084), ("resnet32", 0.473),
                                            ("resnet8x4", 1.234), ("resnet32x4", 7.434)])
def test_parameter_counts_match_the_benchmarks(name, millions):
    model = getattr(models, name)(num_classes=100)
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 3) == millions


@pytest.mark.parametrize("name, size", [(name, 16) for name in ALL] + [("resnet8", 32), ("resnet8x4", 32)])
def test_every_model_maps_images_to_class_logits(name, size):
    model = getattr(models, name)(num_classes=7).eval()
    with torch.no_grad():
        assert model(torch.zeros(2, 3, size, size)).shape == (2, 7)


def test_depth_must_be_6n_plus_2():
    with pytest.raises(ValueError, match="6n\\+2"):
        models.CifarResNet(10, (16, 16, 32, 64), 10)


def test_projection_shortcut_only_where_shape_changes():
    model = models.resnet20(10)
    projections = [b for b in model.layers if not isinstance(b.shortcut, torch.nn.Identity)]
    assert len(projections) == 2  # the first block of stages 2 and 3


@pytest.mark.parametrize("memory_format", [torch.channels_last, torch.contiguous_format])
@pytest.mark.parametrize("shape", [(64, 256, 8, 8), (5, 1280, 4, 4), (3, 512, 2, 2), (7, 100, 1, 1), (4, 64, 7, 5)])
def test_global_average_pooling_is_adaptive_pooling_to_one_bit_for_bit(shape, memory_format):
    """The networks' GlobalAvgPool (a mean, which vmap batches) gives nn.AdaptiveAvgPool2d(1)'s values and
    gradients exactly, so that swapping it in changed no result, checkpoint or cached teacher."""
    from kd.models.pooling import GlobalAvgPool

    torch.manual_seed(0)
    x = torch.randn(*shape).contiguous(memory_format=memory_format).requires_grad_()
    ours, theirs = GlobalAvgPool()(x), torch.nn.AdaptiveAvgPool2d(1)(x)
    upstream = torch.randn_like(ours)
    assert torch.equal(ours, theirs) and torch.equal(torch.flatten(ours, 1), torch.flatten(theirs, 1))
    assert torch.equal(*(torch.autograd.grad(y, x, upstream)[0] for y in (ours, theirs)))
