"""Networks of the paper (ResNet-20 for CIFAR, ResNet-18 for ImageNet) with injectable conv layers, and networks
beyond it (VGG-8, MobileNetV2, a small ViT, any torchvision model) put on the crossbars by ``cimexp.cim.convert``.

``build_model("resnet20", conv_layer=functools.partial(CIMConv2d, array_size=128))`` builds a CIM network;
``swap_convs`` converts an existing float model, and ``load_float_weights`` loads a float checkpoint into it.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from cimexp.models.networks import ViT, mobilenetv2, torchvision_model, vgg8, vit
from cimexp.models.resnet import resnet18, resnet20
from cimexp.models.swap import ConvFactory, load_float_weights, swap_convs

MODELS: dict[str, Callable[..., nn.Module]] = {"resnet18": resnet18, "resnet20": resnet20}
"""Model builders by name; each takes ``num_classes``, ``conv_layer`` and ``cim_first_conv``."""


def build_model(name: str, **kwargs) -> nn.Module:
    """Build the registered model ``name`` with builder keyword arguments ``kwargs``."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid choices: {', '.join(sorted(MODELS))}")
    return MODELS[name](**kwargs)


__all__ = [
    "MODELS",
    "ViT",
    "mobilenetv2",
    "torchvision_model",
    "vgg8",
    "vit",
    "ConvFactory",
    "build_model",
    "load_float_weights",
    "resnet18",
    "resnet20",
    "swap_convs",
]
