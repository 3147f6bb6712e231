"""Hardware accounting of CIM layers: dequantization multiplies, stored scale factors, arrays, ADC conversions,
ADC count, energy and area.

Dequantization follows the paper's Fig. 4: a dequantization multiply applies one product ``s_w * s_p`` (times the
activation step). Its count per output position depends on the *finer* of the weight and partial-sum
granularities (only the weight granularity without partial-sum quantization):

- layer / layer: ``1`` (codes are shift-added across splits and arrays first, then scaled once);
- finest level array or channel: ``n_array x n_oc`` = one per (row tile, polarity, output channel) = ``T * P * O``;
- any column: ``n_split x n_array x n_oc`` = one per mapped column = ``P * S * T * O`` (x2 for differential).

The count is :func:`dequant_ops`.

ADCs. Every mapped column is converted once per output position and input cycle, so one image costs
``H_out * W_out * T * O * S * P * K`` conversions (``K = ceil(a_bits / dac_bits)`` input cycles of bit-serial
inputs, 1 otherwise); the empty columns of a partly filled array are never read. With column multiplexing,
``adc_share`` adjacent columns of an array share one ADC, so an array with ``c`` mapped columns has
``ceil(c / adc_share)`` ADCs (the columns that hold no weights get none), and every array has its own ADCs (all
layers are resident at once). Sharing changes the number of ADCs (area) and latency, not the conversions.
Energy per image is conversions x energy per conversion, area is ADCs x area per ADC, both at each layer's
``adc_bits``; the ADCs are costed even while ``psum_quant=False`` simulates them as lossless.

ADC cost models, per ``b``-bit ADC (energy per conversion, area per ADC). Published models disagree by up to
~10x, so ``cim_summary`` logs the model's name and constants beside its numbers (``total["cost_model"]``):

- ``zigzag`` (default): ``E = (100 fF * b + 0.001 fF * 4^b) * VDD^2`` (VDD = 0.9 V), ``A = 10^(1.206 - 0.0369 b) *
  2^b um^2`` (0 for b = 1); closed forms fitted to 28 nm analog-IMC chips in ZigZag-IMC (Houshmand, Sun, Verhelst).
- ``walden``: ``E = FoM_W * 2^b`` (Walden figure of merit, default 10 fJ/conversion-step, inside the ~1-50 fJ/step
  of Murmann's ADC survey); the FoM says nothing about area, so ``A`` is zigzag's rule.
- ``isaac``: ISAAC's 8-bit SAR ADC (Shafiee et al., ISCA 2016; 32 nm, 2 mW at 1.28 GS/s ~ 1.56 pJ, 1200 um^2) at
  4..10 bits as tabulated in Accelergy's ISAAC library: 0.79, 0.99, 1.20, 1.42, 1.67, 1.97, 2.38 pJ and 361, 477,
  627, 845, 1200, 1828, 3002 um^2 (its 8-bit 1.67 pJ is 2 mW at 1.2 GS/s); other widths raise ``ValueError``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any, NamedTuple

import torch
from torch import nn

from cimexp.cim.layer import CIMConv2d
from cimexp.cim.linear import CIMLinear
from cimexp.cim.network import cim_layers


# --- dequantization -------------------------------------------------------------------------------------------
def dequant_ops(layer: CIMConv2d) -> int:
    """Dequantization multiplies per output position of ``layer`` (paper Fig. 4; the count in this module's
    docstring, :func:`cimexp.cim.mapping.dequant_ops`)."""
    return layer.dequant_ops()


# --- ADC cost models -------------------------------------------------------------------------------------------
class ADCCost(NamedTuple):
    """Cost of one ADC: energy per conversion (pJ) and area (um^2)."""

    energy_pj: float
    area_um2: float


ZIGZAG_VDD = 0.9
WALDEN_FOM_FJ = 10.0
ZIGZAG_CAP_LINEAR_FF = 100.0
ZIGZAG_CAP_EXP_FF = 0.001
ZIGZAG_AREA_SLOPE = -0.0369
ZIGZAG_AREA_OFFSET = 1.206

ISAAC_TABLE = {
    4: ADCCost(0.79, 361.0),
    5: ADCCost(0.99, 477.0),
    6: ADCCost(1.20, 627.0),
    7: ADCCost(1.42, 845.0),
    8: ADCCost(1.67, 1200.0),
    9: ADCCost(1.97, 1828.0),
    10: ADCCost(2.38, 3002.0),
}
"""ISAAC's ADC by resolution (32 nm), from Accelergy's ISAAC component library (rounded to 3 digits)."""


def zigzag_area_um2(bits: int) -> float:
    """ZigZag-IMC's ADC area fit: ``10^(1.206 - 0.0369 b) * 2^b`` um^2; a 1-bit ADC (a sense amplifier) is 0."""
    if bits == 1:
        return 0.0
    return 10 ** (ZIGZAG_AREA_SLOPE * bits + ZIGZAG_AREA_OFFSET) * 2**bits


