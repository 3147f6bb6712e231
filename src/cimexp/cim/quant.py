"""Learned step size quantization (LSQ, Esser et al. 2020) and the fused ADC + shift-and-add.

LSQ quantizes ``v`` with a learnable step ``s`` to ``clamp(round(v / s), qmin, qmax)``. Here the integer part and
the multiplication by ``s`` are kept apart: the CIM layer computes integer weights and activations, multiplies
them in the (integer) array domain and only then rescales. Autograd through ``round_ste(clamp(v / s))`` followed by
the rescale reproduces LSQ's gradients exactly (``d/ds = round(v/s) - v/s`` inside the range, ``qmin`` or ``qmax``
outside). :func:`grad_scale` applies LSQ's step-gradient scale ``g = 1 / sqrt(N * qmax)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.distributed as dist

STEP_EPS = 1e-8
"""Smallest step used in a forward pass, so a step pushed to zero cannot divide by zero."""


class _RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad


class _GradScale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.scale, None


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round to nearest (half to even), with a straight-through gradient."""
    return _RoundSTE.apply(x)


def grad_scale(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Identity in the forward pass; multiplies the gradient by ``scale`` (exact forward, unlike the
    ``(x - x*g).detach() + x*g`` idiom, which can move ``x`` by an ulp)."""
    return _GradScale.apply(x, scale)


def positive(step: torch.Tensor) -> torch.Tensor:
    """``|step|``, at least ``STEP_EPS``: a step that an optimizer pushes through zero reflects and keeps learning
    (a plain clamp would freeze it, and its column, for good)."""
    return step.abs().clamp_min(STEP_EPS)


def effective_step(step: torch.Tensor, n_per_step: float, qmax: float) -> torch.Tensor:
    """The step as used in the forward pass: LSQ gradient scaling, then :func:`positive`."""
    return positive(grad_scale(step, lsq_grad_scale(n_per_step, qmax)))


def lsq_grad_scale(n_per_step: float, qmax: float) -> float:
    """LSQ's step-gradient scale ``1 / sqrt(N * qmax)``, ``N`` = elements quantized with one step."""
    return 1.0 / math.sqrt(max(n_per_step, 1.0) * max(qmax, 1.0))


def quantize_int(v: torch.Tensor, step: torch.Tensor, qmin: float, qmax: float) -> torch.Tensor:
    """LSQ's integer part: ``round(clamp(v / step, qmin, qmax))`` with STE (gradients reach ``v`` and ``step``)."""
    return round_ste(torch.clamp(v / step, qmin, qmax))


def lsq_init(mean_abs: torch.Tensor, qmax: float | torch.Tensor) -> torch.Tensor:
    """LSQ's initial step ``2 * E|v| / sqrt(max(qmax, 1))``. Entries with no signal (``E|v| = 0``, e.g. an all-zero
    column) take the mean of the others, so they start at a useful size if a signal appears later."""
    qmax = torch.as_tensor(qmax, dtype=mean_abs.dtype, device=mean_abs.device).clamp_min(1.0)  # 1-bit signed: 0
    step = 2.0 * mean_abs / torch.sqrt(qmax)
    alive = step > 0
    if bool(alive.all()):
        return step
    fallback = step[alive].mean() if bool(alive.any()) else torch.ones((), dtype=step.dtype, device=step.device)
    return torch.where(alive, step, fallback)


MSE_SEARCH_FACTORS = tuple(2.0 ** (k / 4) for k in range(-24, 5))
"""Candidate steps of :func:`mse_init`, relative to LSQ's initial step: 1/64x to 2x in quarter-octaves."""


@torch.no_grad()
def mse_init(
    samples: torch.Tensor,
    lsq_step: torch.Tensor,
    qmin: torch.Tensor | float,
    qmax: torch.Tensor | float,
    reduce: Callable[[torch.Tensor], torch.Tensor],
    expand: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """Initial steps that minimise the quantization MSE of ``samples``, one per step group.

    ``samples`` ``[N, *cols]`` holds N observed values per column; ``lsq_step`` has the step shape (one per group);
    ``reduce`` averages a per-column tensor ``[*cols]`` over each group (to the step shape) and ``expand`` does the
    reverse. Each group tries ``lsq_step * f`` for ``f`` in :data:`MSE_SEARCH_FACTORS` and keeps the best.
    LSQ's ``2 E|v| / sqrt(qmax)`` alone is far too coarse for ADCs: a column's partial sum adds ~100 non-negative
    products, so its mean dwarfs its spread, and a zero-anchored range sized by the mean wastes most codes.
    """
    best_err, best = None, lsq_step
    for factor in MSE_SEARCH_FACTORS:
        step = lsq_step * factor
        full = expand(step)
        err = reduce((torch.clamp(torch.round(samples / full), qmin, qmax) * full - samples).square().mean(0))
        if best_err is None:
            best_err, best = err, step
        else:
            better = err < best_err
            best_err, best = torch.where(better, err, best_err), torch.where(better, step, best)
    return best


def sync_mean(t: torch.Tensor) -> torch.Tensor:
    """Average ``t`` over distributed ranks (when running distributed), so that step sizes initialised from each
    rank's first batch agree everywhere."""
    if dist.is_available() and dist.is_initialized():
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= dist.get_world_size()
    return t


def adc_shift_add(
    psum: torch.Tensor, step: torch.Tensor, factor: torch.Tensor, qmin: torch.Tensor, qmax: torch.Tensor
) -> torch.Tensor:
    """Quantize every column's partial sum with its ADC and shift-and-add the dequantized results.

    ``y[b, o, l] = sum_g clamp(round(psum[b, g, o, l] / step[g, o]), qmin[g], qmax[g]) * step[g, o] * factor[g, o]``

    Shapes: ``psum`` ``[B, G, O, L]`` (``G`` = columns per output channel = row tiles x polarities x splits,
    ``L`` = output positions); ``step``, ``factor`` ``[G, O]``; ``qmin``, ``qmax`` ``[G, 1]``. ``factor`` carries
    polarity x split shift x the weight and activation scales. Gradients are LSQ's (straight-through inside the
    ADC range). One autograd node that saves only ``psum``: the chain of elementwise ops it replaces would keep
    several ``[B, G, O, L]`` intermediates alive for the backward pass.
    """
    return _AdcShiftAdd.apply(psum, step, factor, qmin, qmax)


class _AdcShiftAdd(torch.autograd.Function):
    # Reductions are written as in-place multiplies on fresh [B, G, O, L] tensors followed by sums: einsum would
    # permute these large tensors into matmul layout (copies that cost more than the arithmetic).
    @staticmethod
    def forward(ctx, psum, step, factor, qmin, qmax):
        ctx.save_for_backward(psum, step, factor, qmin, qmax)
        codes = torch.div(psum, step.unsqueeze(-1)).round_()
        codes = torch.maximum(codes, qmin.unsqueeze(-1), out=codes)
        codes = torch.minimum(codes, qmax.unsqueeze(-1), out=codes)
        return codes.mul_((step * factor).unsqueeze(-1)).sum(1)

    @staticmethod
    def backward(ctx, grad_y):
        psum, step, factor, qmin, qmax = ctx.saved_tensors
        need_psum, need_step, need_factor = ctx.needs_input_grad[:3]
        v = psum / step.unsqueeze(-1)
        lo, hi = qmin.unsqueeze(-1), qmax.unsqueeze(-1)
        inside = (v >= lo) & (v <= hi)
        gy = grad_y.unsqueeze(1)
        grad_psum = grad_step = grad_factor = None
        if need_step or need_factor:
            codes = torch.clamp(torch.round(v), lo, hi)
            if need_factor:
                grad_factor = (codes * gy).sum((0, 3)) * step
            if need_step:
                # d(code * step)/d step: code - v inside the range (round error), the clip level outside.
                err = codes.sub_(v.mul_(inside))
                grad_step = err.mul_(gy).sum((0, 3)) * factor
        if need_psum:
            # Written into a fresh contiguous tensor: grad_y may be a stride-0 expansion (from .sum()), and an
            # oddly strided grad_output sends the convolution's backward down a much slower path on CPU.
            grad_psum = torch.mul(gy, factor.unsqueeze(-1), out=torch.empty_like(psum)).mul_(inside)
        return grad_psum, grad_step, grad_factor, None, None
