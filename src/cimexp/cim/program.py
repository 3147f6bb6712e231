"""The chip's programming of one CIM layer, its export from a layer, its file format, and the literal reference
simulator.

A :class:`CIMProgram` is everything a hardware designer needs to run the layer on a macro: cell codes, per-cell
conductance gains, scales, ADC ranges. Its contract, for any input ``x`` in eval mode::

    a_int = clamp(round(x / act_scale), 0, 2^act_bits - 1)        (a_int = x when act_bits is None)
    a_k   = floor(a_int / input_shift[k]) mod 2^dac_bits         (input cycle k; a_0 = a_int when K = 1)
    y[o]  = sum_k input_shift[k] * sum_p polarity[p] * sum_s split_shift[s] * sum_t
              Q(act_scale * weight_scale[p,s,t,o] * sum_r cell_codes[p,s,t,r,o] * cell_gain[p,s,t,r,o] * a_k[t,r])
            + bias[o]
    Q(v)  = clamp(round(v / psum_scale[p,s,t,o]), adc_min[p,s], adc_max[p,s]) * psum_scale[p,s,t,o]
            (identity when psum_quant is False)

where ``a_k[t, r]`` is the im2col input of cycle ``k`` on row ``r`` of row tile ``t`` (of output ``o``'s group: a
grouped layer's column sees only its group's input channels). Bit-serial inputs
(``dac_bits < act_bits``) take ``K = ceil(act_bits / dac_bits)`` cycles, ``input_shift[k] = 2^(dac_bits*(K-1-k))``;
with one cycle, ``input_shift = [1]``. :func:`simulate` evaluates exactly this,
array by array; ``CIMConv2d`` is tested against it. ``psum_scale`` is in output units; the ADC's step in integer
MAC units (its reference setting) is ``psum_scale / (act_scale * weight_scale)``, also stored as ``adc_step``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cimexp.cim.options import VariationLevel
from cimexp.cim.quant import positive
from cimexp.files import atomic_write, atomic_write_json

FORMAT_VERSION = 4

CONTRACT = """\
a_int = clamp(round(x / act_scale), 0, 2^act_bits - 1)   (a_int = x when act_bits is None; with act_signed:
                                                          clamp(..., -2^(act_bits-1), 2^(act_bits-1) - 1))
a_k = floor(a_int / input_shift[k]) mod 2^dac_bits        (input cycle k of K = len(input_shift))
y[o] = sum_k input_shift[k] * sum_p polarity[p] * sum_s split_shift[s] * sum_t Q(act_scale * weight_scale[p,s,t,o]
         * sum_r cell_codes[p,s,t,r,o] * cell_gain[p,s,t,r,o] * a_k[t,r]) + bias[o]
