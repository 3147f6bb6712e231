"""ResNet-20 / ResNet-18 topology, conv-layer injection and initialisation."""

from __future__ import annotations

import functools
import math

import pytest
import torch
import torchvision
from torch import nn

from cimexp.models import resnet18, resnet20


class TaggedConv(nn.Conv2d):
    """Stand-in for a CIM layer: an ``nn.Conv2d`` subclass that remembers the keyword arguments it got."""

    def __init__(self, *args, tag: str = "cim", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.tag = tag
        self.call_kwargs = kwargs


def _convs(model: nn.Module) -> dict[str, nn.Conv2d]:
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def _param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_resnet20_matches_he_et_al():
    model = resnet20()
    assert _param_count(model) == 269_722
    assert len(_convs(model)) == 19
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert resnet20(num_classes=100)(torch.randn(1, 3, 32, 32)).shape == (1, 100)


def test_resnet20_injects_conv_layer_everywhere_but_stem():
    model = resnet20(conv_layer=functools.partial(TaggedConv, tag="x"))
    convs = _convs(model)
    assert type(convs.pop("conv1")) is nn.Conv2d
    assert all(isinstance(m, TaggedConv) and m.tag == "x" for m in convs.values())
    assert all(m.call_kwargs["bias"] is False for m in convs.values())
    assert type(model.fc) is nn.Linear


def test_resnet20_cim_first_conv():
    model = resnet20(conv_layer=TaggedConv, cim_first_conv=True)
    assert all(isinstance(m, TaggedConv) for m in _convs(model).values())


def test_resnet20_option_b_projects_with_conv_layer():
    model = resnet20(conv_layer=TaggedConv, shortcut="B")
    projections = [m for name, m in _convs(model).items() if "shortcut" in name]
    assert [m.kernel_size for m in projections] == [(1, 1), (1, 1)]
    assert all(isinstance(m, TaggedConv) for m in projections)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_resnet20_rejects_unknown_shortcut():
    with pytest.raises(ValueError, match=r"unknown shortcut 'C'; valid choices: A, B"):
        resnet20(shortcut="C")


def test_kaiming_init_reaches_conv_subclasses():
    torch.manual_seed(0)
    model = resnet20(conv_layer=TaggedConv)
    conv = model.layer3[1].conv1
    assert isinstance(conv, TaggedConv)
    fan_out = conv.out_channels * 3 * 3
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / fan_out), rel=0.05)


def test_resnet18_is_torchvision_topology():
    assert _param_count(resnet18()) == _param_count(torchvision.models.resnet18())
    model = resnet18(num_classes=7, conv_layer=TaggedConv)
    convs = _convs(model)
    assert type(convs.pop("conv1")) is nn.Conv2d
    assert all(isinstance(m, TaggedConv) for m in convs.values())
    assert "layer2.0.downsample.0" in convs
    assert _param_count(model) == _param_count(torchvision.models.resnet18(num_classes=7))
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 7)
    assert isinstance(resnet18(conv_layer=TaggedConv, cim_first_conv=True).conv1, TaggedConv)


@pytest.mark.parametrize("builder", [resnet18, resnet20], ids=lambda builder: builder.__name__)
def test_every_model_runs_forward_backward(builder):
    model = builder(num_classes=5, conv_layer=TaggedConv)
    size = 32 if builder is resnet20 else 64
    model(torch.randn(2, 3, size, size)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
