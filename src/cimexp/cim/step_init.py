"""Initial step sizes of one CIM layer's quantizers, from what they observe: weight steps from the weights, the
activation (DAC) step from a batch's inputs, ADC steps from a batch's partial sums.

Each step group is set as the layer's :class:`~cimexp.cim.options.Calibration` says
(:class:`~cimexp.cim.options.StepInit`): LSQ's ``2 E|v| / sqrt(qmax)`` refined by a search for the lowest
quantization MSE on the observed values (``mse``, the default), LSQ's rule alone (``lsq``), the group's max or
``p``-th percentile magnitude over ``qmax`` (``max``, ``percentile``), or ``E|v|`` (``mean_abs``, weights only).
Groups follow the granularity, so layer-wise steps see the whole layer. The primitives
(:func:`~cimexp.cim.quant.lsq_init`, :func:`~cimexp.cim.quant.range_init`, :func:`~cimexp.cim.quant.mse_init`) are
in :mod:`cimexp.cim.quant`; this module picks a layer's samples, step groups and code ranges for them. The functions
return steps and change nothing: the layer stores them.
"""

from __future__ import annotations

import functools
import math

import torch

from cimexp.cim.mapping import ArrayMapping
from cimexp.cim.options import Calibration, Granularity, StepInit, WeightEncoding
from cimexp.cim.quant import fill_dead, lsq_init, mse_init, range_init

INIT_SAMPLES: dict[StepInit, int | None] = {
    StepInit.MAX: None,
    StepInit.PERCENTILE: 2**16,
    StepInit.LSQ: 4096,
    StepInit.MSE: 4096,
}
"""Observed values per column (activations: in all) that each method initialises a step from, evenly strided
(``None``: all of them). Max must see every value; a 99.99th percentile needs well over 10^4."""


@torch.no_grad()
def initial_weight_step(
    weight: torch.Tensor,
    polarity: torch.Tensor,
    mapping: ArrayMapping,
    granularity: Granularity,
    per_split: bool,
    calibration: Calibration,
) -> torch.Tensor:
    """Weight steps in the shape of ``granularity``'s step (``per_split``: with the splits' axis) from the float
    ``weight`` ``[O, I, kH, kW]``, by ``calibration.weight``. Every column quantizes its own copy of the weights
    (times its ``polarity`` ``[P]``), so each copy is a sample of its column; ``E|w|`` counts only the rows that
    hold weights."""
    m = mapping
    w = m.tile_rows(weight).permute(2, 1, 0)  # [R, T, O]
    samples = w.unsqueeze(1).unsqueeze(1) * polarity.reshape(1, -1, 1, 1, 1)  # [R, P, 1, T, O]
    samples = samples.expand(-1, -1, m.n_splits, -1, -1)  # one copy of the weights per column
    qmin, qmax = m.weight_range()
    if m.encoding is WeightEncoding.DIFFERENTIAL:
        qmin = 0
    mean_abs = m.reduce_to_step(
        w.abs().sum(0).div(_real_rows_per_tile(m, w).unsqueeze(-1)).expand(m.n_polarities, m.n_splits, -1, -1),
        granularity,
        per_split,
    )
    method, percentile = calibration.weight, calibration.percentile
    return _initial_step(samples, mean_abs, float(qmin), float(qmax), method, percentile, m, granularity, per_split)


@torch.no_grad()
def initial_act_step(x: torch.Tensor, qmin: float, qmax: float, calibration: Calibration) -> torch.Tensor:
    """The one activation step (shape ``[]``) from a batch of layer inputs ``x``, by ``calibration.act``, for the
    code range ``[qmin, qmax]``."""
    method = calibration.act
    samples = _subsample(x.detach().flatten(), INIT_SAMPLES[method])
    return _initial_step(samples, samples.abs().mean(), qmin, qmax, method, calibration.percentile)


