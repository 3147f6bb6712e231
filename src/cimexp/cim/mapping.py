"""How a convolution is laid out on N x N crossbar arrays (paper Sec. II-A, III-C, Fig. 2 and Fig. 5).

Im2col turns a kernel ``W[o, c, kh, kw]`` into a column of ``C_in * kh * kw`` rows. The rows are tiled into
row tiles of ``channels_per_tile = min(C_in, array_size // (kh*kw))`` *whole* input channels, so a stretched kernel
never straddles two arrays (the paper's tiling; the last tile may be partly empty). Row ``r`` of tile ``t`` holds
input channel ``t * channels_per_tile + r // (kh*kw)`` at kernel position ``r % (kh*kw)`` (row-major).

Each integer weight occupies ``S`` cells (splits) in ``S`` adjacent columns of the same array; an array holds
``array_size // S`` output channels. The most significant cell holds what is left, ``msb_bits`` bits, fewer than
``cell_bits`` when ``cell_bits`` does not divide the weight bits (4-bit weights on 3-bit cells: 1 + 3). With
differential encoding every array has a twin of opposite polarity.

Grouped and depthwise convolutions (``groups = G > 1``) map each group to its own columns: output channel ``o``
belongs to group ``g = o // (O/G)``, and its column holds only its group's ``C_in/G`` input channels, tiled into
row tiles exactly as a dense layer's (``in_channels`` of a mapping is the input channels of one group). Groups whose
columns and rows both fit share an array block-diagonally: an array holds ``min(columns // O_g, array_size // R)``
groups of ``O_g = O/G`` outputs side by side, each on its own ``R`` rows (a 3x3 depthwise layer on 128x128 arrays:
14 groups of 9 rows), and cells off the diagonal blocks hold zero. A group wider than an array's columns gets
column tiles of its own. Which groups share an array changes no partial sum (a column's rows are its group's); it
sets the array count, the ADC numbering and what array-wise steps share.
Index names used throughout (and in :class:`~cimexp.cim.program.CIMProgram`): ``P`` polarities, ``S`` splits,
``T`` row tiles, ``R`` rows per tile, ``O`` output channels, ``n_ct`` column tiles.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cimexp.cim.options import Granularity, SliceGradient, WeightEncoding, parse_choice


@dataclass(frozen=True)
class ArrayMapping:
    """Geometry of one convolution on CIM arrays. Pure data; build it with :meth:`create`."""

    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    array_size: int
    w_bits: int
    cell_bits: int
    adc_bits: int
    encoding: WeightEncoding
    signed_inputs: bool
    groups: int = 1
    """G: groups of a grouped convolution (1: dense); ``in_channels`` is then one group's input channels."""

    @classmethod
    def create(
        cls,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, int],
        *,
        array_size: int,
        w_bits: int,
        cell_bits: int,
        adc_bits: int,
        encoding: WeightEncoding,
        signed_inputs: bool,
        groups: int = 1,
    ) -> ArrayMapping:
        """Validate the hardware parameters against the layer shape and build the mapping (``in_channels``: input
        channels of one group; ``out_channels``: of all groups, a multiple of ``groups``)."""
        if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1 or out_channels % groups:
            raise ValueError(
                f"invalid groups={groups!r} for out_channels={out_channels}; valid values: positive integers that "
                "divide both channel counts"
            )
        kernel_area = kernel_size[0] * kernel_size[1]
        if isinstance(array_size, bool) or not isinstance(array_size, int) or array_size < kernel_area:
            raise ValueError(
                f"invalid array_size={array_size!r}: an array must hold at least one whole stretched kernel of "
                f"kh*kw = {kernel_area} rows; valid values: integers >= {kernel_area}"
            )
        if cell_bits > w_bits:
            raise ValueError(f"invalid cell_bits={cell_bits}: must be <= w_bits={w_bits} (valid: 1..{w_bits})")
        if encoding is WeightEncoding.DIFFERENTIAL and w_bits < 2:
            raise ValueError(
                f"invalid w_bits={w_bits} for differential encoding: w_bits counts the sign, so it needs >= 2"
            )
        mapping = cls(
            in_channels,
            out_channels,
            tuple(kernel_size),
            array_size,
            w_bits,
            cell_bits,
            adc_bits,
            encoding,
            signed_inputs,
            groups,
        )
        if array_size < mapping.n_splits:
            raise ValueError(
                f"invalid array_size={array_size}: one output channel needs n_splits={mapping.n_splits} columns; "
                f"valid values: integers >= {max(kernel_area, mapping.n_splits)}"
            )
        return mapping

    # --- sizes -----------------------------------------------------------------------------------------------
    @property
    def kernel_area(self) -> int:
        return self.kernel_size[0] * self.kernel_size[1]

    @property
    def n_polarities(self) -> int:
        """P: 1 for two's complement, 2 (positive, negative array) for differential encoding."""
        return 2 if self.encoding is WeightEncoding.DIFFERENTIAL else 1

    @property
    def magnitude_bits(self) -> int:
        """Bits the cells of one polarity must hold: ``w_bits`` (two's complement) or ``w_bits - 1``."""
        return self.w_bits - 1 if self.encoding is WeightEncoding.DIFFERENTIAL else self.w_bits

    @property
    def n_splits(self) -> int:
        """S: cells (columns) per weight."""
        return math.ceil(self.magnitude_bits / self.cell_bits)

    @property
    def msb_bits(self) -> int:
        """Bits of the most significant cell: ``magnitude_bits - (S-1) * cell_bits``, in ``1 .. cell_bits``."""
        return self.magnitude_bits - (self.n_splits - 1) * self.cell_bits

    @property
    def sign_bit_msb(self) -> bool:
        """Whether the most significant cell holds only the sign bit of a two's-complement weight (``msb_bits`` 1:
        ``cell_bits`` 1, or 4-bit weights on 3-bit cells). That cell then stores the bit as an unsigned code 0/1
        with a negative significance, ``split_shift[0] = -2^(w_bits-1)``: its column's partial sums are never
        negative, so its ADC gets the unsigned range and all ``2^adc_bits`` codes. (As a signed code in ``{-1, 0}``
        its partial sums would never be positive, and a signed ADC range would waste half its codes on them.)"""
        return self.encoding is WeightEncoding.TWOS_COMPLEMENT and self.msb_bits == 1

    @property
    def channels_per_tile(self) -> int:
        return min(self.in_channels, self.array_size // self.kernel_area)

    @property
    def n_row_tiles(self) -> int:
        """T: arrays along the input (row) axis."""
        return math.ceil(self.in_channels / self.channels_per_tile)

    @property
    def rows_per_tile(self) -> int:
        """R: rows of each tile that hold weights (the last tile's unused rows are zero)."""
        return self.channels_per_tile * self.kernel_area

    @property
    def out_per_group(self) -> int:
        """O_g: output channels of one group (``O`` for a dense layer)."""
        return self.out_channels // self.groups

    @property
    def groups_per_array(self) -> int:
        """Groups one array holds side by side, each on its own rows (block-diagonal); 1 for a dense layer and for
        a group wider than an array's columns."""
        columns = self.array_size // self.n_splits
        if self.groups == 1 or self.out_per_group >= columns:
            return 1
        return min(columns // self.out_per_group, self.array_size // self.rows_per_tile, self.groups)

    @property
    def channels_per_array(self) -> int:
        """Output channels an array's columns hold (all ``S`` splits of each): ``array_size // S``, or for a
        grouped layer whose groups fit in one array, ``groups_per_array`` whole groups."""
        columns = self.array_size // self.n_splits
        if self.groups == 1 or self.out_per_group >= columns:
            return columns
        return self.groups_per_array * self.out_per_group

    @property
    def n_col_tiles(self) -> int:
        """Arrays along the output (column) axis."""
        if self._wide_groups():
            return self.groups * math.ceil(self.out_per_group / self.channels_per_array)
        return math.ceil(self.out_channels / self.channels_per_array)

    @property
    def n_arrays(self) -> int:
        return self.n_polarities * self.n_row_tiles * self.n_col_tiles

    @property
    def n_columns(self) -> int:
        """Mapped columns (each with its own partial sum and ADC conversion): ``P * S * T * O``."""
        return self.n_polarities * self.n_splits * self.n_row_tiles * self.out_channels

    # --- per-split / per-polarity constants ------------------------------------------------------------------
    def split_shift(self) -> list[int]:
        """Significance of split ``s``: ``2^(cell_bits * (S-1-s))``, most significant split first; negative for a
        sign-bit cell (:attr:`sign_bit_msb`)."""
        shifts = [2 ** (self.cell_bits * (self.n_splits - 1 - s)) for s in range(self.n_splits)]
        if self.sign_bit_msb:
            shifts[0] = -shifts[0]
        return shifts

    def polarity(self) -> list[int]:
        return [1, -1] if self.n_polarities == 2 else [1]

    def weight_range(self) -> tuple[int, int]:
        """Integer weight range ``(qmin, qmax)`` of the encoding."""
        top = 2 ** (self.w_bits - 1) - 1
        if self.encoding is WeightEncoding.DIFFERENTIAL:
            return -top, top
        return -(top + 1), top

    def column_signed(self) -> list[list[bool]]:
        """``[P][S]``: can this column's partial sum be negative? (signed inputs, or a signed MSB cell of two or
        more bits; a sign-bit cell stores 0/1, see :attr:`sign_bit_msb`)."""
        msb_signed = self.encoding is WeightEncoding.TWOS_COMPLEMENT and not self.sign_bit_msb
        return [
            [self.signed_inputs or (msb_signed and s == 0) for s in range(self.n_splits)]
            for _ in range(self.n_polarities)
        ]

    def adc_range(self) -> tuple[list[list[int]], list[list[int]]]:
        """``(adc_min, adc_max)``, each ``[P][S]``: ``[-2^(b-1), 2^(b-1)-1]`` for columns that can go negative,
        ``[0, 2^b - 1]`` for the others (all codes of an unsigned ADC are then useful). A 1-bit ADC on a signed
        column thus has codes ``{-1, 0}``: prefer ``adc_bits >= 2`` with two's complement, or differential
        encoding, whose columns are all unsigned. A sign-bit MSB cell (:attr:`sign_bit_msb`) is unsigned."""
        b = self.adc_bits
        signed = self.column_signed()
        lo = [[-(2 ** (b - 1)) if sg else 0 for sg in row] for row in signed]
        hi = [[2 ** (b - 1) - 1 if sg else 2**b - 1 for sg in row] for row in signed]
        return lo, hi

    def step_shape(self, granularity: Granularity, per_split: bool = False) -> tuple[int, int, int, int]:
        """Shape of the step-size parameter at ``granularity``, broadcastable to ``[P, S, T, O]``. ``per_split``
        gives layer and array steps one step per split (the ``S`` axis); column steps always have it, channel
        steps never (:class:`~cimexp.cim.options.WeightSplits`)."""
        splits = self.n_splits if per_split else 1
        if granularity is Granularity.LAYER:
            return (1, splits, 1, 1)
        if granularity is Granularity.ARRAY:
            return (self.n_polarities, splits, self.n_row_tiles, self.n_col_tiles)
        if granularity is Granularity.CHANNEL:
            return (self.n_polarities, 1, self.n_row_tiles, self.out_channels)
        return (self.n_polarities, self.n_splits, self.n_row_tiles, self.out_channels)

    def adc_index(self, adc_share: int = 1, device: torch.device | None = None) -> torch.Tensor:
        """``[P, S, T, O]``: the ADC that converts each column, when ``adc_share`` adjacent columns of an array
        share one ADC (column multiplexing). Within an array, output channel ``o`` occupies columns
        ``(o % channels_per_array) * S + s``; ADCs are numbered array by array (polarity, row tile, column tile)."""
        s = torch.arange(self.n_splits, device=device)
        position = self.column_slot(device).reshape(1, 1, 1, -1) * self.n_splits + s.reshape(1, -1, 1, 1)
        p = torch.arange(self.n_polarities, device=device).reshape(-1, 1, 1, 1)
        t = torch.arange(self.n_row_tiles, device=device).reshape(1, 1, -1, 1)
        array = (p * self.n_row_tiles + t) * self.n_col_tiles + self.col_tile_index(device).reshape(1, 1, 1, -1)
        adcs_per_array = math.ceil(self.array_size / adc_share)
        return array * adcs_per_array + position // adc_share

    def _wide_groups(self) -> bool:
        """Whether every group has column tiles of its own (grouped, and wider than an array's columns)."""
        return self.groups > 1 and self.out_per_group > self.channels_per_array

    def col_tile_index(self, device: torch.device | None = None) -> torch.Tensor:
        """``[O]``: the column tile (array along the output axis) of every output channel."""
        o = torch.arange(self.out_channels, device=device)
        if not self._wide_groups():
            return o // self.channels_per_array
        tiles_per_group = math.ceil(self.out_per_group / self.channels_per_array)
        return (o // self.out_per_group) * tiles_per_group + (o % self.out_per_group) // self.channels_per_array

    def column_slot(self, device: torch.device | None = None) -> torch.Tensor:
        """``[O]``: the place of every output channel among its array's output channels (its ``S`` columns are
        ``slot * S + s``)."""
        o = torch.arange(self.out_channels, device=device)
        if not self._wide_groups():
            return o % self.channels_per_array
        return (o % self.out_per_group) % self.channels_per_array

    def expand_step(self, step: torch.Tensor, granularity: Granularity) -> torch.Tensor:
        """Broadcast a step parameter of :meth:`step_shape` to one value per column, ``[P, S, T, O]``."""
        if granularity is Granularity.ARRAY:
            step = step.index_select(3, self.col_tile_index(step.device))
        shape = (self.n_polarities, self.n_splits, self.n_row_tiles, self.out_channels)
        return step.expand(shape)

    def reduce_to_step(
        self, per_column: torch.Tensor, granularity: Granularity, per_split: bool = False
    ) -> torch.Tensor:
        """Average a per-column statistic ``[P, S, T, O]`` over the columns that share a step (inverse of
        :meth:`expand_step`), returning the shape of :meth:`step_shape` (``per_split`` as there)."""
        if granularity is Granularity.COLUMN:
            return per_column
        per_split = per_split and granularity is not Granularity.CHANNEL
        if granularity is Granularity.LAYER:
            dims = (0, 2, 3) if per_split else (0, 1, 2, 3)
            return per_column.mean(dims, keepdim=True).expand(self.step_shape(granularity, per_split)).clone()
        per_channel = per_column if per_split else per_column.mean(1, keepdim=True)
        if granularity is Granularity.CHANNEL:
            return per_channel
        out = per_channel.new_zeros(self.step_shape(granularity, per_split))
        count = per_channel.new_zeros(self.step_shape(granularity, per_split))
        idx = self.col_tile_index(per_column.device)
        out.index_add_(3, idx, per_channel)
        count.index_add_(3, idx, torch.ones_like(per_channel))
        return out / count

    # --- weight layout ---------------------------------------------------------------------------------------
    def tile_rows(self, weight: torch.Tensor) -> torch.Tensor:
        """``[O, C, kh, kw]`` -> ``[O, T, R]``: im2col columns cut into row tiles, zero-padding the last one."""
        o, c = weight.shape[:2]
        pad = self.n_row_tiles * self.channels_per_tile - c
        flat = weight.reshape(o, c * self.kernel_area)
        if pad:
            flat = torch.nn.functional.pad(flat, (0, pad * self.kernel_area))
        return flat.reshape(o, self.n_row_tiles, self.rows_per_tile)


def slice_bits(
    w_int: torch.Tensor, mapping: ArrayMapping, gradient: SliceGradient | str = SliceGradient.PER_COPY
) -> torch.Tensor:
    """Split integer weights into cell codes, most significant split first (exact, integer-valued floats).

    ``w_int``: ``[P, S, ...]`` integer-valued; copy ``s`` is the weight quantized with split ``s``'s scale (with
    layer/array weight granularity all copies are equal). Returns the same shape, where entry ``[p, s]`` is the
    cell code of split ``s`` taken from copy ``s``: ``floor(w / 2^(c*(S-1-s)))``, reduced mod ``2^c`` except for the
    signed MSB cell of two's complement, which keeps it whole, or stores its negation (0 or 1) when it holds only
    the sign bit (:attr:`ArrayMapping.sign_bit_msb`). For differential encoding ``w_int`` holds each polarity's
    non-negative magnitude. The backward pass gives every split ``1/S`` of the straight-through gradient,
    ``d code_s / d w = 1 / (S * shift_s)`` with ``shift_s`` of :meth:`ArrayMapping.split_shift`, so that with
    shared scales the sliced layer's weight gradient equals plain LSQ's (``sum_s shift_s * d code_s/d w = 1``).
    """
    if mapping.encoding is not WeightEncoding.TWOS_COMPLEMENT:
        msb = _UNSIGNED
    else:
        msb = _SIGN_BIT if mapping.sign_bit_msb else _SIGNED
    lowest_split = parse_choice(SliceGradient, gradient, "slice_gradient") is SliceGradient.LOWEST_SPLIT
    return _SliceBits.apply(w_int, mapping.cell_bits, msb, lowest_split)


_UNSIGNED, _SIGNED, _SIGN_BIT = "unsigned", "signed", "sign_bit"
"""How :class:`_SliceBits` codes the most significant split: reduced mod ``2^c`` like the others, whole (a signed
cell), or negated (a sign-bit cell: 0/1 with a negative significance)."""


class _SliceBits(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w_int: torch.Tensor, cell_bits: int, msb: str, lowest_split: bool) -> torch.Tensor:
        n_splits = w_int.shape[1]
        shift = _split_shift_view(n_splits, cell_bits, w_int)
        high = torch.floor(w_int / shift)
        codes = high - torch.floor(high / 2**cell_bits) * 2**cell_bits
        if msb == _SIGNED:
            codes[:, 0] = high[:, 0]
        elif msb == _SIGN_BIT:  # high[:, 0] is -1 or 0; the cell stores 1 or 0 and its significance is negative
            codes[:, 0] = -high[:, 0]
            shift = shift.clone()
            shift[:, 0] = -shift[:, 0]
        ctx.save_for_backward(shift)
        ctx.lowest_split = lowest_split
        return codes

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (shift,) = ctx.saved_tensors
        if not ctx.lowest_split:
            return grad / (shift * shift.shape[1]), None, None, None
        grad_w = torch.zeros_like(grad)
        grad_w[:, -1] = grad[:, -1] / shift[:, -1]
        return grad_w, None, None, None


def input_shift(a_bits: int, dac_bits: int) -> list[int]:
    """Significance of each input cycle of bit-serial inputs, most significant first:
    ``2^(dac_bits * (K-1-k))`` for ``K = ceil(a_bits / dac_bits)`` cycles (``[1]`` when ``dac_bits = a_bits``)."""
    n_cycles = math.ceil(a_bits / dac_bits)
    return [2 ** (dac_bits * (n_cycles - 1 - k)) for k in range(n_cycles)]


def slice_inputs(a_int: torch.Tensor, dac_bits: int, n_cycles: int) -> torch.Tensor:
    """Split unsigned integer activations into ``n_cycles`` input slices of ``dac_bits`` bits, most significant
    first: ``[*shape] -> [K, *shape]`` with ``a_int = sum_k 2^(dac_bits*(K-1-k)) * slice_k``. As for weights
    (:func:`slice_bits`), each slice gets ``1/K`` of the straight-through gradient divided by its significance."""
    copies = a_int.unsqueeze(0).expand(n_cycles, *a_int.shape).unsqueeze(0)  # [1, K, *shape]
    return _SliceBits.apply(copies, dac_bits, _UNSIGNED, False).squeeze(0)


def _split_shift_view(n_splits: int, cell_bits: int, like: torch.Tensor) -> torch.Tensor:
    shifts = [2.0 ** (cell_bits * (n_splits - 1 - s)) for s in range(n_splits)]
    view = [1, n_splits] + [1] * (like.dim() - 2)
    return torch.tensor(shifts, dtype=like.dtype, device=like.device).reshape(view)


def dequant_ops(mapping: ArrayMapping, weight: Granularity, psum: Granularity | None, weight_per_split: bool) -> int:
    """Dequantization multiplies per output position (paper Fig. 4; :mod:`cimexp.cim.cost`) of a layer mapped as
    ``mapping`` with ``weight`` and ``psum`` step granularities (``psum=None``: partial sums not quantized) and
    weight steps of its own for every bit-split or not. Scales are applied at the finer of the two levels."""
    level = weight if psum is None else max(weight, psum)
    if level is Granularity.COLUMN:
        return mapping.n_columns
    # Splits with weight steps of their own are scaled apart before they are added: one multiply per split.
    splits = mapping.n_splits if weight_per_split else 1
    if level is Granularity.LAYER:
        return splits
    return mapping.n_row_tiles * mapping.n_polarities * mapping.out_channels * splits  # ARRAY, CHANNEL


@dataclass(frozen=True)
class ConvGeometry:
    """What a tile's convolution needs of a layer besides tensors: kernel size, stride, padding (numbers, or
    ``"same"``/``"valid"``, which :meth:`out_size` and the fused kernel do not take), dilation, channels per row tile
    (every tile holds that many input channels of its group, the last one fewer)."""

    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int] | str
    dilation: tuple[int, int]
    channels_per_tile: int

    def out_size(self, h: int, w: int) -> tuple[int, int]:
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel_size, self.stride, self.padding, self.dilation
        return (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1


def tile_psums(
    a_int: torch.Tensor, cond: torch.Tensor, geometry: ConvGeometry, groups: int = 1, one_conv: bool = False
) -> list[torch.Tensor]:
    """Every column's partial sum: the input codes ``a_int`` ``[B, C, H, W]`` convolved with the programmed cells
    ``cond`` ``[T, P, S, O, R]``, as ``[B, G_i, O, H_out, W_out]`` blocks of consecutive row tiles (``G_i`` = their
    tiles x ``P*S``, tile-major; paper Fig. 5).

    By default one convolution per tile over the channels it holds (of every group of a grouped layer, whose outputs
    it takes group-major, ``(g, p*s, o_g)``): exactly ``P*S`` times the layer's multiply-adds, one block per tile.
    ``one_conv`` (a dense layer only): one convolution with one group per tile over zero-padded channels, one
    block (fewer launches, which bound small layers on GPUs).
    """
    n_tiles = cond.shape[0]
    (kh, kw), cpt = geometry.kernel_size, geometry.channels_per_tile
    in_per_group, out_per_group = a_int.shape[1] // groups, cond.shape[3] // groups
    conv = functools.partial(
        F.conv2d, bias=None, stride=geometry.stride, padding=geometry.padding, dilation=geometry.dilation
    )
    if one_conv and n_tiles > 1 and groups == 1:
        padded = F.pad(a_int, (0, 0, 0, 0, 0, n_tiles * cpt - a_int.shape[1]))
        return [conv(padded, cond.reshape(-1, cpt, kh, kw), groups=n_tiles).unflatten(1, (-1, cond.shape[3]))]
    psums = []
    for t in range(n_tiles):
        channels = min(cpt, in_per_group - t * cpt)
        weight = cond[t].reshape(-1, cpt, kh, kw)[:, :channels]  # [P*S*O, channels, kh, kw]
        held = slice(t * cpt, t * cpt + channels)
        inputs = a_int if n_tiles == 1 else a_int.unflatten(1, (groups, -1))[:, :, held].flatten(1, 2)
        weight = weight.unflatten(0, (-1, groups, out_per_group)).transpose(0, 1).flatten(0, 2)
        psum = conv(inputs, weight, groups=groups).unflatten(1, (groups, -1, out_per_group))
        psums.append(psum.transpose(1, 2).flatten(2, 3))  # [B, P*S, O, H_out, W_out]
    return psums
