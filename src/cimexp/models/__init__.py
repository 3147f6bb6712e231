"""Networks of the paper (ResNet-20 for CIFAR, ResNet-18 for ImageNet) with injectable conv layers, and networks
beyond it (VGG-8, MobileNetV2, a small ViT, any torchvision model) put on the crossbars by ``cimexp.cim.convert``.

``resnet20(conv_layer=functools.partial(CIMConv2d, array_size=128))`` builds a CIM network (configs name the
builders directly: ``model._target_: cimexp.models.resnet20``): every builder builds the float network and places it
with ``on_crossbars`` (``cimexp.cim.convert`` for a CIM factory, ``swap_convs`` for any other conv factory);
``load_float_weights`` loads a float checkpoint into the result.
"""

from cimexp.models.networks import ViT, mobilenetv2, torchvision_model, vgg8, vit
from cimexp.models.resnet import resnet18, resnet20
from cimexp.models.swap import ConvFactory, load_float_weights, on_crossbars, swap_convs

__all__ = [
    "ViT",
    "mobilenetv2",
    "torchvision_model",
    "vgg8",
    "vit",
    "ConvFactory",
    "load_float_weights",
    "on_crossbars",
    "resnet18",
    "resnet20",
    "swap_convs",
]
