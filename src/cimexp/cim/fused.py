"""The fast path of a dense layer in one Triton kernel: tile convolution, ADC and shift-and-add, partial sums never
stored (``model.kernels=triton``; :func:`cimexp.cim.quant.set_kernels`).

:func:`fused_tiles_adc` computes what :meth:`cimexp.cim.CIMConv2d._tiles_adc` computes,

    y[b, o, l] = sum_{t, p, s} clamp(round(P[b, t, p, s, o, l] / s_p), q_min, q_max) * s_p * factor,
    P[b, t, p, s, o, l] = sum_r cond[t, p, s, o, r] * a[b, t, r, l]       (the tile's im2col input, row r)

with every partial sum ``P`` an implicit GEMM (im2col addresses computed in the kernel, no unfolded input) that
stays in registers: one program computes a block of output positions x output channels, looping over row tiles,
polarities and splits, and accumulates the dequantized ADC codes. Rounding is half to even and the division IEEE
(``div_rn``), as torch's, and the GEMM runs in full precision (no TF32), so with integer operands (the paper's
setting: integer codes and activations, no cell variation) every ADC code equals the literal simulator's.

The backward pass saves no partial sums: it recomputes them tile by tile with ``F.conv2d`` and differentiates the
same ADC function as the other paths (:func:`cimexp.cim.quant.adc_shift_add`), so its gradients are theirs.

Triton runs on CUDA GPUs; with ``TRITON_INTERPRET=1`` its interpreter runs the same kernel on a CPU (slowly),
which is how the default test tier checks it without a GPU.
"""

from __future__ import annotations

import functools
import os

import torch

from cimexp.cim.mapping import ConvGeometry, tile_psums
from cimexp.cim.quant import adc_shift_add, kernel_mode


