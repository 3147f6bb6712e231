"""Learned step size quantization (LSQ, Esser et al. 2020) and the fused ADC + shift-and-add.

LSQ quantizes ``v`` with a learnable step ``s`` to ``clamp(round(v / s), qmin, qmax)``. Here the integer part and
the multiplication by ``s`` are kept apart: the CIM layer computes integer weights and activations, multiplies
them in the (integer) array domain and only then rescales. Autograd through ``round_ste(clamp(v / s))`` followed by
the rescale reproduces LSQ's gradients exactly (``d/ds = round(v/s) - v/s`` inside the range, ``qmin`` or ``qmax``
outside). :func:`grad_scale` applies LSQ's step-gradient scale ``g = 1 / sqrt(N * qmax)``.
"""

from __future__ import annotations

import contextlib
import functools
import math
import warnings
from collections.abc import Callable, Iterator

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
    def forward(ctx, x: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.scale, None


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round to nearest (half to even), with a straight-through gradient."""
    return _RoundSTE.apply(x)


def grad_scale(x: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """Identity in the forward pass; multiplies the gradient by ``scale`` (exact forward, unlike the
    ``(x - x*g).detach() + x*g`` idiom, which can move ``x`` by an ulp)."""
    return _GradScale.apply(x, scale)


def output_unit_gradient(step: torch.Tensor, unit_sq: torch.Tensor) -> torch.Tensor:
    """Identity in the forward pass; divides the gradient of ``step`` by ``unit_sq`` (broadcastable to it).

    An ADC step is kept in integer MAC units, as the hardware's ADC reference is, while the output it quantizes is
    in output units: output step = ``c * step`` with ``c`` the column's dequantization factor (weight step x
    activation step x split shift, ~1e-3). Plain SGD on ``step`` then moves the output step by ``c^2`` times
    (~1e-6) what SGD on the output step itself would, and the steps never learn. With ``unit_sq = c^2`` (detached;
    the mean over the columns that share a step) an SGD update of ``step`` is the update LSQ makes of the output
    step: ``dL/dstep = c * dL/d(output step)``, and ``lr * dL/d(output step) / c`` is its change in integer units.
    """
    return grad_scale(step, 1.0 / unit_sq)


def positive(step: torch.Tensor) -> torch.Tensor:
    """``|step|``, at least ``STEP_EPS``: a step that an optimizer pushes through zero reflects and keeps learning
    (a plain clamp would freeze it, and its column, for good)."""
    return step.abs().clamp_min(STEP_EPS)


def effective_step(step: torch.Tensor, n_per_step: float, qmax: float, scale: float | None = None) -> torch.Tensor:
    """The step as used in the forward pass: its gradient scaled by ``scale`` (``None``: LSQ's
    :func:`lsq_grad_scale`), then :func:`positive`."""
    return positive(grad_scale(step, lsq_grad_scale(n_per_step, qmax) if scale is None else scale))


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
    return fill_dead(2.0 * mean_abs / torch.sqrt(qmax))


def fill_dead(step: torch.Tensor) -> torch.Tensor:
    """``step`` with its zero entries (groups that saw no signal) set to the mean of the others (1 if all are
    zero): a zero step would stay at :data:`STEP_EPS`, useless once a signal appears."""
    alive = step > 0
    if bool(alive.all()):
        return step
    fallback = step[alive].mean() if bool(alive.any()) else torch.ones((), dtype=step.dtype, device=step.device)
    return torch.where(alive, step, fallback)


@torch.no_grad()
def range_init(
    samples: torch.Tensor,
    qmin: torch.Tensor | float,
    qmax: torch.Tensor | float,
    percentile: float,
    groups: torch.Tensor,
    n_groups: int,
) -> torch.Tensor:
    """Steps that put the ``percentile``-th percentile of each group's magnitudes on the top code: max calibration
    at 100 (nothing clips), percentile calibration below.

    ``samples`` ``[N, *cols]`` holds N observed values per column; ``qmin``, ``qmax`` broadcast to ``cols`` (the
    code range of every column); ``groups`` ``[*cols]`` (int64) gives every column's step group in
    ``0 .. n_groups - 1``. A value's magnitude is ``|v| / qmax`` in a signed code range and ``max(v, 0) / qmax`` in
    an unsigned one (``qmin >= 0``), so the columns of one group may have different ranges. The percentile pools
    all values of a group and interpolates linearly between order statistics (as ``torch.quantile``). Returns
    ``[n_groups]``; groups without signal get the mean of the others (:func:`fill_dead`).
    """
    like = {"dtype": samples.dtype, "device": samples.device}
    qmin = torch.as_tensor(qmin, **like)
    qmax = torch.as_tensor(qmax, **like).clamp_min(1.0)
    magnitude = torch.where(qmin < 0, samples.abs(), samples.clamp_min(0)) / qmax
    magnitude = magnitude.reshape(samples.shape[0], -1)  # [N, C]
    ids = groups.reshape(-1).to(samples.device)
    if percentile >= 100:
        per_column = magnitude.amax(0)
        step = per_column.new_zeros(n_groups).scatter_reduce_(0, ids, per_column, "amax")
    elif ids.numel() == n_groups:  # one column per group
        step = magnitude.new_empty(n_groups).index_copy_(0, ids, percentile_of(magnitude, percentile))
    else:
        step = torch.stack([percentile_of(magnitude[:, ids == g].flatten(), percentile) for g in range(n_groups)])
    return fill_dead(step)


def percentile_of(values: torch.Tensor, percentile: float) -> torch.Tensor:
    """The ``percentile``-th percentile (0..100) of ``values`` along dim 0, interpolating linearly between order
    statistics like ``torch.quantile`` (which refuses inputs above 2^24 elements; this has no such limit).

    The two order statistics are exact either way: near either end (the calibration's 99.99th percentile: the 14th
    largest of 131,072 partial sums of a column) one ``topk`` gives both; elsewhere ``kthvalue``. Both run along the
    last, contiguous dimension of a transposed copy: order statistics along dim 0 (stride = the column count) were
    20x slower on CPUs, most of a VGG-8 calibration's time."""
    n = values.shape[0]
    position = percentile / 100 * (n - 1)
    low = math.floor(position)
    rows = values.movedim(0, -1).contiguous()  # [*cols, N]
    few = max(n // 64, 2)  # order statistics this close to an end come from one topk
    if n - low <= few:  # the (low+1)-th smallest is the (n-low)-th largest
        top = rows.topk(n - low, dim=-1).values  # descending
        below, above = top[..., -1], top[..., max(n - low - 2, 0)]
    elif low + 2 <= few:
        bottom = rows.topk(low + 2, dim=-1, largest=False).values  # ascending
        below, above = bottom[..., low], bottom[..., low + 1]
    else:
        below = rows.kthvalue(low + 1, -1).values
        if position == low:
            return below
        above = rows.kthvalue(low + 2, -1).values
    return below if position == low else below + (position - low) * (above - below)


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
    reverse. Each group tries ``lsq_step * f`` for ``f`` in :data:`MSE_SEARCH_FACTORS` and keeps the best (the first
    of equal ones). LSQ's ``2 E|v| / sqrt(qmax)`` alone is far too coarse for ADCs: a column's partial sum adds ~100
    non-negative products, so its mean dwarfs its spread, and a zero-anchored range sized by the mean wastes most
    codes.

    Every column's errors for all candidates come from one fused kernel (:func:`_mse_errors`, compiled as the
    ADC kernels are, :func:`set_kernels`) over blocks of columns whose values lie contiguous: a VGG-8 calibration
    with 3-bit ADCs spent 90% of its time here as 7 eager passes per candidate over ``[N, columns]``.
    :func:`mse_errors_reference` is that literal form, which the tests hold it to.
    """
    cols = samples.shape[1:]
    n = samples.shape[0]
    rows = samples.movedim(0, -1).reshape(-1, n)  # [C, N]: each column's values contiguous
    like = {"dtype": samples.dtype, "device": samples.device}
    lo = torch.as_tensor(qmin, **like).expand(cols).reshape(-1, 1)
    hi = torch.as_tensor(qmax, **like).expand(cols).reshape(-1, 1)
    candidates = [lsq_step * factor for factor in MSE_SEARCH_FACTORS]
    steps = torch.stack([expand(step).expand(cols).reshape(-1) for step in candidates], 1)  # [C, F]
    block = max(1, _MSE_BLOCK_ELEMENTS // (n * len(candidates)))
    errors = _kernel(_mse_errors)
    err = torch.cat(
        [errors(rows[c : c + block], steps[c : c + block], lo[c : c + block], hi[c : c + block])
         for c in range(0, rows.shape[0], block)]
    )  # fmt: skip
    best_err, best = None, lsq_step
    for index, step in enumerate(candidates):
        group_err = reduce(err[:, index].reshape(cols))
        if best_err is None:
            best_err, best = group_err, step
        else:
            better = group_err < best_err
            best_err, best = torch.where(better, group_err, best_err), torch.where(better, step, best)
    return best


_MSE_BLOCK_ELEMENTS = 2**21
"""Values x candidates that one call of :func:`_mse_errors` covers (eager: its temporaries stay in cache)."""


def _mse_errors(rows: torch.Tensor, steps: torch.Tensor, qmin: torch.Tensor, qmax: torch.Tensor) -> torch.Tensor:
    """``[C, F]``: the mean squared error of quantizing each row of ``rows`` ``[C, N]`` with each of its candidate
    steps ``steps`` ``[C, F]`` to codes in ``[qmin, qmax]`` (``[C, 1]``)."""
    x, s = rows.unsqueeze(1), steps.unsqueeze(2)
    return (torch.clamp(torch.round(x / s), qmin.unsqueeze(2), qmax.unsqueeze(2)) * s - x).square().mean(2)


def mse_errors_reference(
    samples: torch.Tensor, step: torch.Tensor, qmin: torch.Tensor | float, qmax: torch.Tensor | float
) -> torch.Tensor:
    """``[*cols]``: every column's mean squared quantization error of ``samples`` ``[N, *cols]`` with the
    per-column steps ``step`` (broadcast to ``cols``), written as the definition reads (the literal form of
    :func:`_mse_errors`)."""
    return (torch.clamp(torch.round(samples / step), qmin, qmax) * step - samples).square().mean(0)


def sync_mean(t: torch.Tensor) -> torch.Tensor:
    """Average ``t`` over distributed ranks (when running distributed), so that step sizes initialised from each
    rank's first batch agree everywhere."""
    if dist.is_available() and dist.is_initialized():
        # NCCL reduces CUDA tensors only; calibration may run before the strategy moved the model to its GPU.
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else t.device
        reduced = t.to(device, copy=True)
        dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
        t = (reduced / dist.get_world_size()).to(t.device)
    return t


