"""``CIMLinear``: a drop-in ``nn.Linear`` on the crossbars, computed as a 1x1 :class:`~cimexp.cim.layer.CIMConv2d` over
one position."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cimexp.cim.layer import CIMConv2d


class CIMLinear(CIMConv2d):
    """A linear layer computed as on the crossbars: ``nn.Linear``'s ``y = x W^T + b`` over the last dimension of
    ``x`` ``[..., in_features]``, mapped, quantized, converted and exported exactly as :class:`CIMConv2d` does a
    1x1 convolution over one position (it is one: the same mapping, quantizers, ADCs, variation, telemetry,
    ``cim_program`` and cost accounting, no second copy of them). Each of the ``out_features`` columns holds
    ``in_features`` rows, tiled over ``ceil(in_features / array_size)`` arrays; ``act_signed=True`` for inputs that
    can be negative (after a LayerNorm, say).

    ``weight`` has ``nn.Conv2d``'s shape ``[out_features, in_features, 1, 1]``; a ``state_dict`` of an
    ``nn.Linear`` (``[out, in]``) loads into it, and :meth:`from_linear` copies one.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        **cim_options: Any,
    ) -> None:
        super().__init__(in_features, out_features, 1, bias=bias, device=device, dtype=dtype, **cim_options)

    @property
    def in_features(self) -> int:
        return self.in_channels

    @property
    def out_features(self) -> int:
        return self.out_channels

    @classmethod
    def from_linear(cls, linear: nn.Linear, **cim_options: Any) -> CIMLinear:
        """A CIM layer with ``linear``'s shape and a copy of its float weights (and bias)."""
        layer = cls(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            device=linear.weight.device,
            dtype=linear.weight.dtype,
            **cim_options,
        )
        with torch.no_grad():
            layer.weight.copy_(linear.weight.reshape(layer.weight.shape))
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        y = super().forward(x.reshape(-1, self.in_channels, 1, 1))
        return y.reshape(*lead, self.out_channels)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        weight = state_dict.get(f"{prefix}weight")
        if weight is not None and weight.dim() == 2:  # an nn.Linear's [out, in]
            state_dict[f"{prefix}weight"] = weight.reshape(*weight.shape, 1, 1)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        conv = super().extra_repr()
        cim = conv[conv.index("w_bits=") :]
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, {cim}"