Q(v) = clamp(round(v / psum_scale[p,s,t,o]), adc_min[p,s], adc_max[p,s]) * psum_scale[p,s,t,o]
       (identity when psum_quant is False); a_k[t,r] = im2col input of cycle k on row r of row tile t, of the
       input channels of output o's group (groups > 1: group g = o // (O/groups) has input channels
       g*C/groups .. (g+1)*C/groups - 1)"""
"""The program's meaning, written into every saved program's JSON."""

_ARRAY_FIELDS = (
    "input_shift",
    "cell_codes",
    "cell_gain",
    "polarity",
    "split_shift",
    "weight_scale",
    "psum_scale",
    "adc_min",
    "adc_max",
    "bias",
)


@dataclass
class CIMProgram:
    """Programming of one CIM layer. Tensors are detached, on CPU. Shapes: ``P`` polarities, ``S`` splits,
    ``T`` row tiles, ``R = channels_per_tile * kh * kw`` rows per tile, ``O`` output channels.

    Row ``r`` of tile ``t`` holds input channel ``t * channels_per_tile + r // (kh*kw)`` (of the column's group,
    counted from the group's first channel) at kernel position ``r % (kh*kw)`` (row-major); rows past the last input
    channel are zero."""

    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    array_size: int
    channels_per_tile: int
    act_bits: int | None
    act_scale: float
    dac_bits: int | None  # input bits per cycle (= act_bits without bit-serial inputs)
    input_shift: torch.Tensor  # [K] significance of each input cycle, most significant first ([1]: one cycle)
    cell_codes: torch.Tensor  # [P, S, T, R, O] integer-valued
    cell_gain: torch.Tensor  # [P, S, T, R, O] multiplicative conductance factor (ones without variation)
    # The variation model cell_gain follows (cimexp.cim.variation): "weight" (eq. 5: one factor per weight, equal
    # over its polarities and splits), "cell" (one per cell, scaling its conductance magnitude), None (no variation).
    variation_level: str | None
    polarity: torch.Tensor  # [P] +1 (two's complement) or +1, -1 (differential)
    split_shift: torch.Tensor  # [S] 2^(cell_bits*(S-1-s)); negative for a sign-bit MSB cell (codes 0/1)
    weight_scale: torch.Tensor  # [P, S, T, O]
    psum_quant: bool
    psum_scale: torch.Tensor  # [P, S, T, O], output units
    adc_min: torch.Tensor  # [P, S] integer codes
    adc_max: torch.Tensor  # [P, S]
    bias: torch.Tensor | None  # [O]
    act_signed: bool = False  # a_int = clamp(round(x / act_scale), -2^(act_bits-1), 2^(act_bits-1) - 1)
    groups: int = 1  # grouped convolution: output o's column holds the input channels of group o // (O/groups)

    @property
    def adc_step(self) -> torch.Tensor:
        """``[P, S, T, O]``: each column's ADC step in integer MAC units (``sum_r code * gain * a_int``)."""
        return self.psum_scale / (self.act_scale * self.weight_scale)

    def save(self, path: str | os.PathLike) -> tuple[Path, Path]:
        """Write ``<path>.npz`` (arrays) and ``<path>.json`` (geometry, scalars, shapes, the contract), each
        atomically. Readable without cimexp: ``numpy.load`` and ``json.load``. Returns both paths."""
        stem = Path(path).with_suffix("")
        arrays = {name: getattr(self, name).numpy() for name in _ARRAY_FIELDS if getattr(self, name) is not None}
        meta = {
            "format": "cimexp.CIMProgram",
            "format_version": FORMAT_VERSION,
            "contract": CONTRACT,
            "row_order": "row r of tile t = input channel t*channels_per_tile + r // (kh*kw) of the column's group "
            "(groups > 1: counted from the group's first channel), kernel position r % (kh*kw) in row-major order",
            "adc_code_range": "per (polarity, split): [-2^(b-1), 2^(b-1)-1] for columns whose partial sum can be "
            "negative (signed MSB cell, or unquantized signed inputs), [0, 2^b-1] otherwise",
            "variation_levels": "variation_level weight: cell_gain is one log-normal factor per weight (paper eq. 5), "
            "equal over its polarities and splits; cell: one per cell, scaling its conductance magnitude |code|; "
            "null: no variation (cell_gain all ones)",
            "shapes": {name: list(a.shape) for name, a in arrays.items()},
        }
        for f in fields(self):
            if f.name not in _ARRAY_FIELDS:
                meta[f.name] = getattr(self, f.name)
        npz_path, json_path = stem.with_suffix(".npz"), stem.with_suffix(".json")
        atomic_write(npz_path, lambda fh: np.savez(fh, **arrays))
        atomic_write_json(json_path, meta)
        return npz_path, json_path

    @classmethod
    def load(cls, path: str | os.PathLike) -> CIMProgram:
        """Read a program written by :meth:`save` (``path`` with or without suffix)."""
        stem = Path(path).with_suffix("")
        meta = json.loads(stem.with_suffix(".json").read_text())
        if meta.get("format") != "cimexp.CIMProgram":
            raise ValueError(f"{stem.with_suffix('.json')} is not a cimexp CIMProgram file")
        with np.load(stem.with_suffix(".npz")) as data:
            arrays = {name: torch.from_numpy(data[name]) for name in data.files}
        kwargs = {f.name: meta[f.name] for f in fields(cls) if f.name not in _ARRAY_FIELDS and f.name in meta}
        for key in ("kernel_size", "stride", "padding", "dilation"):
            kwargs[key] = tuple(kwargs[key])
        kwargs.update({name: arrays.get(name) for name in _ARRAY_FIELDS})
        if meta.get("format_version", 1) < 2:  # before bit-serial inputs: one input cycle
            kwargs["dac_bits"], kwargs["input_shift"] = kwargs["act_bits"], torch.ones(1)
        if meta.get("format_version", 1) < 3:  # before variation levels: gains were drawn per cell
            kwargs["variation_level"] = None if bool((kwargs["cell_gain"] == 1).all()) else "cell"
        return cls(**kwargs)

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def export_program(layer: nn.Module) -> CIMProgram:
    """The chip's programming of ``layer``, a :class:`~cimexp.cim.layer.CIMConv2d` (what its ``cim_program()``
    returns): its cell codes and conductance gains, effective steps and ADC ranges as :class:`CIMProgram` holds them,
    detached, on CPU, so that :func:`simulate` of it reproduces the layer's eval-mode output. Needs initialised
    steps: run a forward pass or :func:`cimexp.cim.calibrate` first.

    Raises:
        RuntimeError: the activation or (with ``psum_quant``) the ADC steps are not initialised yet.
    """
    if not (layer.act_step_ready and (layer.psum_step_ready or not layer.psum_quant)):
        raise RuntimeError(
            "CIMConv2d.cim_program(): step sizes are not initialised yet; run a forward pass or "
            "cimexp.cim.calibrate(model, batch) first"
        )
    m = layer.mapping
    s_w = layer._weight_step_full()
    codes = layer.cell_codes(s_w).permute(0, 1, 3, 4, 2)  # [P, S, T, R, O]
    gain = torch.ones_like(codes) if layer.cell_gain is None else layer.cell_gain.expand_as(codes)
    level = None
    if layer.cell_gain is not None:  # gains set by hand carry no level: per-cell shape or per-weight shape
        per_cell = layer.cell_gain.shape[:2] == codes.shape[:2]
        level = layer.variation_level or (VariationLevel.CELL if per_cell else VariationLevel.WEIGHT)
        level = VariationLevel.parse(level).value
    s_a = 1.0 if layer.a_bits is None else float(positive(layer.act_step))
    cpu = {"device": "cpu"}
    return CIMProgram(
        in_channels=layer.in_channels,
        out_channels=layer.out_channels,
        kernel_size=tuple(layer.kernel_size),
        stride=tuple(layer.stride),
        padding=tuple(layer.padding),
        dilation=tuple(layer.dilation),
        groups=layer.groups,
        array_size=m.array_size,
        channels_per_tile=m.channels_per_tile,
        act_bits=layer.a_bits,
        act_scale=s_a,
        act_signed=layer.act_signed,
        dac_bits=layer.dac_bits,
        input_shift=layer.input_shift.to(**cpu),
        cell_codes=codes.to(**cpu),
        cell_gain=gain.to(**cpu).contiguous(),
        variation_level=level,
        polarity=layer.polarity.to(**cpu),
        split_shift=layer.split_shift.to(**cpu),
        weight_scale=s_w.to(**cpu).clone(),
        psum_quant=layer.psum_quant,
        psum_scale=(layer._psum_step_full() * s_a * s_w).to(**cpu),
        adc_min=layer.adc_min.to(**cpu),
        adc_max=layer.adc_max.to(**cpu),
        bias=None if layer.bias is None else layer.bias.detach().to(**cpu).clone(),
    )


