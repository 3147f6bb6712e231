"""ADC non-idealities and partial-sum telemetry (both opt-in; the ideal ADC is :func:`cimexp.cim.quant.adc_shift_add`).

**Non-idealities** act on the ADC input in LSB of the learned step, ``v = P / s_p`` (``P`` a column's partial sum
in integer MAC units), before rounding. One line per model:

- noise: ``v + noise_lsb * n``, ``n ~ N(0, 1)`` drawn anew for every conversion (thermal / comparator noise);
- offset: ``v + o``, ``o ~ N(0, offset_lsb^2)`` drawn once per ADC (static);
- gain: ``v * (1 + g)``, ``g ~ N(0, gain_sigma^2)`` drawn once per ADC (static; reference / slope error);
- DNL/INL: the threshold between codes ``q-1`` and ``q`` sits at ``q - 1/2 + d_q``, ``d_q ~ N(0, dnl_lsb^2)``
  drawn once per (ADC, threshold); the code is ``adc_min`` plus the number of thresholds below ``v`` (thresholds
  that cross give missing codes, as in a real flash ADC). INL is the running effect of these errors.

Combined: ``code = clamp(round((v * (1 + g) + o + noise_lsb * n)), adc_min, adc_max)`` (rounding through the
perturbed thresholds when ``dnl_lsb > 0``). ``share`` adjacent columns of an array are converted by one ADC
(column multiplexing) and so share its static errors. Static errors come from one generator seeded with ``seed``
and are drawn layer by layer in module order, so a (model, errors) pair is always the same chip; they stay fixed
between training and evaluation. With every error at 0 the layer takes the ideal path, bit-identical to no errors.
Training with errors on is noise-aware training: gradients are straight-through, as for the ideal ADC.

**Telemetry** records, while enabled, the ADC input in LSB units of every conversion: clip rate (share of
conversions that saturate at ``adc_min`` / ``adc_max``), code utilisation (share of the ``2^b`` codes used) and a
histogram, per layer and optionally per column (:class:`PsumTelemetry`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from cimexp.cim.quant import round_ste


@dataclass(frozen=True)
class ADCErrors:
    """ADC non-idealities (see the module docstring for the formulas). All in LSB of the learned ADC step."""

    noise_lsb: float = 0.0
    offset_lsb: float = 0.0
    gain_sigma: float = 0.0
    dnl_lsb: float = 0.0
    share: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("noise_lsb", "offset_lsb", "gain_sigma", "dnl_lsb"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
                raise ValueError(f"invalid adc {name}={value!r}; valid values: a float >= 0")
        if isinstance(self.share, bool) or not isinstance(self.share, int) or self.share < 1:
            raise ValueError(f"invalid adc share={self.share!r}: columns per ADC; valid values: integers >= 1")

    @property
    def ideal(self) -> bool:
        return self.noise_lsb == 0 and self.offset_lsb == 0 and self.gain_sigma == 0 and self.dnl_lsb == 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ADCState:
    """One layer's drawn static errors, one value per column ``[P, S, T, O]`` (columns sharing an ADC share it)."""

    errors: ADCErrors
    offset: torch.Tensor  # [P, S, T, O]
    gain: torch.Tensor  # [P, S, T, O], the (1 + g) factor
    dnl: torch.Tensor | None  # [P, S, T, O, 2^b - 1] threshold shifts, or None


def draw_adc_state(layer: nn.Module, errors: ADCErrors, generator: torch.Generator) -> ADCState:
    """Draw one layer's static ADC errors: per ADC, gathered to its columns."""
    m = layer.mapping
    index = m.adc_index(errors.share).flatten()  # [P*S*T*O] ADC of every column
    n_adcs = int(index.max()) + 1
    n_thresholds = 2**m.adc_bits - 1
    like = {"device": layer.weight.device, "dtype": layer.weight.dtype}
    shape = (m.n_polarities, m.n_splits, m.n_row_tiles, m.out_channels)

    def per_column(sigma: float, *extra: int) -> torch.Tensor:
        draws = torch.randn((n_adcs, *extra), generator=generator, dtype=torch.float64) * sigma
        return draws[index].reshape(*shape, *extra).to(**like)

    offset = per_column(errors.offset_lsb)
    gain = 1 + per_column(errors.gain_sigma)
    dnl = per_column(errors.dnl_lsb, n_thresholds) if errors.dnl_lsb > 0 else None
    return ADCState(errors, offset, gain, dnl)


def nonideal_adc_shift_add(
    psum: torch.Tensor,
    step: torch.Tensor,
    factor: torch.Tensor,
    qmin: torch.Tensor,
    qmax: torch.Tensor,
    state: ADCState,
    offset: torch.Tensor,
    gain: torch.Tensor,
    dnl: torch.Tensor | None,
) -> torch.Tensor:
    """:func:`~cimexp.cim.quant.adc_shift_add` through non-ideal ADCs: same shapes and result layout, with
    ``offset``, ``gain`` ``[G, O]`` and ``dnl`` ``[G, O, 2^b - 1]`` the layer's static errors in ``G`` order.
    Plain autograd ops (straight-through rounding); slower than the fused ideal path, used only when errors
    are on."""
    v = psum / step.unsqueeze(-1)
    v = v * gain.unsqueeze(-1) + offset.unsqueeze(-1)
    if state.errors.noise_lsb > 0:
        v = v + state.errors.noise_lsb * torch.randn_like(v)
    lo, hi = qmin.unsqueeze(-1), qmax.unsqueeze(-1)
    codes = torch.clamp(round_ste(v), lo, hi)
    if dnl is not None:
        with torch.no_grad():
            flash = lo.expand_as(v).clone()
            for q in range(dnl.shape[-1]):  # threshold between codes qmin+q and qmin+q+1
                flash += v > (lo + (q + 0.5) + dnl[..., q].unsqueeze(-1))
            flash = torch.minimum(flash, hi)
        codes = codes + (flash - codes).detach()
    return (codes * (step * factor).unsqueeze(-1)).sum(1)


