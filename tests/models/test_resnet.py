"""The CIFAR ResNets of He et al. 2016: depths, parameter counts, shapes, memory formats."""

from __future__ import annotations

import pytest
import torch

from akd_ray.models.resnet import DEPTHS, CifarResNet

# Exact counts with option-B shortcuts (1x1 conv + BN projections); option A (He et al.'s CIFAR
# table: 0.27M for ResNet-20, 1.7M for ResNet-110) has 2,752 fewer at width 16.
PARAMS_10_CLASSES = {8: 78_042, 14: 175_258, 20: 272_474, 32: 466_906, 44: 661_338, 56: 855_770, 110: 1_730_714}


def num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("depth", DEPTHS)
def test_builds_with_exact_parameter_count(depth):
    assert num_params(CifarResNet(depth, 10)) == PARAMS_10_CLASSES[depth]


def test_parameter_counts_near_the_papers():
    assert 75_000 <= num_params(CifarResNet(8, 10)) <= 80_000  # ~78k
    assert 0.26e6 <= num_params(CifarResNet(20, 10)) <= 0.28e6  # 0.27M
    assert 1.69e6 <= num_params(CifarResNet(110, 10)) <= 1.75e6  # 1.7M
    # the head grows by 90 x (64 + 1) from 10 to 100 classes
    assert num_params(CifarResNet(20, 100)) - num_params(CifarResNet(20, 10)) == 90 * 65


def test_width_scales_channels():
    m = CifarResNet(8, 10, width=32)
    assert m.head.in_features == 128
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("depth", DEPTHS)
def test_output_shape(depth):
    model = CifarResNet(depth, 100).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)


@pytest.mark.parametrize("depth", [0, 2, 7, 9, 18, 21, 111])
def test_invalid_depth_raises(depth):
    with pytest.raises(ValueError, match="6n\\+2"):
        CifarResNet(depth, 10)


@pytest.mark.parametrize("depth", [8, 20])
def test_channels_last_matches_contiguous(depth):
    torch.manual_seed(0)
    model = CifarResNet(depth, 10).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        out = model.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_trains_in_channels_last():
    torch.manual_seed(0)
    model = CifarResNet(8, 10).to(memory_format=torch.channels_last)
    x = torch.randn(8, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    loss = torch.nn.functional.cross_entropy(model(x), torch.arange(8) % 10)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_projection_shortcuts_only_where_shape_changes():
    model = CifarResNet(20, 10)
    projections = [n for n, m in model.named_modules() if n.endswith("shortcut") and not isinstance(m, torch.nn.Identity)]
    assert projections == ["stages.1.0.shortcut", "stages.2.0.shortcut"]


def test_kaiming_init():
    torch.manual_seed(0)
    conv = CifarResNet(110, 10).stages[2][5].conv1  # 64 -> 64, 3x3: fan_out = 576
    assert conv.weight.std().item() == pytest.approx((2 / 576) ** 0.5, rel=0.05)


def test_build_model_table():
    from akd_ray.config import ResNet
    from akd_ray.models import build_model
    from akd_ray.tasks.base import Split, TaskData

    split = Split({"x": torch.zeros(2, 3, 32, 32, dtype=torch.uint8)}, torch.zeros(2, dtype=torch.int64))
    task = TaskData("cifar100", 100, "accuracy", split, split, split, to_inputs=lambda f, a: f)
    model = build_model(ResNet(kind="resnet", depth=14), task)
    assert isinstance(model, CifarResNet) and model.head.out_features == 100
