"""Put any PyTorch network on the crossbars: :func:`convert` swaps its ``nn.Conv2d`` and ``nn.Linear`` layers for
:class:`~cimexp.cim.CIMConv2d` and :class:`~cimexp.cim.CIMLinear`, copying their float weights, and says what it
converted and what it kept digital, and why.

>>> from torchvision.models import resnet18
>>> from cimexp.cim import convert
>>> net = resnet18(num_classes=10)
>>> report = convert(net, adc_bits=3, weight_granularity="column", psum_granularity="column")
>>> print(report)  # doctest: +SKIP

What stays digital by default (``keep="first_and_last"``) is what the paper keeps digital: the first layer that
sees the input (its inputs are the signed, normalised image) and the last linear layer (the classifier). Grouped and
depthwise convolutions are mapped group by group, each group on its own columns (:mod:`cimexp.cim.mapping`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from cimexp.cim.layer import CIMConv2d
from cimexp.cim.linear import CIMLinear
from cimexp.cim.rebuild import random_state_kept

KEEP_POLICIES = ("first_and_last", "none")
"""``first_and_last``: the first conv or linear layer in module order and the last linear layer stay digital (the
paper's choice); ``none``: every layer that can be mapped is. A list of regexes names the layers to keep instead."""


@dataclass
class Conversion:
    """What :func:`convert` did: the layers it put on crossbars and the ones it kept digital, with the reason."""

    converted: list[str] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [f"{len(self.converted)} layers on CIM arrays, {len(self.kept)} kept digital"]
        lines += [f"  digital  {name}: {reason}" for name, reason in self.kept.items()]
        return "\n".join(lines)


def convert(
    model: nn.Module,
    *,
    keep: str | Sequence[str] = "first_and_last",
    signed_inputs: Sequence[str] = (),
    **cim_options: Any,
) -> Conversion:
    """Replace, in place, the ``nn.Conv2d`` and ``nn.Linear`` layers of ``model`` by CIM layers built with
    ``cim_options`` (the keyword arguments of :class:`~cimexp.cim.CIMConv2d`), copying weights and biases and
    keeping each layer's device, dtype and train/eval mode. Layers that are CIM layers already are left alone, so
    converting twice changes nothing. It draws no random numbers (:func:`~cimexp.cim.rebuild.random_state_kept`).

    Args:
        model: any module (a layer that is the whole model cannot be replaced in place: wrap it first).
        keep: :data:`KEEP_POLICIES`, or regexes of module names (``re.fullmatch``) to keep digital.
        signed_inputs: regexes of module names whose inputs can be negative (after a normalisation without ReLU):
            their activations are quantized to signed codes (``act_signed=True``).
        **cim_options: hardware and quantizer settings for every converted layer.

    Returns:
        The :class:`Conversion` report.

    Raises:
        ValueError: an unknown policy, or a bad CIM option (named by the layer's own check).
    """
    if isinstance(keep, str) and keep not in KEEP_POLICIES:
        raise ValueError(f"invalid keep={keep!r}; valid choices: {', '.join(KEEP_POLICIES)}, or a list of regexes")
    candidates = [(n, m) for n, m in model.named_modules() if n and type(m) in (nn.Conv2d, nn.Linear)]
    kept = _kept_by_policy(candidates, keep)
    signed = [re.compile(pattern) for pattern in signed_inputs]
    report = Conversion()
    with random_state_kept(model):
        _replace(model, candidates, kept, signed, cim_options, report)
    return report


def _replace(
    model: nn.Module,
    candidates: list[tuple[str, nn.Module]],
    kept: dict[str, str],
    signed: list[re.Pattern[str]],
    cim_options: dict[str, Any],
    report: Conversion,
) -> None:
    for name, module in candidates:
        reason = kept.get(name) or _unmappable(module)
        if reason is not None:
            report.kept[name] = reason
            continue
        options = {
            **cim_options,
            "act_signed": any(p.fullmatch(name) for p in signed) or cim_options.get("act_signed", False),
        }
        if isinstance(module, nn.Linear):
            replacement = CIMLinear.from_linear(module, **options)
        else:
            replacement = CIMConv2d.from_conv(module, **options)
        replacement.train(module.training)
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent), attr, replacement)
        report.converted.append(name)


def _kept_by_policy(candidates: list[tuple[str, nn.Module]], keep: str | Sequence[str]) -> dict[str, str]:
    if keep == "none" or not candidates:
        return {}
    if keep == "first_and_last":
        kept = {candidates[0][0]: "the first layer (sees the input image)"}
        linears = [name for name, module in candidates if isinstance(module, nn.Linear)]
        if linears:
            kept[linears[-1]] = "the last linear layer (the classifier)"
        return kept
    patterns = [re.compile(pattern) for pattern in keep]
    return {name: "named by keep" for name, _ in candidates if any(p.fullmatch(name) for p in patterns)}


def _unmappable(module: nn.Module) -> str | None:
    """Why a layer cannot go on the crossbars yet; ``None`` when it can."""
    if isinstance(module, nn.Conv2d) and module.padding_mode != "zeros":
        return f"padding_mode={module.padding_mode!r}: only zero padding is mapped"
    return None