@dataclass
class PsumStats:
    """Accumulated ADC-input statistics of one layer, exact and in one pass over each batch; see :meth:`summary`.

    Every conversion's input ``v`` (LSB units) is rounded, as the ADC does, and counted in a 1-LSB histogram over
    ``[-2^b, 2^b]`` (values beyond land in the edge bins), kept separately for signed- and unsigned-range columns.
    Clip counts and used codes follow exactly from these integer bins: a rounded value below ``adc_min`` or above
    ``adc_max`` clips. Inputs that are NaN (a network whose training diverged) have no code: they are counted in
    ``nan_conversions`` and kept out of the histogram, so the run still reports its (chance-level) validation.
    """

    adc_bits: int
    per_column: bool = False
    conversions: int = 0
    nan_conversions: int = 0
    counts: torch.Tensor | None = None  # [2, 2^(b+1) + 1]: rounded values -2^b..2^b, unsigned / signed columns
    column_clips: torch.Tensor | None = None  # [G, O] clipped conversions per column
    column_conversions: int = 0

    @property
    def hist_range(self) -> int:
        return 2**self.adc_bits

    @torch.no_grad()
    def update(self, v: torch.Tensor, qmin: torch.Tensor, qmax: torch.Tensor) -> None:
        """Add one batch of ADC inputs ``v`` ``[B, G, O, L]`` (LSB units) with code ranges ``[G, 1]``."""
        r = self.hist_range
        rounded = torch.round(v)
        if self.per_column:
            lo, hi = qmin.unsqueeze(-1), qmax.unsqueeze(-1)
            clips = ((rounded < lo) | (rounded > hi)).sum((0, 3)).cpu()
            self.column_clips = clips if self.column_clips is None else self.column_clips + clips
            self.column_conversions += v.shape[0] * v.shape[3]
        signed = (qmin < 0).to(torch.int32).reshape(1, -1, 1, 1)  # the two code ranges of a layer
        nan = torch.isnan(rounded)
        key = rounded.clamp_(-r, r).to(torch.int32).add_(r).add_(signed * (2 * r + 1))
        key = key.masked_fill_(nan, 2 * (2 * r + 1))  # one extra bin past both ranges
        counts = torch.bincount(key.flatten(), minlength=2 * (2 * r + 1) + 1).cpu()
        self.nan_conversions += int(counts[-1])
        counts = counts[:-1].reshape(2, -1)
        self.counts = counts if self.counts is None else self.counts + counts
        self.conversions += v.numel()

    @property
    def histogram(self) -> torch.Tensor | None:
        """Conversions per rounded ADC input ``-2^b .. 2^b`` (1-LSB bins, edges :meth:`histogram_edges`)."""
        return None if self.counts is None else self.counts.sum(0)

    def histogram_edges(self) -> torch.Tensor:
        r = self.hist_range
        return torch.arange(-r, r + 2, dtype=torch.float32) - 0.5

    def summary(self) -> dict[str, Any]:
        """Scalars: ``clip_rate``, ``clip_low``, ``clip_high``, ``nan_rate`` (shares of conversions),
        ``code_utilization`` (share of the ``2^b`` codes used at least once), ``conversions``; plus
        ``column_clip_rate`` ``[G, O]`` when recorded per column."""
        n = max(self.conversions, 1)
        r, codes = self.hist_range, 2**self.adc_bits
        low = high = 0
        used = torch.zeros(codes, dtype=torch.bool)
        if self.counts is not None:
            for signed, counts in enumerate(self.counts):
                qmin = -(codes // 2) if signed else 0
                qmax = qmin + codes - 1
                low += int(counts[: qmin + r].sum())
                high += int(counts[qmax + r + 1 :].sum())
                in_range = counts[qmin + r : qmax + r + 1].clone()
                in_range[0] += counts[: qmin + r].sum()  # clipped conversions read adc_min / adc_max
                in_range[-1] += counts[qmax + r + 1 :].sum()
                used |= in_range > 0
        out: dict[str, Any] = {
            "conversions": self.conversions,
            "clip_rate": (low + high) / n,
            "clip_low": low / n,
            "clip_high": high / n,
            "nan_rate": self.nan_conversions / n,
            "code_utilization": int(used.sum()) / codes,
        }
        if self.column_clips is not None:
            out["column_clip_rate"] = self.column_clips / max(self.column_conversions, 1)
        return out


def adc_errors_tile_major(
    state: ADCState, n_cycles: int
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """The static errors ``(offset, gain, dnl)`` of ``state``, each ``[P, S, T, O(, thresholds)]`` per column, in the
    ``[K*G, O(, thresholds)]`` order of a layer's forward pass (``G`` tile-major ``(t, p, s)``; the same ADC converts
    every one of the ``K`` input cycles of a column)."""

    def tile_major(per_column: torch.Tensor | None) -> torch.Tensor | None:
        if per_column is None:
            return None
        moved = per_column.permute(2, 0, 1, 3, *range(4, per_column.dim()))
        return moved.flatten(0, 2).repeat(n_cycles, *([1] * (per_column.dim() - 3)))

    return tile_major(state.offset), tile_major(state.gain), tile_major(state.dnl)
