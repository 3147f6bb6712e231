"""The networks beyond the ResNets (model=vgg8, mobilenetv2, vit, torchvision): each builds, converts, trains a batch
on synthetic data and exports its CIM layers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cimexp.cim import CIMConv2d, CIMLinear, cim_layers
from cimexp.models import ViT, mobilenetv2, vgg8, vit
from cimexp.train import train

NETWORKS = {
    "vgg8": (["model=vgg8"], 7, CIMConv2d),  # 5 convs + the 1024-wide linear layer (+ the stem conv kept)
    "mobilenetv2": (["model=mobilenetv2", "model.width_mult=0.25"], None, CIMConv2d),
    "vit": (["model=vit", "model.dim=32", "model.depth=1", "model.heads=2", "model.mlp=32"], 4, CIMLinear),
    "torchvision": (["model=torchvision", "model.name=resnet18"], 19, CIMConv2d),
}


@pytest.mark.parametrize("name", list(NETWORKS))
def test_each_network_converts_trains_a_batch_and_exports(name, make_cfg, tiny_data, quiet) -> None:
    overrides, n_cim, kind = NETWORKS[name]
    _, objects = train(make_cfg([*tiny_data, *quiet, "logger=none", "debug=fdr", *overrides], name))
    assert objects["results"]["status"] == "finished"
    net = objects["module"].model
    layers = dict(cim_layers(net))
    assert layers and any(isinstance(layer, kind) for layer in layers.values())
    if n_cim is not None:
        assert len(layers) == n_cim - (1 if name == "vgg8" else 0)
    program = next(iter(layers.values())).cim_program()
    assert program.cell_codes.abs().sum() > 0
    assert objects["results"]["cim_summary"]["total"]["cim_layers"] == len(layers)


def test_what_each_network_keeps_digital() -> None:
    factory = lambda *a, **k: CIMConv2d(*a, **k)  # noqa: E731 - any conv factory: swaps the convs, not the linears
    net = vgg8(conv_layer=factory)
    assert type(net[0]) is nn.Conv2d and [type(m) for m in net if isinstance(m, nn.Linear)] == [nn.Linear] * 2
    assert len(list(cim_layers(net))) == 5
    import functools

    cim = functools.partial(CIMConv2d, adc_bits=4)
    net = vgg8(conv_layer=cim)
    assert type(net[0]) is nn.Conv2d and type(net[-1]) is nn.Linear  # the stem and the classifier
    net = mobilenetv2(conv_layer=cim, width_mult=0.25)
    depthwise = net.features[2].conv[1][0]
    assert type(depthwise) is CIMConv2d and depthwise.groups == depthwise.in_channels  # mapped group by group
    assert net.features[2].conv[0][0].act_signed  # the expansion conv reads the residual stream
    net = vit(conv_layer=cim, dim=32, depth=1, heads=2, mlp=32)
    assert type(net.embed) is nn.Linear and type(net.head) is nn.Linear
    assert all(layer.act_signed for _, layer in cim_layers(net))
    assert ViT(dim=32, depth=1, heads=2, mlp=32)(torch.rand(2, 3, 8, 8)).shape == (2, 10)  # positions interpolated