@torch.no_grad()
def initial_psum_step(
    psum: torch.Tensor,
    adc_min: torch.Tensor,
    adc_max: torch.Tensor,
    mapping: ArrayMapping,
    granularity: Granularity,
    calibration: Calibration,
) -> torch.Tensor:
    """ADC steps (integer MAC units) in the shape of ``granularity``'s step from a batch's partial sums ``psum``
    ``[B, G, O, L]`` (``G`` tile-major ``(t, p, s)``, ``L`` output positions), by ``calibration.psum``; every
    column's code range is ``adc_min``, ``adc_max`` ``[P, S]``."""
    m = mapping
    method = calibration.psum
    cols = (m.n_row_tiles, m.n_polarities, m.n_splits, m.out_channels)
    samples = psum.detach().permute(0, 3, 1, 2).reshape(-1, *cols).permute(0, 2, 3, 1, 4)  # [N, P, S, T, O]
    samples = _subsample(samples, INIT_SAMPLES[method])
    qmin = adc_min.reshape(m.n_polarities, m.n_splits, 1, 1)
    qmax = adc_max.reshape(m.n_polarities, m.n_splits, 1, 1)
    mean_abs = m.reduce_to_step(samples.abs().mean(0), granularity)
    return _initial_step(samples, mean_abs, qmin, qmax, method, calibration.percentile, m, granularity)


def _initial_step(
    samples: torch.Tensor,
    lsq_mean_abs: torch.Tensor,
    qmin: torch.Tensor | float,
    qmax: torch.Tensor | float,
    method: StepInit,
    percentile: float,
    mapping: ArrayMapping | None = None,
    granularity: Granularity | None = None,
    per_split: bool = False,
) -> torch.Tensor:
    """Initial steps by ``method`` from ``samples`` ``[N, P, S, T, O]`` in the shape of ``granularity``'s step
    (``per_split``: with the splits' axis); with ``granularity=None`` one step (shape ``[]``) for all of ``samples``
    ``[N]`` (activations). ``lsq_mean_abs`` is ``E|v|`` per step; ``percentile`` is ``p`` of ``PERCENTILE``."""
    m = mapping
    if method is StepInit.MEAN_ABS:
        return fill_dead(lsq_mean_abs)
    if granularity is None:
        shape, reduce, expand = (), _same, _same
    else:
        shape = m.step_shape(granularity, per_split)
        reduce = functools.partial(m.reduce_to_step, granularity=granularity, per_split=per_split)
        expand = functools.partial(m.expand_step, granularity=granularity)
    if method in (StepInit.MAX, StepInit.PERCENTILE):
        n_groups = math.prod(shape)
        groups = expand(torch.arange(n_groups, device=samples.device).reshape(shape))
        p = 100.0 if method is StepInit.MAX else percentile
        return range_init(samples, qmin, qmax, p, groups, n_groups).reshape(shape)
    step = lsq_init(lsq_mean_abs, qmax if granularity in (None, Granularity.COLUMN) else _amax(qmax))
    if method is StepInit.LSQ:
        return step
    return mse_init(samples, step, qmin, qmax, reduce=reduce, expand=expand)


def _real_rows_per_tile(mapping: ArrayMapping, like: torch.Tensor) -> torch.Tensor:
    """``[T]``: rows that hold weights in each tile (the last tile may be partly empty), in ``like``'s dtype."""
    m = mapping
    channels = torch.full((m.n_row_tiles,), m.channels_per_tile, dtype=like.dtype, device=like.device)
    channels[-1] = m.in_channels - (m.n_row_tiles - 1) * m.channels_per_tile
    return channels * m.kernel_area


def _subsample(samples: torch.Tensor, max_samples: int | None = 4096) -> torch.Tensor:
    """Every ``n // max_samples``-th of the ``n`` rows of ``samples``: ``max_samples`` to ``2 * max_samples - 1`` of
    them, evenly strided (all of them when ``n < 2 * max_samples`` or for ``None``)."""
    if max_samples is None:
        return samples
    stride = max(1, samples.shape[0] // max_samples)
    return samples[::stride]


def _amax(qmax: torch.Tensor | float) -> torch.Tensor | float:
    return qmax.max() if isinstance(qmax, torch.Tensor) else qmax


def _same(t: torch.Tensor) -> torch.Tensor:
    return t