def zigzag_adc(bits: int, vdd: float = ZIGZAG_VDD) -> ADCCost:
    """ZigZag-IMC: ``E = (100 fF * b + 0.001 fF * 4^b) * VDD^2`` (fF * V^2 = fJ), area :func:`zigzag_area_um2`."""
    energy_fj = (ZIGZAG_CAP_LINEAR_FF * bits + ZIGZAG_CAP_EXP_FF * 4**bits) * vdd**2
    return ADCCost(energy_fj / 1000, zigzag_area_um2(bits))


def walden_adc(bits: int, fom_fj: float = WALDEN_FOM_FJ) -> ADCCost:
    """Walden figure of merit: ``E = FoM_W * 2^b`` (``fom_fj`` in fJ per conversion step); area from zigzag."""
    return ADCCost(fom_fj * 2**bits / 1000, zigzag_area_um2(bits))


def isaac_adc(bits: int) -> ADCCost:
    """ISAAC's ADC, looked up in :data:`ISAAC_TABLE`; ``ValueError`` outside its 4..10 bits."""
    if bits not in ISAAC_TABLE:
        raise ValueError(
            f"the isaac ADC cost model has no {bits}-bit ADC; valid adc_bits: {min(ISAAC_TABLE)}..{max(ISAAC_TABLE)} "
            "(use cost.adc_model=zigzag or walden for other widths)"
        )
    return ISAAC_TABLE[bits]


_ZIGZAG_AREA = {
    "area_formula": "10^(area_slope * b + area_offset) * 2^b um^2, 0 for b = 1",
    "area_slope": ZIGZAG_AREA_SLOPE,
    "area_offset": ZIGZAG_AREA_OFFSET,
}


@dataclass(frozen=True)
class _ADCModel:
    formula: Callable[..., ADCCost]
    settings: tuple[str, ...]  # the CostModel fields the formula takes
    constants: Mapping[str, Any]  # fixed constants, logged with the results
    source: str


ADC_MODELS: dict[str, _ADCModel] = {
    "zigzag": _ADCModel(
        zigzag_adc,
        ("vdd",),
        {
            "energy_formula": "(c_linear_ff * b + c_exp_ff * 4^b) * vdd^2 fJ",
            "c_linear_ff": ZIGZAG_CAP_LINEAR_FF,
            "c_exp_ff": ZIGZAG_CAP_EXP_FF,
            **_ZIGZAG_AREA,
        },
        "ZigZag-IMC (Houshmand, Sun, Verhelst), fitted to 28 nm analog IMC chips",
    ),
    "walden": _ADCModel(
        walden_adc,
        ("fom_fj",),
        {"energy_formula": "fom_fj * 2^b fJ", **_ZIGZAG_AREA},
        "Walden figure of merit (range: Murmann, ADC Performance Survey); area from ZigZag-IMC",
    ),
    "isaac": _ADCModel(
        isaac_adc,
        (),
        {
            "energy_formula": "table_energy_pj at adc_bits",
            "area_formula": "table_area_um2 at adc_bits",
            "table_bits": list(ISAAC_TABLE),
            "table_energy_pj": [c.energy_pj for c in ISAAC_TABLE.values()],
            "table_area_um2": [c.area_um2 for c in ISAAC_TABLE.values()],
            "tech_nm": 32,
        },
        "ISAAC (Shafiee et al., ISCA 2016) as tabulated in Accelergy's ISAAC library",
    ),
}
"""ADC cost models by name (the ``cost.adc_model`` config value)."""


