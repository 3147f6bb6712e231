"""ResNet-20 (CIFAR) and ResNet-18 (ImageNet), built float and placed on the crossbars by ``conv_layer``.

Both take ``conv_layer``, a factory called exactly like ``nn.Conv2d(in, out, kernel_size, stride=, padding=,
bias=False)`` (e.g. ``functools.partial(CIMConv2d, array_size=128)``), applied by
:func:`~cimexp.models.swap.on_crossbars` as for every other network. As in the paper's setup, the first conv
stays a plain ``nn.Conv2d`` unless ``cim_first_conv=True``, and the classifier is always a float ``nn.Linear``.
Module names follow torchvision (``conv1``, ``layer1.0.conv1``, ``fc``) for both networks.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from cimexp.models.swap import on_crossbars

SHORTCUTS = ("A", "B")
"""ResNet-20 shortcut options of He et al. 2016: A = zero-padding identity, B = 1x1 conv + BN projection."""


class _PadShortcut(nn.Module):
    """Option-A shortcut: subsample by ``stride`` and zero-pad the new channels, no parameters.

    ``[N, C, H, W] -> [N, C + extra_channels, H / stride, W / stride]``; the zero channels are split evenly
    before and after the input channels.
    """

    def __init__(self, stride: int, extra_channels: int) -> None:
        super().__init__()
        self.stride = stride
        self.pad_before = extra_channels // 2
        self.pad_after = extra_channels - self.pad_before

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_before, self.pad_after))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus shortcut: ``[N, in, H, W] -> [N, out, H / stride, W / stride]``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, shortcut: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            if shortcut == "A":
                self.shortcut = _PadShortcut(stride, out_channels - in_channels)
            else:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(in_channels, out_channels, 1, stride=stride, padding=0, bias=False),
                    nn.BatchNorm2d(out_channels),
                )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR ResNet of He et al. 2016, Sec. 4.2: a 3x3 stem and three stages of basic blocks.

    Input ``[N, 3, 32, 32]``; stages at 32x32, 16x16 and 8x8 with ``widths`` channels; global average pooling;
    output logits ``[N, num_classes]``.
    """

    def __init__(
        self,
        blocks_per_stage: int,
        num_classes: int,
        shortcut: str,
        widths: tuple[int, int, int] = (16, 32, 64),
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        in_channels = widths[0]
        for stage, width in enumerate(widths):
            stride = 1 if stage == 0 else 2
            blocks = []
            for block in range(blocks_per_stage):
                blocks.append(BasicBlock(in_channels, width, stride if block == 0 else 1, shortcut))
                in_channels = width
            self.add_module(f"layer{stage + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], num_classes)
        _kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _kaiming_init(model: nn.Module) -> None:
    """He-normal conv weights (fan-out, as torchvision), unit-scale zero-shift BN; also reaches CIM subclasses."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def resnet20(
    num_classes: int = 10,
    conv_layer: Callable[..., nn.Module] | None = None,
    cim_first_conv: bool = False,
    shortcut: str = "A",
) -> nn.Module:
    """ResNet-20 for 32x32 inputs: 3 stages x 3 basic blocks, 16/32/64 channels.

    With option-A shortcuts it has 0.27M parameters (269,722 for 10 classes).

    Args:
        num_classes: classifier outputs (10 for CIFAR-10, 100 for CIFAR-100).
        conv_layer: conv factory called like ``nn.Conv2d``; default ``nn.Conv2d``.
        cim_first_conv: build the stem conv with ``conv_layer`` too (default: plain ``nn.Conv2d``).
        shortcut: ``"A"`` (zero-padding identity) or ``"B"`` (1x1 conv + BN projection built with ``conv_layer``)
            where the shape changes.

    Returns:
        The network, mapping ``[N, 3, 32, 32]`` images to ``[N, num_classes]`` logits.
    """
    if shortcut not in SHORTCUTS:
        raise ValueError(f"unknown shortcut {shortcut!r}; valid choices: {', '.join(SHORTCUTS)}")
    return on_crossbars(CifarResNet(3, num_classes, shortcut), conv_layer, _kept(cim_first_conv))


def resnet18(
    num_classes: int = 1000,
    conv_layer: Callable[..., nn.Module] | None = None,
    cim_first_conv: bool = False,
) -> nn.Module:
    """torchvision's ResNet-18 (7x7 stem, max-pool, 4 stages) with its convs built by ``conv_layer``.

    The 1x1 downsample convs are built with ``conv_layer`` too; the stem ``conv1`` stays float unless
    ``cim_first_conv``. Weights keep torchvision's initialisation (copied into the swapped layers).

    Args:
        num_classes: classifier outputs.
        conv_layer: conv factory called like ``nn.Conv2d``; default: plain torchvision model.
        cim_first_conv: build the stem conv with ``conv_layer`` too.

    Returns:
        The network, mapping ``[N, 3, 224, 224]`` images to ``[N, num_classes]`` logits.
    """
    model = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    return on_crossbars(model, conv_layer, _kept(cim_first_conv))


def _kept(cim_first_conv: bool) -> str | list[str]:
    """What stays digital: the stem conv (unless ``cim_first_conv``) and the classifier ``fc``."""
    return ["fc"] if cim_first_conv else "first_and_last"