def adc_shift_add(
    psum: torch.Tensor,
    step: torch.Tensor,
    factor: torch.Tensor,
    qmin: torch.Tensor,
    qmax: torch.Tensor,
    int16_psums: bool = False,
) -> torch.Tensor:
    """Quantize every column's partial sum with its ADC and shift-and-add the dequantized results.

    ``y[b, o, l] = sum_g clamp(round(psum[b, g, o, l] / step[g, o]), qmin[g], qmax[g]) * step[g, o] * factor[g, o]``

    Shapes: ``psum`` ``[B, G, O, L]`` (``G`` = columns per output channel = row tiles x polarities x splits,
    ``L`` = output positions); ``step``, ``factor`` ``[G, O]``; ``qmin``, ``qmax`` ``[G, 1]``. ``factor`` carries
    polarity x split shift x the weight and activation scales. Gradients are LSQ's (straight-through inside the
    ADC range). One autograd node that saves only ``psum``; its forward and backward are the fused kernels
    :func:`adc_forward` and :func:`adc_backward` (compiled, see :func:`set_kernels`). ``int16_psums`` promises
    that every partial sum is an integer of magnitude below 2^15 (integer codes and activations on small arrays):
    they are then saved as int16, exactly, in half the memory of float32.
    """
    return _AdcShiftAdd.apply(psum, step, factor, qmin, qmax, int16_psums)