@dataclass(frozen=True)
class CostModel:
    """How :func:`cim_summary` costs the ADCs: the config node ``cost`` (``conf/cost/default.yaml``).

    Args:
        adc_model: a name in :data:`ADC_MODELS`: ``zigzag``, ``walden`` or ``isaac``.
        vdd: supply voltage (V) of ``zigzag``.
        fom_fj: Walden figure of merit (fJ per conversion step) of ``walden``.
        adc_share: adjacent columns of an array multiplexed onto one ADC.
    """

    adc_model: str = "zigzag"
    vdd: float = ZIGZAG_VDD
    fom_fj: float = WALDEN_FOM_FJ
    adc_share: int = 1

    def __post_init__(self) -> None:
        if self.adc_model not in ADC_MODELS:
            raise ValueError(f"invalid cost.adc_model={self.adc_model!r}; valid choices: {', '.join(ADC_MODELS)}")
        for name in ("vdd", "fom_fj"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ValueError(f"invalid cost.{name}={value!r}; valid values: a number > 0")
        if isinstance(self.adc_share, bool) or not isinstance(self.adc_share, int) or self.adc_share < 1:
            raise ValueError(f"invalid cost.adc_share={self.adc_share!r}: columns per ADC; valid values: integers >= 1")

    @classmethod
    def from_config(cls, node: Mapping[str, Any], adc_bits: int | None = None) -> CostModel:
        """Build from the ``cost`` config node. With ``adc_bits``, also check that the model covers that width, so
        that a bad setting fails before training rather than when the results are written."""
        unknown = set(node) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown cost settings {sorted(unknown)}; valid keys: {[f.name for f in fields(cls)]}")
        cost = cls(**node)
        if adc_bits is not None:
            cost.adc(adc_bits)
        return cost

    def adc(self, bits: int) -> ADCCost:
        """Energy per conversion and area of one ``bits``-bit ADC under this model."""
        model = ADC_MODELS[self.adc_model]
        return model.formula(bits, **{name: getattr(self, name) for name in model.settings})

    def describe(self) -> dict[str, Any]:
        """The model's name, settings, constants and source (plain JSON), to log beside its numbers."""
        model = ADC_MODELS[self.adc_model]
        settings = {name: getattr(self, name) for name in model.settings}
        return {
            "name": self.adc_model,
            "adc_share": self.adc_share,
            **settings,
            **model.constants,
            "source": model.source,
        }


# --- per layer -------------------------------------------------------------------------------------------------
def adc_conversions(layer: CIMConv2d, out_hw: tuple[int, int]) -> int:
    """ADC conversions per image: ``H_out * W_out * T * O * S * P * K`` (every mapped column, every cycle)."""
    return out_hw[0] * out_hw[1] * layer.mapping.n_columns * layer.n_input_cycles


def n_adcs(layer: CIMConv2d, adc_share: int = 1) -> int:
    """ADCs of the layer: ``ceil(mapped columns / adc_share)`` in every array, summed over its arrays.

    The array of column tile ``j`` holds the output channels whose column tile
    (:meth:`~cimexp.cim.mapping.ArrayMapping.col_tile_index`) is ``j``, ``S`` columns each; every (polarity, row
    tile) repeats the column tiles. Matches the numbering of :meth:`~cimexp.cim.mapping.ArrayMapping.adc_index` (the
    ADCs that convert at least one column)."""
    m = layer.mapping
    outputs = torch.bincount(m.col_tile_index(), minlength=m.n_col_tiles).tolist()
    per_row = sum(math.ceil(n * m.n_splits / adc_share) for n in outputs)
    return m.n_polarities * m.n_row_tiles * per_row


def layer_cost(
    layer: CIMConv2d, out_hw: tuple[int, int] | None = None, cost: CostModel | None = None
) -> dict[str, Any]:
    """Counts and ADC costs of one layer under ``cost`` (default :class:`CostModel`). Per-image values need the
    output size ``out_hw``, and are ``None`` without it.

    Keys: ``dequant_ops`` (per output position), ``dequant_ops_per_image``, ``weight_scales`` and ``psum_scales``
    (distinct learned steps), ``arrays``, ``columns`` (mapped), ``cells`` (mapped, incl. both polarities),
    ``array_utilization`` (share of the arrays' cells that hold weights), ``input_cycles`` (K),
    ``adc_conversions`` (per image), ``n_adcs``, ``adc_energy_per_conversion_pj``, ``adc_area_per_adc_um2``,
    ``adc_energy_pj`` (per image) and ``adc_area_um2`` (all the layer's ADCs)."""
    cost = cost or CostModel()
    m = layer.mapping
    cells = m.n_polarities * m.n_splits * m.in_channels * m.kernel_area * m.out_channels  # in_channels: per group
    adc = cost.adc(layer.adc_bits)
    adcs = n_adcs(layer, cost.adc_share)
    conversions = None if out_hw is None else adc_conversions(layer, out_hw)
    return {
        "dequant_ops": dequant_ops(layer),
        "dequant_ops_per_image": None if out_hw is None else dequant_ops(layer) * out_hw[0] * out_hw[1],
        "weight_scales": layer.weight_step.numel(),
        "psum_scales": layer.psum_step.numel() if layer.psum_quant else 0,
        "arrays": m.n_arrays,
        "columns": m.n_columns,
        "cells": cells,
        "array_utilization": cells / (m.n_arrays * m.array_size**2),
        "input_cycles": layer.n_input_cycles,
        "adc_conversions": conversions,
        "n_adcs": adcs,
        "adc_energy_per_conversion_pj": adc.energy_pj,
        "adc_area_per_adc_um2": adc.area_um2,
        "adc_energy_pj": None if conversions is None else conversions * adc.energy_pj,
        "adc_area_um2": adcs * adc.area_um2,
    }


def layer_settings(layer: CIMConv2d) -> dict[str, Any]:
    """The CIM options of a layer, as plain values (for results files and tables)."""
    m = layer.mapping
    return {
        "in_channels": layer.in_channels,
        "out_channels": layer.out_channels,
        "kernel_size": list(layer.kernel_size),
        "groups": layer.groups,
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
        "n_polarities": m.n_polarities,
        "row_tiles": m.n_row_tiles,
        "col_tiles": m.n_col_tiles,
        "channels_per_tile": m.channels_per_tile,
    }


_SUMMED = (
    "dequant_ops",
    "dequant_ops_per_image",
    "weight_scales",
    "psum_scales",
    "arrays",
    "columns",
    "cells",
    "adc_conversions",
    "n_adcs",
    "adc_energy_pj",
    "adc_area_um2",
)


@torch.no_grad()
def cim_summary(model: nn.Module, example_input: torch.Tensor, cost: CostModel | None = None) -> dict[str, Any]:
    """Per-layer settings and costs of every CIM layer in ``model``, plus totals, with ADCs costed by ``cost``
    (default :class:`CostModel`: zigzag, one ADC per column).

    ``example_input`` (one image is enough, e.g. ``[1, 3, 32, 32]``) gives each layer's output size; the model is
    run on a copy whose CIM layers are replaced by plain convolutions, so nothing is initialised or changed.
    Returns ``{"layers": [{"name", **settings, "out_hw", **costs}, ...], "total": {...}}``: the totals sum the layers'
    counts (see :func:`layer_cost`; conversions and energy per image) and add ``cim_layers``, ``adc_model`` (the
    model's name) and ``cost_model`` (:meth:`CostModel.describe`: name, settings, constants, source).
    """
    cost = cost or CostModel()
    out_hw = _output_sizes(model, example_input)
    layers = [
        {"name": name, **layer_settings(layer), "out_hw": list(out_hw[name]), **layer_cost(layer, out_hw[name], cost)}
        for name, layer in cim_layers(model)
    ]
    total: dict[str, Any] = {key: sum(row[key] for row in layers) for key in _SUMMED}
    total["cim_layers"] = len(layers)
    total["adc_model"] = cost.adc_model  # a scalar for flat tables; the details are in cost_model
    total["cost_model"] = cost.describe()
    return {"layers": layers, "total": total}


def _output_sizes(model: nn.Module, example_input: torch.Tensor) -> dict[str, tuple[int, int]]:
    probe = copy.deepcopy(model).eval()
    sizes: dict[str, tuple[int, int]] = {}
    for name, layer in list(cim_layers(probe)):
        if isinstance(layer, CIMLinear):  # its positions: the tokens (leading dims but the batch) of one input
            plain = nn.Linear(
                layer.in_features, layer.out_features, device=layer.weight.device, dtype=layer.weight.dtype
            )
            record = lambda mod, inp, out, key=name: sizes.__setitem__(key, (math.prod(out.shape[1:-1]), 1))  # noqa: E731
        else:
            plain = _plain_conv(layer)
            record = lambda mod, inp, out, key=name: sizes.__setitem__(key, tuple(out.shape[-2:]))  # noqa: E731
        plain.register_forward_hook(record)
        if name:
            parent, _, child = name.rpartition(".")
            setattr(probe.get_submodule(parent), child, plain)
        else:  # the model is a single CIM layer
            probe = plain
    probe(example_input[:1])
    return sizes


def _plain_conv(layer: CIMConv2d) -> nn.Conv2d:
    return nn.Conv2d(
        layer.in_channels,
        layer.out_channels,
        layer.kernel_size,
        layer.stride,
        layer.padding,
        layer.dilation,
        layer.groups,
        bias=False,
        device=layer.weight.device,
        dtype=layer.weight.dtype,
    )
