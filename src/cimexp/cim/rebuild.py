"""Build a layer from a float ``nn.Conv2d``: the same geometry, device and dtype, and a copy of its weights.

The one path by which a float conv becomes another conv-like layer: :meth:`cimexp.cim.layer.CIMConv2d.from_conv`
(and :func:`cimexp.cim.convert` through it) and :func:`cimexp.models.swap_convs` (any factory called like
``nn.Conv2d``) use it, so that all of them start a layer from a float conv in the same way. It lives in
``cimexp.cim`` because ``cimexp.models`` may import ``cimexp.cim``, not the other way round.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn


def rebuild_conv(conv: nn.Conv2d, factory: Callable[..., nn.Module], name: str | None = None) -> nn.Module:
    """``factory(in_channels, out_channels, kernel_size, stride=, padding=, dilation=, bias=)`` (and ``groups=`` for a
    grouped conv) with ``conv``'s own
    settings, moved to ``conv``'s device and dtype, holding a copy of its float ``weight`` ``[O, I, kH, kW]`` and
    ``bias`` ``[O]``. ``factory`` is called like ``nn.Conv2d`` (e.g. :class:`~cimexp.cim.layer.CIMConv2d` with its
    CIM options bound).

    Its train/eval mode is left to the caller (:func:`~cimexp.cim.convert` and :func:`cimexp.models.swap_convs`,
    which replace a conv inside a model, give it the conv's).

    Raises:
        ValueError: ``conv`` pads with other than zeros, which the factory's arguments cannot express; the message
            names the conv by ``name`` (its dotted name in the model) when one is given.
    """
    label = f"conv {name!r}" if name else "the conv"
    if conv.padding_mode != "zeros":
        raise ValueError(
            f"cannot map {label}: padding_mode={conv.padding_mode!r}; valid choices: 'zeros'; "
            "keep it in float (swap_convs: skip=[...] or filter_fn)"
        )
    layer = factory(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        bias=conv.bias is not None,
        **({"groups": conv.groups} if conv.groups != 1 else {}),  # a dense conv's factory need not know groups
    )
    layer.to(device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        layer.weight.copy_(conv.weight)
        if conv.bias is not None:
            layer.bias.copy_(conv.bias)
    return layer


@contextlib.contextmanager
def random_state_kept(model: nn.Module) -> Iterator[None]:
    """Random number generators of the CPU and of ``model``'s GPUs restored on exit: building replacement layers
    (whose constructors draw initial weights that the copied float weights then overwrite) draws nothing from the
    run's random stream, so a converted network and the float one leave the same stream behind."""
    devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices):
        yield
