"""convert(): any network's Conv2d and Linear layers onto the crossbars by a policy, weights copied, a report."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models import resnet18

from cimexp.cim import CIMConv2d, CIMLinear, calibrate, cim_layers, convert


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),  # stem: sees the image
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1, bias=False),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16),  # depthwise
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 12),
        nn.LayerNorm(12),
        nn.Linear(12, 10),  # classifier
    )


def test_the_default_policy_keeps_the_first_layer_and_the_classifier_digital():
    net = _net()
    floats = {name: module.weight.detach().clone() for name, module in net.named_modules() if hasattr(module, "weight")}
    net.eval()
    report = convert(net, adc_bits=3, signed_inputs=["9"])
    assert report.converted == ["2", "4", "7"]  # the depthwise conv too, each channel on its own columns
    assert report.kept == {"0": "the first layer (sees the input image)", "9": "the last linear layer (the classifier)"}
    assert net[4].groups == 16 and net[4].mapping.groups_per_array == 14
    assert isinstance(net[2], CIMConv2d) and isinstance(net[7], CIMLinear) and type(net[9]) is nn.Linear
    assert net[2].adc_bits == 3 and not net[2].training  # options given, mode kept
    assert torch.equal(net[2].weight, floats["2"]) and torch.equal(net[7].weight.reshape(12, 16), floats["7"])
    assert "3 layers on CIM arrays, 2 kept digital" in str(report)
    calibrate(net, torch.rand(4, 3, 8, 8))
    assert net(torch.rand(2, 3, 8, 8)).shape == (2, 10)
    assert convert(net).converted == []  # converting again changes nothing


def test_keep_none_regexes_and_signed_inputs():
    net = _net()
    report = convert(net, keep="none", signed_inputs=["7", "9"])
    assert report.converted == ["0", "2", "4", "7", "9"] and list(report.kept) == []
    assert [net[i].act_signed for i in (0, 2, 7, 9)] == [False, False, True, True]
    net = _net()
    assert convert(net, keep=["0", "7"]).converted == ["2", "4", "9"]
    with pytest.raises(ValueError, match="invalid keep='first'; valid choices: first_and_last, none"):
        convert(_net(), keep="first")


def test_a_torchvision_resnet18_converts():
    """(It trains a batch in tests/models/test_networks.py.)"""
    net = resnet18(num_classes=10).eval()
    report = convert(net, weight_granularity="column", psum_granularity="column")
    assert len(report.converted) == 19 and set(report.kept) == {"conv1", "fc"}
    assert len(list(cim_layers(net))) == 19 and not net.layer1[0].conv1.training
