"""Networks beyond the paper's ResNets, put on the crossbars by :func:`cimexp.cim.convert`: VGG-8 (NeuroSim's
CIFAR-10 network), a MobileNetV2 for CIFAR, a small vision transformer for CIFAR, and any torchvision
classification model by name.

Every builder takes ``num_classes`` and ``conv_layer`` like the ResNets (``conf/model/*.yaml``; ``conv_layer`` is
the ``cim`` group's layer factory): the float network is built, then converted with the factory's CIM settings,
keeping the first layer and the classifier digital unless ``keep`` says otherwise. With ``cim=none`` (a plain
``nn.Conv2d`` factory) the network stays float.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torchvision
from torch import nn

from cimexp.models.swap import on_crossbars


def vgg8(
    num_classes: int = 10,
    conv_layer: Callable[..., nn.Module] = nn.Conv2d,
    keep: str | Sequence[str] = "first_and_last",
) -> nn.Module:
    """VGG-8 as NeuroSim benchmarks it on CIFAR-10: 2x128, pool, 2x256, pool, 2x512, pool (3x3 convs), then
    fully connected 1024 and ``num_classes``; here with BatchNorm after every conv so that it trains in a few
    epochs. 6 convs and 2 linear layers; all inputs but the image follow a ReLU."""
    layers: list[nn.Module] = []
    channels = 3
    for width in (128, 128, "pool", 256, 256, "pool", 512, 512, "pool"):
        if width == "pool":
            layers.append(nn.MaxPool2d(2))
            continue
        layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        channels = width
    net = nn.Sequential(
        *layers,
        nn.AdaptiveAvgPool2d(4),  # 4x4 already for 32x32 images; lets smaller ones through (tests)
        nn.Flatten(),
        nn.Linear(512 * 4 * 4, 1024),
        nn.ReLU(inplace=True),
        nn.Linear(1024, num_classes),
    )
    return on_crossbars(net, conv_layer, keep)


def mobilenetv2(
    num_classes: int = 10,
    conv_layer: Callable[..., nn.Module] = nn.Conv2d,
    keep: str | Sequence[str] = "first_and_last",
    width_mult: float = 1.0,
) -> nn.Module:
    """torchvision's MobileNetV2 for 32x32 images: the stem and the second stage keep stride 1 (as CIFAR versions
    do), so the last feature map is 4x4. Depthwise convs are mapped group by group (:mod:`cimexp.cim.mapping`); the 1x1
    expansion convs read the residual stream, which has no ReLU, so their inputs are quantized signed."""
    net = torchvision.models.mobilenet_v2(num_classes=num_classes, width_mult=width_mult)
    net.features[0][0].stride = (1, 1)
    for block in net.features[2:4]:  # the 24-channel stage
        for module in block.modules():
            if isinstance(module, nn.Conv2d) and module.stride == (2, 2):
                module.stride = (1, 1)
    last = len(net.features) - 1  # the 1x1 conv to 1280 channels, also on the residual stream
    signed = [*(rf"features\.{i}\.conv\.0\.0" for i in range(2, last)), rf"features\.{last}\.0"]
    return on_crossbars(net, conv_layer, keep, signed)


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp: int) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), _Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """A small vision transformer for 32x32 images: 4x4 patches (64 tokens) embedded by a linear layer, a class
    token, learned position embeddings, ``depth`` pre-norm blocks (multi-head attention with linear ``qkv`` and
    ``proj``, an MLP of two linear layers), a final LayerNorm and a linear head."""

    def __init__(
        self, num_classes: int = 10, dim: int = 128, depth: int = 4, heads: int = 4, mlp: int = 256, patch: int = 4
    ) -> None:
        super().__init__()
        self.patch = patch
        self.embed = nn.Linear(3 * patch * patch, dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, 1 + (32 // patch) ** 2, dim) * 0.02)
        self.blocks = nn.Sequential(*[_Block(dim, heads, mlp) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch
        patches = x.unfold(2, p, p).unfold(3, p, p).permute(0, 2, 3, 1, 4, 5).flatten(3).flatten(1, 2)
        tokens = self.embed(patches)
        tokens = torch.cat([self.cls.expand(len(x), -1, -1), tokens], 1) + self._positions(tokens.shape[1])
        return self.head(self.norm(self.blocks(tokens))[:, 0])

    def _positions(self, n_patches: int) -> torch.Tensor:
        """The position embeddings for ``n_patches`` patches (a square grid): as learned for 32x32 images, or
        interpolated bilinearly to another grid (smaller images in tests)."""
        if n_patches == self.pos.shape[1] - 1:
            return self.pos
        side, new_side = round((self.pos.shape[1] - 1) ** 0.5), round(n_patches**0.5)
        grid = self.pos[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        grid = nn.functional.interpolate(grid, size=(new_side, new_side), mode="bilinear", align_corners=False)
        return torch.cat([self.pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, n_patches, -1)], 1)


def vit(
    num_classes: int = 10,
    conv_layer: Callable[..., nn.Module] = nn.Conv2d,
    keep: str | Sequence[str] = "first_and_last",
    dim: int = 128,
    depth: int = 4,
    heads: int = 4,
    mlp: int = 256,
) -> nn.Module:
    """:class:`ViT` with its linear layers on the crossbars (the patch embedding and the head digital by default).
    Every converted layer reads a LayerNorm's, the attention's or GELU's output, which can be negative: signed
    input codes."""
    net = ViT(num_classes, dim, depth, heads, mlp)
    return on_crossbars(net, conv_layer, keep, [r"blocks\..*"])


def torchvision_model(
    name: str,
    num_classes: int = 10,
    conv_layer: Callable[..., nn.Module] = nn.Conv2d,
    keep: str | Sequence[str] = "first_and_last",
) -> nn.Module:
    """Any torchvision classification model by name (``torchvision.models.list_models``), untrained, converted.
    Inputs are taken to follow a ReLU (unsigned codes); pass ``keep`` to keep more layers digital."""
    choices = torchvision.models.list_models(module=torchvision.models)
    if name not in choices:
        raise ValueError(f"invalid model.name={name!r}; valid choices: torchvision's classification models, e.g. "
                         f"{', '.join(sorted(choices)[:8])}, ... ({len(choices)} in all)")  # fmt: skip
    net = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    return on_crossbars(net, conv_layer, keep)