def available(device: torch.device) -> bool:
    """Whether the kernel can run on ``device``: Triton installed, and a CUDA device or the interpreter
    (``TRITON_INTERPRET=1``) for a CPU."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return device.type == "cuda" or (device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1")


def fused_path_applies(layer, device: torch.device) -> bool:
    """Whether the kernel computes the fast path of ``layer`` (a :class:`~cimexp.cim.CIMConv2d`) on ``device``:
    ``kernels="triton"`` (:func:`~cimexp.cim.quant.set_kernels`), a dense layer with integer operands (no cell
    variation, quantized activations, partial sums quantized) and numeric padding, and Triton there
    (:func:`available`)."""
    return (
        kernel_mode() == "triton"
        and layer.groups == 1
        and not layer._non_integer_operands
        and not isinstance(layer.padding, str)
        and available(device)
    )


def fused_tiles_adc(
    a_int: torch.Tensor,
    cond: torch.Tensor,
    step: torch.Tensor,
    factor: torch.Tensor,
    qmin: torch.Tensor,
    qmax: torch.Tensor,
    geometry: ConvGeometry,
) -> torch.Tensor:
    """``[B, O, H_out, W_out]``: the layer's output from input codes ``a_int`` ``[B, C, H, W]``, programmed cells
    ``cond`` ``[T, P, S, O, R]``, and per column ADC steps ``step``, dequantization factors ``factor`` ``[G, O]`` and
    code ranges ``qmin``, ``qmax`` ``[G, 1]`` (``G = T*P*S``, tile-major). Differentiable in ``a_int``, ``cond``,
    ``step`` and ``factor``."""
    return _FusedTilesAdc.apply(a_int, cond, step, factor, qmin, qmax, geometry)


def reference_tiles_adc(
    a_int: torch.Tensor,
    cond: torch.Tensor,
    step: torch.Tensor,
    factor: torch.Tensor,
    qmin: torch.Tensor,
    qmax: torch.Tensor,
    geometry: ConvGeometry,
) -> torch.Tensor:
    """:func:`fused_tiles_adc` in PyTorch ops, tile by tile (:func:`~cimexp.cim.mapping.tile_psums`, as the layer's
    fast path, and one ADC call each): the value the kernel must equal, and the function its backward pass
    differentiates."""
    out, columns = None, cond.shape[1] * cond.shape[2]
    for t, psum in enumerate(tile_psums(a_int, cond, geometry)):
        b, _, n_out, h, w = psum.shape
        g = slice(t * columns, (t + 1) * columns)
        y = adc_shift_add(psum.flatten(3), step[g], factor[g], qmin[g], qmax[g])
        out = y if out is None else out + y
    return out.reshape(b, n_out, h, w)


class _FusedTilesAdc(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a_int, cond, step, factor, qmin, qmax, geometry):
        ctx.save_for_backward(a_int, cond, step, factor, qmin, qmax)
        ctx.geometry = geometry
        return _launch(a_int, cond, step, factor, qmin, qmax, geometry)

    @staticmethod
    def backward(ctx, grad_y):
        a_int, cond, step, factor, qmin, qmax = ctx.saved_tensors
        inputs = [
            t.detach().requires_grad_(need)
            for t, need in zip((a_int, cond, step, factor), ctx.needs_input_grad[:4], strict=True)
        ]
        with torch.enable_grad():  # recompute the partial sums tile by tile: none were saved
            y = reference_tiles_adc(*inputs, qmin, qmax, ctx.geometry)
        wanted = [t for t in inputs if t.requires_grad]
        grads = iter(torch.autograd.grad(y, wanted, grad_y) if wanted else ())
        return (*(next(grads) if t.requires_grad else None for t in inputs), None, None, None)


def _launch(a_int, cond, step, factor, qmin, qmax, geometry: ConvGeometry) -> torch.Tensor:
    import triton

    a_int, cond, step, factor = (t.contiguous() for t in (a_int, cond, step, factor))
    qmin, qmax = qmin.reshape(-1).contiguous(), qmax.reshape(-1).contiguous()
    batch, channels, h, w = a_int.shape
    n_tiles, n_pol, n_split, n_out, n_rows = cond.shape
    h_out, w_out = geometry.out_size(h, w)
    y = torch.empty(batch, n_out, h_out, w_out, dtype=a_int.dtype, device=a_int.device)
    positions = batch * h_out * w_out
    block_m, block_n, block_k = 32, 32, 32
    grid = (triton.cdiv(positions, block_m), triton.cdiv(n_out, block_n))
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = geometry.kernel_size, geometry.stride, geometry.padding, geometry.dilation
    _kernel()[grid](
        a_int, cond, step, factor, qmin, qmax, y,
        positions, channels, h, w, h_out, w_out, n_out, n_rows, n_tiles, n_pol * n_split,
        geometry.channels_per_tile, kh, kw, sh, sw, ph, pw, dh, dw,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, FLOAT64=a_int.dtype == torch.float64,
    )  # fmt: skip
    return y


@functools.cache
def _kernel_for(interpret: bool):
    """The kernel, built on first use (Triton chooses compiled or interpreted code when a function is decorated,
    from ``TRITON_INTERPRET``; one build per choice)."""
    import triton
    import triton.language as tl

    @triton.jit
    def tiles_adc_kernel(
        a_ptr, cond_ptr, step_ptr, factor_ptr, qmin_ptr, qmax_ptr, y_ptr,
        M, C, H, W, H_OUT, W_OUT, N_OUT, R, T, PS,
        CPT, KH, KW, SH, SW, PH, PW, DH, DW,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, FLOAT64: tl.constexpr,
    ):  # fmt: skip
        dtype = tl.float64 if FLOAT64 else tl.float32
        offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # output positions (b, ho, wo)
        offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)  # output channels
        in_m, in_n = offs_m < M, offs_n < N_OUT
        b = offs_m // (H_OUT * W_OUT)
        ho = (offs_m // W_OUT) % H_OUT
        wo = offs_m % W_OUT
        kernel_area = KH * KW
        out = tl.zeros((BLOCK_M, BLOCK_N), dtype=dtype)
        for t in range(T):
            for ps in range(PS):
                g = t * PS + ps
                psum = tl.zeros((BLOCK_M, BLOCK_N), dtype=dtype)
                for k0 in range(0, R, BLOCK_K):
                    r = k0 + tl.arange(0, BLOCK_K)  # rows of the tile
                    c = t * CPT + r // kernel_area
                    ki = (r % kernel_area) // KW
                    kj = r % KW
                    hi = ho[:, None] * SH - PH + ki[None, :] * DH
                    wi = wo[:, None] * SW - PW + kj[None, :] * DW
                    valid = in_m[:, None] & ((r < R) & (c < C))[None, :]
                    valid = valid & (hi >= 0) & (hi < H) & (wi >= 0) & (wi < W)
                    a = tl.load(a_ptr + ((b[:, None] * C + c[None, :]) * H + hi) * W + wi, mask=valid, other=0.0)
                    cells = tl.load(
                        cond_ptr + (g * N_OUT + offs_n[None, :]) * R + r[:, None],
                        mask=(r < R)[:, None] & in_n[None, :],
                        other=0.0,
                    )
                    psum += tl.dot(a, cells, input_precision="ieee")
                step = tl.load(step_ptr + g * N_OUT + offs_n, mask=in_n, other=1.0)
                factor = tl.load(factor_ptr + g * N_OUT + offs_n, mask=in_n, other=0.0)
                if FLOAT64:  # noqa: SIM108 - a constexpr branch, compiled away
                    v = psum / step[None, :]
                else:
                    v = tl.math.div_rn(psum, step[None, :])  # IEEE division, as torch's (not the fast approximation)
                low = tl.floor(v)  # round half to even, as torch.round
                frac = v - low
                odd = (low - 2.0 * tl.floor(low * 0.5)) != 0.0
                code = tl.where((frac > 0.5) | ((frac == 0.5) & odd), low + 1.0, low)
                code = tl.minimum(tl.maximum(code, tl.load(qmin_ptr + g)), tl.load(qmax_ptr + g))
                out += code * (step * factor)[None, :]
        y_offsets = ((b[:, None] * N_OUT + offs_n[None, :]) * H_OUT + ho[:, None]) * W_OUT + wo[:, None]
        tl.store(y_ptr + y_offsets, out, mask=in_m[:, None] & in_n[None, :])

    return tiles_adc_kernel


def _kernel():
    return _kernel_for(os.environ.get("TRITON_INTERPRET") == "1")
