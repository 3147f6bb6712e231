"""Hardware accounting of CIM layers: dequantization multiplies, stored scale factors, arrays, ADC conversions.

Dequantization follows the paper's Fig. 4: a dequantization multiply applies one product ``s_w * s_p`` (times the
activation step). Its count per output position depends on the *finer* of the weight and partial-sum
granularities (only the weight granularity without partial-sum quantization):

- layer / layer: ``1`` (codes are shift-added across splits and arrays first, then scaled once);
- finest level array: ``n_array x n_oc`` = one per (row tile, polarity, output channel) = ``T * P * O``;
- any column: ``n_split x n_array x n_oc`` = one per mapped column = ``P * S * T * O`` (x2 for differential).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from cimexp.cim.layer import CIMConv2d, cim_layers
from cimexp.cim.options import Granularity


def dequant_granularity(layer: CIMConv2d) -> Granularity:
    """The level at which scales must be applied: the finer of weight and (if quantized) partial-sum steps."""
    if not layer.psum_quant:
        return layer.weight_granularity
    return max(layer.weight_granularity, layer.psum_granularity)


def dequant_ops(layer: CIMConv2d) -> int:
    """Dequantization multiplies per output position (paper Fig. 4 accounting, see module docstring)."""
    m = layer.mapping
    level = dequant_granularity(layer)
    if level is Granularity.LAYER:
        return 1
    if level is Granularity.ARRAY:
        return m.n_row_tiles * m.n_polarities * m.out_channels
    return m.n_columns


def layer_cost(layer: CIMConv2d, out_hw: tuple[int, int] | None = None) -> dict[str, Any]:
    """Counts for one layer. ``adc_conversions`` (per inference of one image) needs the output size ``out_hw``.

    Keys: ``dequant_ops`` (per output position), ``weight_scales`` and ``psum_scales`` (distinct learned steps),
    ``arrays``, ``columns`` (mapped), ``cells`` (mapped, incl. both polarities), ``array_utilization`` (share of
    the arrays' cells that hold weights), ``adc_conversions`` (or ``None`` without ``out_hw``)."""
    m = layer.mapping
    cells = m.n_polarities * m.n_splits * layer.in_channels * m.kernel_area * m.out_channels
    return {
        "dequant_ops": dequant_ops(layer),
        "weight_scales": layer.weight_step.numel(),
        "psum_scales": layer.psum_step.numel() if layer.psum_quant else 0,
        "arrays": m.n_arrays,
        "columns": m.n_columns,
        "cells": cells,
        "array_utilization": cells / (m.n_arrays * m.array_size**2),
        "adc_conversions": None if out_hw is None else out_hw[0] * out_hw[1] * m.n_columns,
    }


def layer_settings(layer: CIMConv2d) -> dict[str, Any]:
    """The CIM options of a layer, as plain values (for results files and tables)."""
    m = layer.mapping
    return {
        "in_channels": layer.in_channels,
        "out_channels": layer.out_channels,
        "kernel_size": list(layer.kernel_size),
        "w_bits": layer.w_bits,
        "a_bits": layer.a_bits,
        "cell_bits": layer.cell_bits,
        "adc_bits": layer.adc_bits,
        "array_size": m.array_size,
        "weight_granularity": layer.weight_granularity.name.lower(),
        "psum_granularity": layer.psum_granularity.name.lower(),
        "psum_quant": layer.psum_quant,
        "weight_encoding": layer.weight_encoding.value,
        "n_splits": m.n_splits,
        "row_tiles": m.n_row_tiles,
        "col_tiles": m.n_col_tiles,
        "channels_per_tile": m.channels_per_tile,
    }


_SUMMED = ("dequant_ops", "weight_scales", "psum_scales", "arrays", "columns", "cells", "adc_conversions")


@torch.no_grad()
def cim_summary(model: nn.Module, example_input: torch.Tensor) -> dict[str, Any]:
    """Per-layer settings and costs of every CIM layer in ``model``, plus totals.

    ``example_input`` (one image is enough, e.g. ``[1, 3, 32, 32]``) gives each layer's output size; the model is
    run on a copy whose CIM layers are replaced by plain convolutions, so nothing is initialised or changed.
    Returns ``{"layers": [{"name", **settings, **costs}, ...], "total": {...}}``; ADC conversions are per image.
    """
    out_hw = _output_sizes(model, example_input)
    layers = [
        {"name": name, **layer_settings(layer), **layer_cost(layer, out_hw[name])} for name, layer in cim_layers(model)
    ]
    total: dict[str, Any] = {key: sum(row[key] for row in layers) for key in _SUMMED}
    total["cim_layers"] = len(layers)
    return {"layers": layers, "total": total}


def _output_sizes(model: nn.Module, example_input: torch.Tensor) -> dict[str, tuple[int, int]]:
    probe = copy.deepcopy(model).eval()
    sizes: dict[str, tuple[int, int]] = {}
    for name, layer in list(cim_layers(probe)):
        plain = nn.Conv2d(
            layer.in_channels,
            layer.out_channels,
            layer.kernel_size,
            layer.stride,
            layer.padding,
            layer.dilation,
            bias=False,
            device=layer.weight.device,
            dtype=layer.weight.dtype,
        )
        plain.register_forward_hook(lambda mod, inp, out, key=name: sizes.__setitem__(key, tuple(out.shape[-2:])))
        if name:
            parent, _, child = name.rpartition(".")
            setattr(probe.get_submodule(parent), child, plain)
        else:  # the model is a single CIM layer
            probe = plain
    probe(example_input[:1])
    return sizes