@torch.no_grad()
def simulate(program: CIMProgram, x: torch.Tensor) -> torch.Tensor:
    """Run ``program`` on input ``x`` ``[B, C, H, W]`` exactly as the contract in this module's docstring says:
    literally, one array at a time and one ADC per column. Slow by design; the reference for ``CIMConv2d``."""
    p = program
    if p.act_bits is None:
        a_int = x
    elif p.act_signed:
        a_int = torch.clamp(torch.round(x / p.act_scale), -(2 ** (p.act_bits - 1)), 2 ** (p.act_bits - 1) - 1)
    else:
        a_int = torch.clamp(torch.round(x / p.act_scale), 0, 2**p.act_bits - 1)
    shifts = p.input_shift.tolist()
    y = torch.zeros(())
    for shift in shifts:  # input cycles, most significant first
        a_k = a_int if len(shifts) == 1 else torch.remainder(torch.floor(a_int / shift), 2**p.dac_bits)
        y = y + shift * _simulate_cycle(p, a_k)
    if p.bias is not None:
        y = y + p.bias.reshape(1, -1, 1, 1)
    return y


def _simulate_cycle(p: CIMProgram, x: torch.Tensor) -> torch.Tensor:
    """One input cycle ``x`` (integer codes ``[B, C, H, W]``) through every array: ``[B, O, H_out, W_out]``. A grouped
    layer runs group by group, each group's columns on its own input channels."""
    kh, kw = p.kernel_size
    n_pol, n_split, n_tiles, n_rows, n_out = p.cell_codes.shape
    h_out = (x.shape[2] + 2 * p.padding[0] - p.dilation[0] * (kh - 1) - 1) // p.stride[0] + 1
    w_out = (x.shape[3] + 2 * p.padding[1] - p.dilation[1] * (kw - 1) - 1) // p.stride[1] + 1
    per_array = p.array_size // n_split  # output channels per array: each occupies n_split columns
    y = torch.zeros(x.shape[0], n_out, h_out * w_out, dtype=x.dtype, device=x.device)
    in_per_group, out_per_group = x.shape[1] // p.groups, n_out // p.groups
    for g in range(p.groups):
        group_x = x[:, g * in_per_group : (g + 1) * in_per_group]
        cols = F.unfold(group_x, (kh, kw), dilation=p.dilation, padding=p.padding, stride=p.stride)  # [B, C_g*K, L]
        cols = F.pad(cols, (0, 0, 0, n_tiles * n_rows - cols.shape[1])).reshape(x.shape[0], n_tiles, n_rows, -1)
        for pol in range(n_pol):
            for s in range(n_split):
                for t in range(n_tiles):
                    for first in range(g * out_per_group, (g + 1) * out_per_group, per_array):  # column tiles
                        oc = slice(first, min(first + per_array, (g + 1) * out_per_group))
                        cells = p.cell_codes[pol, s, t, :, oc] * p.cell_gain[pol, s, t, :, oc]  # [R, n]
                        mac = torch.einsum("brl,rn->bnl", cols[:, t], cells)  # column currents
                        v = p.act_scale * p.weight_scale[pol, s, t, oc].reshape(1, -1, 1) * mac
                        if p.psum_quant:
                            scale = p.psum_scale[pol, s, t, oc].reshape(1, -1, 1)
                            code = torch.clamp(torch.round(v / scale), p.adc_min[pol, s], p.adc_max[pol, s])
                            v = code * scale
                        y[:, oc] += p.polarity[pol] * p.split_shift[s] * v
    return y.reshape(x.shape[0], n_out, h_out, w_out)
