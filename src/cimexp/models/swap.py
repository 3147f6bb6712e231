"""Place a float network on the crossbars, and load float checkpoints into such networks.

``on_crossbars`` is how every builder of :mod:`cimexp.models` turns its float network into a CIM network: with a
``CIMConv2d`` factory it calls :func:`cimexp.cim.convert` (conv and linear layers), with any other factory called
like ``nn.Conv2d`` it calls ``swap_convs``, which rebuilds every plain ``nn.Conv2d`` (except the ones a name filter
keeps in float) with the factory and copies the float weights over. ``load_float_weights`` loads a float checkpoint
into a model whose layers may already be CIM layers.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from cimexp.cim import CIMConv2d, convert
from cimexp.cim.rebuild import random_state_kept, rebuild_conv
from cimexp.files import atomic_write, read_checkpoint

log = logging.getLogger(__name__)

ConvFactory = Callable[..., nn.Module]
"""Builds a conv layer; called like ``nn.Conv2d(in, out, kernel_size, stride=, padding=, dilation=, bias=)``."""

_FLOAT_TENSOR_NAMES = frozenset({"weight", "bias", "running_mean", "running_var", "num_batches_tracked"})
"""Last component of the state-dict keys that a float checkpoint must provide (conv, BN and linear tensors)."""


def swap_convs(
    model: nn.Module,
    factory: ConvFactory,
    skip: Sequence[str] = (),
    filter_fn: Callable[[nn.Module, str], bool] | None = None,
) -> nn.Module:
    """Replace every plain ``nn.Conv2d`` of ``model`` by ``factory(...)``, in place, copying the float weights.

    A conv is replaced when all of these hold:

    - its type is exactly ``nn.Conv2d`` (subclasses such as an already swapped CIM layer are never re-wrapped,
      so calling ``swap_convs`` twice is harmless);
    - its full dotted name (as in ``model.named_modules()``, e.g. ``"layer1.0.conv1"``) does not match any regex
      of ``skip`` under ``re.fullmatch`` (so ``"conv1"`` keeps only the stem, not ``"layer1.0.conv1"``);
    - ``filter_fn(module, name)`` is true, if ``filter_fn`` is given.

    The replacement is built by :func:`cimexp.cim.rebuild.rebuild_conv`, as ``factory(in_channels, out_channels,
    kernel_size, stride=, padding=, dilation=, bias=)`` (and ``groups=`` for a grouped conv) with the conv's own
    settings; it gets the conv's device, dtype and train/eval mode, and receives a copy of its ``weight``
    ``[O, I/groups, kH, kW]`` and ``bias`` ``[O]``.

    Args:
        model: the model to modify.
        factory: layer factory called like ``nn.Conv2d``.
        skip: regexes of module names to keep in float, matched with ``re.fullmatch``.
        filter_fn: optional extra predicate ``(module, name) -> bool``; only convs for which it is true are swapped.

    Returns:
        ``model``, modified in place (or the replacement itself when ``model`` is a plain ``nn.Conv2d``).

    Raises:
        ValueError: a selected conv uses a non-zero padding mode, which the factory signature cannot express (the
            message names it; keep it in float with ``skip`` or ``filter_fn``).
    """
    skip_patterns = [re.compile(pattern) for pattern in skip]
    selected = [
        (name, module)
        for name, module in model.named_modules()
        if type(module) is nn.Conv2d
        and not any(pattern.fullmatch(name) for pattern in skip_patterns)
        and (filter_fn is None or filter_fn(module, name))
    ]
    with random_state_kept(model):
        for name, conv in selected:
            replacement = rebuild_conv(conv, factory, name)
            replacement.train(conv.training)
            if not name:
                return replacement
            parent_name, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent_name), attr, replacement)
    return model


def on_crossbars(
    net: nn.Module,
    conv_layer: Callable[..., nn.Module] | None,
    keep: str | Sequence[str] = "first_and_last",
    signed_inputs: Sequence[str] = (),
) -> nn.Module:
    """``net``, a float network, with its layers built by ``conv_layer``: how every builder of
    :mod:`cimexp.models` places its network on the crossbars (``conv_layer`` is the ``cim`` config group's factory).

    - ``None`` or ``nn.Conv2d`` (or a ``functools.partial`` of it): ``net`` stays float.
    - :class:`~cimexp.cim.CIMConv2d` or a ``functools.partial`` of it: :func:`cimexp.cim.convert` with the factory's
      CIM options, ``keep`` and ``signed_inputs`` (its conv and linear layers, grouped and depthwise included).
    - Any other factory called like ``nn.Conv2d``: :func:`swap_convs` (convs only), keeping digital what ``keep``
      names (``"first_and_last"``: the first conv; regexes: the convs they match).

    Both copy the float weights and draw no random numbers, so a network's initial weights and the random stream
    after building it do not depend on ``conv_layer``.
    """
    factory = conv_layer.func if isinstance(conv_layer, functools.partial) else conv_layer
    if conv_layer is None or factory is nn.Conv2d:
        return net
    if factory is CIMConv2d:
        options = conv_layer.keywords if isinstance(conv_layer, functools.partial) else {}
        convert(net, keep=keep, signed_inputs=signed_inputs, **options)
        return net
    if keep == "first_and_last":
        skip = [name for name, m in net.named_modules() if type(m) is nn.Conv2d][:1]
    else:
        skip = [] if keep == "none" else list(keep)
    return swap_convs(net, conv_layer, skip=skip)


def load_float_weights(model: nn.Module, path: str | Path) -> int:
    """Load a float checkpoint into ``model``, whose convs may already be CIM layers; return the tensor count.

    The checkpoint is either a Lightning ``.ckpt`` (a dict with ``state_dict`` whose keys start with ``model.``,
    the attribute under which the LightningModule holds the network) or a plain ``state_dict`` saved with
    ``torch.save``. It is read with ``weights_only=True`` (:func:`cimexp.files.read_checkpoint`): a file that
    carries other Python objects is refused (``ValueError``) before anything in it runs.

    CIM layers add parameters and buffers (step sizes) that a float checkpoint lacks; those keep their current
    values. Everything else must match exactly: a checkpoint key the model does not have, or a float tensor of the
    model (a key ending in ``weight``, ``bias``, ``running_mean``, ``running_var`` or ``num_batches_tracked``)
    that the checkpoint lacks, is an error. Shapes must match (``load_state_dict`` checks them).

    Args:
        model: the network (not the LightningModule).
        path: checkpoint file.

    Returns:
        Number of tensors loaded (also logged at INFO level).

    Raises:
        ValueError: unexpected checkpoint keys or missing float tensors; the model is left unchanged.
    """
    state_dict = read_float_state_dict(path)
    model_keys = set(model.state_dict())
    unexpected = sorted(set(state_dict) - model_keys)
    missing = sorted(key for key in model_keys - set(state_dict) if key.rpartition(".")[2] in _FLOAT_TENSOR_NAMES)
    if unexpected or missing:
        raise ValueError(
            f"float checkpoint {str(path)!r} does not fit the model: "
            f"{len(unexpected)} unexpected checkpoint keys {_preview(unexpected)}, "
            f"{len(missing)} float tensors of the model missing from it {_preview(missing)}"
        )
    model.load_state_dict(state_dict, strict=False)
    log.info("loaded %d float tensors from %s", len(state_dict), path)
    return len(state_dict)


def read_float_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The network's tensors of a float checkpoint (a Lightning ``.ckpt``, keys without the ``model.`` prefix, or a
    plain ``state_dict``), read with ``weights_only=True``."""
    path = Path(path)
    checkpoint = read_checkpoint(path)
    if not isinstance(checkpoint, dict):
        raise ValueError(
            f"checkpoint {str(path)!r} holds a {type(checkpoint).__name__}; "
            "expected a Lightning checkpoint dict with 'state_dict' or a plain state_dict"
        )
    if "state_dict" not in checkpoint:
        return checkpoint
    prefix = "model."
    return {key.removeprefix(prefix): value for key, value in checkpoint["state_dict"].items()}


def _preview(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    more = f", ... ({len(keys) - limit} more)" if len(keys) > limit else ""
    return f"[{shown}{more}]"


def save_float_weights(source: str | Path, target: str | Path, dtype: torch.dtype = torch.float16) -> int:
    """Write the network of float checkpoint ``source`` (:func:`read_float_state_dict`) to ``target`` as a plain
    ``state_dict`` whose floating-point tensors are stored as ``dtype`` (half precision by default: half the size;
    :func:`load_float_weights` casts them back). Returns the number of tensors."""
    state_dict = {
        key: value.to(dtype) if value.is_floating_point() else value
        for key, value in read_float_state_dict(source).items()
    }
    atomic_write(Path(target), lambda f: torch.save(state_dict, f))
    return len(state_dict)