def adc_forward(
    psum: torch.Tensor, step: torch.Tensor, factor: torch.Tensor, qmin: torch.Tensor, qmax: torch.Tensor
) -> torch.Tensor:
    """The value of :func:`adc_shift_add` (no autograd): ``[B, G, O, L] -> [B, O, L]``."""
    codes = torch.clamp(torch.round(psum / step.unsqueeze(-1)), qmin.unsqueeze(-1), qmax.unsqueeze(-1))
    return (codes * (step * factor).unsqueeze(-1)).sum(1)


def adc_backward(
    psum: torch.Tensor,
    step: torch.Tensor,
    factor: torch.Tensor,
    qmin: torch.Tensor,
    qmax: torch.Tensor,
    grad_y: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The gradients of :func:`adc_shift_add` given ``grad_y`` ``[B, O, L]``: ``(grad_psum [B, G, O, L],
    grad_step [G, O], grad_factor [G, O])``. Straight-through inside the ADC range; LSQ's step gradient
    ``code - v`` (the rounding error) inside, the clip level outside."""
    v = psum / step.unsqueeze(-1)
    lo, hi = qmin.unsqueeze(-1), qmax.unsqueeze(-1)
    inside = (v >= lo) & (v <= hi)
    codes = torch.clamp(torch.round(v), lo, hi)
    gy = grad_y.unsqueeze(1)
    grad_factor = (codes * gy).sum((0, 3)) * step
    grad_step = (torch.where(inside, codes - v, codes) * gy).sum((0, 3)) * factor
    grad_psum = torch.where(inside, gy * factor.unsqueeze(-1), torch.zeros((), dtype=psum.dtype, device=psum.device))
    return grad_psum, grad_step, grad_factor


class _AdcShiftAdd(torch.autograd.Function):
    @staticmethod
    def forward(ctx, psum, step, factor, qmin, qmax, int16_psums):
        y = _kernel(adc_forward)(psum, step, factor, qmin, qmax)
        saved = psum.to(torch.int16) if int16_psums and ctx.needs_input_grad[0] else psum
        ctx.save_for_backward(saved, step, factor, qmin, qmax)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        psum, *rest = ctx.saved_tensors
        # int16 -> float outside the compiled kernel: inductor's CPU code for the mixed-dtype loop is much slower.
        psum = psum.to(rest[0].dtype)
        grad_psum, grad_step, grad_factor = _kernel(adc_backward)(psum, *rest, grad_y)
        need_psum, need_step, need_factor = ctx.needs_input_grad[:3]
        return (
            grad_psum if need_psum else None,
            grad_step if need_step else None,
            grad_factor if need_factor else None,
            None,
            None,
            None,
        )


# --- compiled kernels ---------------------------------------------------------------------------------------
# Eager PyTorch runs the ADC as a chain of elementwise ops, each a full pass over the [B, G, O, L] partial sums
# (S*T times the layer's output); the backward needs about ten. Compiled (inductor: C++/OpenMP on CPU, Triton on
# GPU) each becomes one or two fused loops, one pass over the partial sums instead of many (timings:
# experiments/results/bench). Shapes are dynamic, so every layer shape and batch size shares one compiled kernel
# per dtype and device.

KERNEL_MODES = ("auto", "compiled", "eager", "triton")
_kernel_mode = "auto"
_compiled: dict[Callable, Callable] = {}
_compile_failed: set[Callable] = set()


def set_kernels(mode: str) -> str:
    """Choose how the fused ADC kernels (and the ``mse`` calibration's error kernel, :func:`mse_init`) run:
    ``"auto"`` (default: compiled with ``torch.compile``, falling back
    to eager ops with a warning where compiling fails, e.g. without a C++ compiler), ``"compiled"`` (fail
    instead), ``"eager"`` (plain PyTorch ops, no compilation) or ``"triton"`` (``"auto"``, and the fast path of a
    dense layer with integer operands in one Triton kernel of convolution, ADC and shift-and-add,
    :mod:`cimexp.cim.fused`, where Triton runs: CUDA, or a CPU under ``TRITON_INTERPRET=1``). Returns the
    previous mode. Inside a
    ``torch.compile``-d model the plain functions are traced into the model's graph whatever the mode."""
    global _kernel_mode
    if mode not in KERNEL_MODES:
        raise ValueError(f"invalid kernels={mode!r}; valid choices: {', '.join(KERNEL_MODES)}")
    previous, _kernel_mode = _kernel_mode, mode
    return previous


_RECOMPILE_LIMIT = 64
"""Shapes a compiled kernel may specialise for (sizes 0 and 1 get their own code; tests meet many)."""
_LIMIT_NAME = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"


def kernel_mode() -> str:
    """The mode :func:`set_kernels` set."""
    return _kernel_mode


def _kernel(fn: Callable) -> Callable:
    """``fn`` as the current kernel mode runs it. Its arguments are normalised to detached, contiguous tensors
    that are not views, so that strides, views and ``requires_grad`` flags never cause a recompile."""
    if _kernel_mode == "eager" or torch.compiler.is_compiling() or fn in _compile_failed:
        return fn
    if fn not in _compiled:
        _compiled[fn] = torch.compile(fn, dynamic=True, fullgraph=True)
    return functools.partial(_call_compiled, fn)


def _plain(t: torch.Tensor) -> torch.Tensor:
    t = t.detach()
    return t if t.is_contiguous() and t.storage_offset() == 0 else t.clone(memory_format=torch.contiguous_format)


def _call_compiled(fn: Callable, *args: torch.Tensor):
    args = tuple(_plain(t) for t in args)
    try:
        with torch._dynamo.config.patch(**{_LIMIT_NAME: _RECOMPILE_LIMIT}):
            return _compiled[fn](*args)
    except Exception as error:
        if _kernel_mode == "compiled":
            raise  # noqa: BLE001 - any compiler failure: the eager function computes the same
        _compile_failed.add(fn)
        warnings.warn(
            f"cimexp: compiling the fused kernel {fn.__name__} failed ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}); running it as eager PyTorch ops (slower). "
            "Set cim kernels to 'eager' to silence this.",
            RuntimeWarning,
            stacklevel=3,
        )
        return fn(*args)


def per_copy_lsq_correction(
    codes: torch.Tensor, w_int: torch.Tensor, s_w: torch.Tensor, split_shift: torch.Tensor
) -> torch.Tensor:
    """Zero in the forward pass; makes the gradient of split ``s``'s own weight step LSQ's for its copy of the weight.

    With column-wise weight steps every split quantizes its own copy of the weight (paper Sec. III-C),
    ``q_s = round(w / s_s)``, and keeps its bits: ``s_s * shift_s * code_s(q_s)``. Taken literally, the step's
    gradient is ``shift_s * code_s - u_s / S`` (``u_s = w / s_s``, ``S`` splits): the split's bits minus its share
    of ``u``, a term as large as the weight itself, with opposite signs for the high and the low split (their sum
    is LSQ's ``q - u`` only when the steps are shared). Trained with it, the steps of the splits of one weight
    drift apart, after which the splits take their bits from different integers and the stored weight is no
    quantization of the float one (the measurement: ``experiments/results/medium/README.md``).

    This term's gradient replaces ``shift_s * code_s`` by the split's share ``q_s / S`` of its copy: each split's step
    then gets ``(q_s - u_s) / S``, LSQ's rounding error of its own copy (through the straight-through ``1/S`` share
    of :func:`~cimexp.cim.mapping.slice_bits`), and with equal steps the sum over the splits is plain LSQ's.

    Shapes: ``codes``, ``w_int`` ``[P, S, O, T, R]``; ``s_w`` ``[P, S, T, O]``; ``split_shift`` ``[S]`` (signed).
    """
    step = s_w.permute(0, 1, 3, 2).unsqueeze(-1)  # [P, S, O, T, 1]
    shift = split_shift.reshape(1, -1, 1, 1, 1)
    ratio = (w_int / codes.shape[1] - shift * codes.detach()) / (shift * step.detach())
    correction = step * ratio
    return correction - correction.detach()


@contextlib.contextmanager
def tf32_off() -> Iterator[None]:
    """cuDNN's TF32 convolutions switched off (eager mode only: a compiled graph reads the flag once)."""
    previous = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = previous
