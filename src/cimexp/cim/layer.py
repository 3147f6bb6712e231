"""``CIMConv2d``: a drop-in ``nn.Conv2d`` that simulates a bit-scalable compute-in-memory macro.

Forward pass, per output position (paper Sec. II-A, III-A..C; shapes in :mod:`cimexp.cim.mapping`):

1. DAC: ``a_int = clamp(round(x / s_a), 0, 2^a_bits - 1)`` (LSQ step ``s_a``; ``a_bits=None``: ``a_int = x``).
   Bit-serial inputs (``dac_bits < a_bits``): ``a_int`` is applied in ``K = ceil(a_bits / dac_bits)`` cycles of
   ``dac_bits`` bits, most significant first; every cycle's partial sums go through the ADC separately and the
   cycles are shifted and added (``input_shift[k] = 2^(dac_bits*(K-1-k))``).
2. Weights: one copy per (polarity, split), each quantized to ``w_bits`` with its column's LSQ step ``s_w``
   (shared across copies for layer/array/channel granularity), then bit-sliced into cell codes (:func:`slice_bits`).
3. Array MAC: every column's partial sum ``P = sum_r code * gain * a_int`` over the rows of its row tile.
4. ADC: ``clamp(round(P / s_p), adc_min, adc_max)``. ``s_p`` is learned (LSQ) in the integer MAC domain of the
   paper's eq. 2, so one psum step is one ADC reference setting; ``psum_quant=False`` skips the ADC. Optional
   non-idealities (noise, offset, gain, DNL; :mod:`cimexp.cim.adc`) via :func:`set_adc_errors`.
5. Shift-and-add + dequantization: ``y = sum_{k,p,t,s} input_shift_k * polarity * shift_s * code * s_p * s_a * s_w``.

Fast path: every row tile's columns come out of one convolution over that tile's input channels (channels-last on
a CPU; on a GPU all tiles in one grouped convolution, paper Fig. 5), and the ADC, dequantization and shift-and-add
run in one autograd node whose forward and backward are compiled fused kernels (:mod:`cimexp.cim.quant`). With
``psum_quant=False`` the whole layer is linear in the cell codes, so it folds into a single ordinary convolution.
Bit-serial inputs, non-ideal ADCs and telemetry take the general path (all columns at once). The literal reference
is :func:`cimexp.cim.program.simulate`, tested against both paths.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cimexp.cim.adc import ADCErrors, ADCState, PsumStats, draw_adc_state, nonideal_adc_shift_add
from cimexp.cim.mapping import ArrayMapping, input_shift, slice_bits, slice_inputs
from cimexp.cim.options import (
    Calibration,
    Granularity,
    SliceGradient,
    StepInit,
    VariationLevel,
    WeightEncoding,
    WeightSplits,
    check_bits,
    parse_choice,
    parse_grad_scale,
)
from cimexp.cim.program import CIMProgram
from cimexp.cim.quant import (
    adc_shift_add,
    effective_step,
    fill_dead,
    lsq_init,
    mse_init,
    output_unit_gradient,
    positive,
    quantize_int,
    range_init,
    round_ste,
    sync_mean,
)

DEFAULTS = {
    "weight_grad_scale": "lsq",
    "act_grad_scale": "lsq",
    "psum_grad_scale": "lsq",
    "weight_splits": "shared",
    "slice_gradient": "per_copy",
}
"""The quantizer options' defaults (cimexp's reading; ``conf/quantizer/lsq.yaml``)."""

CHANNELS_LAST_DEVICES = ("cpu",)
"""Device types whose fast path computes partial sums channels-last (``[B, H, W, C]`` in memory)."""
ONE_CONV_DEVICES = ("cuda",)
"""Device types whose partial sums come from one grouped convolution per layer instead of one per row tile."""


def _per_copy_lsq_correction(
    codes: torch.Tensor, w_int: torch.Tensor, s_w: torch.Tensor, split_shift: torch.Tensor
) -> torch.Tensor:
    """Zero in the forward pass; makes the gradient of split ``s``'s own weight step LSQ's for its copy of the weight.

    With column-wise weight steps every split quantizes its own copy of the weight (paper Sec. III-C),
    ``q_s = round(w / s_s)``, and keeps its bits: ``s_s * shift_s * code_s(q_s)``. Taken literally, the step's
    gradient is ``shift_s * code_s - u_s / S`` (``u_s = w / s_s``, ``S`` splits): the split's bits minus its share
    of ``u``, a term as large as the weight itself, with opposite signs for the high and the low split (their sum
    is LSQ's ``q - u`` only when the steps are shared). Trained with it, the steps of the splits of one weight
    drift apart within tens of SGD steps, after which the splits take their bits from different integers (a
    ResNet-20 fine-tune: 43% of the weights inconsistent and 24% weight error after 30 steps).

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


class CIMConv2d(nn.Conv2d):
    """Convolution computed as on compute-in-memory crossbars with bit-sliced weights and low-resolution ADCs.

    Args (beyond ``nn.Conv2d``'s; ``groups`` must be 1):
        w_bits: signed integer weight bits (two's complement range, or symmetric for differential encoding).
        a_bits: unsigned activation bits; ``None`` disables activation quantization.
        dac_bits: input bits applied per cycle (bit-serial inputs); ``None`` (default): ``a_bits``, one multi-bit
            DAC value per inference as in the paper.
        act_signed: quantize inputs to signed codes ``[-2^(a_bits-1), 2^(a_bits-1)-1]`` (inputs that can be
            negative: after a normalisation without ReLU, as in transformers and MobileNetV2's residual stream);
            default ``False``: unsigned codes ``[0, 2^a_bits-1]`` of inputs that follow a ReLU, as in the paper.
            Signed inputs make every column's partial sum signed (signed ADC ranges); one input cycle only.
        cell_bits: bits stored per memory cell; a weight spans ``S = ceil(w_bits / cell_bits)`` cells.
        adc_bits: ADC resolution for every column's partial sum.
        array_size: N of the N x N arrays.
        weight_granularity, psum_granularity: ``"layer"``, ``"array"``, ``"channel"`` or ``"column"`` (see
            :class:`~cimexp.cim.options.Granularity`).
        psum_quant: quantize partial sums with the ADC; ``False`` keeps them in full precision (also switchable at
            run time with :func:`set_psum_quant`, as in two-stage QAT).
        weight_encoding: ``"twos_complement"`` or ``"differential"`` (see
            :class:`~cimexp.cim.options.WeightEncoding`).
        weight_grad_scale, act_grad_scale, psum_grad_scale: the factor each step's gradient is multiplied by:
            ``"lsq"`` (default) for LSQ's ``1 / sqrt(N * qmax)``, or a number (the authors' code: ``1e-4`` for
            weight steps, ``1e-2`` for partial-sum steps; ``0`` freezes a step at its initial value).
        weight_splits: ``"shared"`` (default) or ``"per_split"``: whether the bit-splits of a weight share one step
            at layer and array granularity (:class:`~cimexp.cim.options.WeightSplits`).
        slice_gradient: ``"per_copy"`` (default) or ``"lowest_split"``: how gradients pass through bit slicing
            (:class:`~cimexp.cim.options.SliceGradient`).

    Step sizes start uninitialised and are set on the first forward pass: weight steps from the weights, activation
    and ADC steps from that batch's inputs and partial sums, each as ``calibration`` says (a
    :class:`~cimexp.cim.options.Calibration`; default: LSQ's ``2 E|v| / sqrt(qmax)`` per step group refined by an
    MSE search); or explicitly with :func:`calibrate`, which also chooses the methods. After that they are
    parameters only: in eval mode an output never depends on the rest of the batch. Initialisation state is saved
    in the ``state_dict``; the methods are not (they matter only when steps are initialised).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        bias: bool = False,
        *,
        w_bits: int = 4,
        a_bits: int | None = 4,
        cell_bits: int = 2,
        adc_bits: int = 4,
        array_size: int = 128,
        weight_granularity: str | Granularity = "column",
        psum_granularity: str | Granularity = "column",
        psum_quant: bool = True,
        weight_encoding: str | WeightEncoding = "twos_complement",
        dac_bits: int | None = None,
        weight_grad_scale: float | str | None = "lsq",
        act_grad_scale: float | str | None = "lsq",
        psum_grad_scale: float | str | None = "lsq",
        weight_splits: str | WeightSplits = "shared",
        slice_gradient: str | SliceGradient = "per_copy",
        act_signed: bool = False,
        groups: int = 1,
        padding_mode: str = "zeros",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if groups != 1:
            raise ValueError(f"invalid groups={groups}: CIMConv2d maps dense convolutions only; valid: 1")
        if padding_mode != "zeros":
            raise ValueError(f"invalid padding_mode={padding_mode!r}; valid choices: zeros")
        super().__init__(
            in_channels, out_channels, kernel_size, stride, padding, dilation, 1, bias, "zeros", device, dtype
        )
        self.w_bits = check_bits("w_bits", w_bits)
        self.a_bits = check_bits("a_bits", a_bits, allow_none=True)
        self.dac_bits = _check_dac_bits(dac_bits, self.a_bits)
        self.act_signed = _check_act_signed(act_signed, self.a_bits, self.dac_bits)
        self.cell_bits = check_bits("cell_bits", cell_bits)
        self.adc_bits = check_bits("adc_bits", adc_bits)
        self.weight_granularity = Granularity.parse(weight_granularity, "weight_granularity")
        self.psum_granularity = Granularity.parse(psum_granularity, "psum_granularity")
        self.weight_encoding = WeightEncoding.parse(weight_encoding)
        self.psum_quant = bool(psum_quant)
        self.weight_grad_scale = parse_grad_scale(weight_grad_scale, "weight_grad_scale")
        self.act_grad_scale = parse_grad_scale(act_grad_scale, "act_grad_scale")
        self.psum_grad_scale = parse_grad_scale(psum_grad_scale, "psum_grad_scale")
        self.weight_splits = parse_choice(WeightSplits, weight_splits, "weight_splits")
        self.slice_gradient = parse_choice(SliceGradient, slice_gradient, "slice_gradient")
        self.mapping = ArrayMapping.create(
            in_channels,
            out_channels,
            self.kernel_size,
            array_size=array_size,
            w_bits=self.w_bits,
            cell_bits=self.cell_bits,
            adc_bits=self.adc_bits,
            encoding=self.weight_encoding,
            signed_inputs=self.a_bits is None or self.act_signed,
        )
        m = self.mapping
        factory = {"device": device, "dtype": dtype}
        self.weight_step = nn.Parameter(
            torch.ones(m.step_shape(self.weight_granularity, self.weight_per_split), **factory)
        )
        self.psum_step = nn.Parameter(torch.ones(m.step_shape(self.psum_granularity), **factory))
        self.act_step = nn.Parameter(torch.ones((), **factory)) if self.a_bits is not None else None
        # Constants as float buffers, so that .double() / .half() / .to(device) carry them along with the weights.
        const = {"device": device, "dtype": torch.get_default_dtype() if dtype is None else dtype}
        adc_min, adc_max = m.adc_range()
        self.register_buffer("adc_min", torch.tensor(adc_min, **const), persistent=False)
        self.register_buffer("adc_max", torch.tensor(adc_max, **const), persistent=False)
        self._adc_qmax = float(max(map(max, adc_max)))  # LSQ's gradient scale, a Python number: no device sync
        self.register_buffer("split_shift", torch.tensor(m.split_shift(), **const), persistent=False)
        self.register_buffer("polarity", torch.tensor(m.polarity(), **const), persistent=False)
        # Variation (cimexp.cim.variation): gains [P, S, T, R, O] per cell, or [1, 1, T, R, O] per weight; None: none.
        self.register_buffer("cell_gain", None, persistent=False)
        self.variation_level: VariationLevel | None = None  # the level cell_gain was drawn at
        shifts = input_shift(self.a_bits, self.dac_bits) if self.a_bits is not None else [1]
        self.register_buffer("input_shift", torch.tensor(shifts, **const), persistent=False)
        self.adc_state: ADCState | None = None  # non-ideal ADCs (set_adc_errors); None: ideal
        self.psum_stats: PsumStats | None = None  # telemetry being recorded (start_telemetry); None: off
        self.weight_step_ready = False
        self.act_step_ready = self.a_bits is None
        self.psum_step_ready = False
        self.calibration = Calibration()  # how steps are initialised (calibrate / set_calibration)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, **cim_options: Any) -> CIMConv2d:
        """A CIM layer with ``conv``'s geometry and a copy of its float weights (and bias), e.g. to fine-tune
        from a float checkpoint. ``cim_options`` are the CIM keyword arguments of the constructor."""
        if conv.groups != 1:
            raise ValueError(f"cannot map a grouped convolution (groups={conv.groups}) onto CIM arrays")
        layer = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            bias=conv.bias is not None,
            padding_mode=conv.padding_mode,
            device=conv.weight.device,
            dtype=conv.weight.dtype,
            **cim_options,
        )
        copy_conv_weights(conv, layer)
        return layer

    # --- initialisation state (saved in state_dict via extra state) -------------------------------------------
    def get_extra_state(self) -> dict[str, bool]:
        return {
            "weight_step_ready": self.weight_step_ready,
            "act_step_ready": self.act_step_ready,
            "psum_step_ready": self.psum_step_ready,
        }

    def set_extra_state(self, state: dict[str, bool]) -> None:
        self.weight_step_ready = bool(state["weight_step_ready"])
        self.act_step_ready = bool(state["act_step_ready"])
        self.psum_step_ready = bool(state["psum_step_ready"])

    def extra_repr(self) -> str:
        a = "None" if self.a_bits is None else self.a_bits
        return (
            f"{super().extra_repr()}, w_bits={self.w_bits}, a_bits={a}, cell_bits={self.cell_bits}, "
            f"adc_bits={self.adc_bits}, array_size={self.mapping.array_size}, "
            f"weight_granularity={self.weight_granularity.name.lower()}, "
            f"psum_granularity={self.psum_granularity.name.lower()}, psum_quant={self.psum_quant}, "
            f"weight_encoding={self.weight_encoding.value}"
            + ("" if self.n_input_cycles == 1 else f", dac_bits={self.dac_bits}")
            + (", act_signed=True" if self.act_signed else "")
            + "".join(f", {key}={value}" for key, value in self._settings().items() if value != DEFAULTS[key])
        )

    def _settings(self) -> dict[str, str | float]:
        """The quantizer options as given, as plain values (``"lsq"`` for LSQ's gradient scale)."""
        return {
            "weight_grad_scale": "lsq" if self.weight_grad_scale is None else self.weight_grad_scale,
            "act_grad_scale": "lsq" if self.act_grad_scale is None else self.act_grad_scale,
            "psum_grad_scale": "lsq" if self.psum_grad_scale is None else self.psum_grad_scale,
            "weight_splits": self.weight_splits.value,
            "slice_gradient": self.slice_gradient.value,
        }

    def dequant_ops(self) -> int:
        """Dequantization multiplies per output position (paper Fig. 4; :func:`dequant_ops`)."""
        return dequant_ops(self)

    @property
    def weight_per_split(self) -> bool:
        """Whether every bit-split has weight steps of its own (column granularity, or ``weight_splits="per_split"``
        at layer or array granularity); the steps' ``S`` axis is then ``n_splits`` long."""
        if self.weight_granularity is Granularity.CHANNEL:
            return False
        return self.weight_granularity is Granularity.COLUMN or self.weight_splits is WeightSplits.PER_SPLIT

    @property
    def n_input_cycles(self) -> int:
        """K: input cycles per inference (``ceil(a_bits / dac_bits)``; 1 without bit-serial inputs)."""
        return self.input_shift.numel()

    # --- quantizers -------------------------------------------------------------------------------------------
    @property
    def act_qmax(self) -> int:
        return 2 ** (self.a_bits - 1) - 1 if self.act_signed else 2**self.a_bits - 1

    @property
    def act_qmin(self) -> int:
        return -(2 ** (self.a_bits - 1)) if self.act_signed else 0

    def _act_int(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(a_int, s_a)``: the DAC input codes ``[B, C, H, W]`` and the (effective) activation step."""
        if self.a_bits is None:
            return x, torch.ones((), dtype=x.dtype, device=x.device)
        if not self.act_step_ready:
            self._init_act_step(x)
        n_per_step = x[0].numel()
        s_a = effective_step(self.act_step, n_per_step, self.act_qmax, self.act_grad_scale)
        return quantize_int(x, s_a, float(self.act_qmin), float(self.act_qmax)), s_a

    def _weight_step_full(self) -> torch.Tensor:
        """Effective weight steps, one per column: ``[P, S, T, O]``."""
        if not self.weight_step_ready:
            self._init_weight_step()
        m = self.mapping
        # Weights quantized with one step (LSQ's N): the per-(polarity, split) copies share the same weights.
        n_per_step = self.weight.numel() * self.weight_step.shape[:2].numel() / self.weight_step.numel()
        step = effective_step(self.weight_step, n_per_step, float(m.weight_range()[1]), self.weight_grad_scale)
        return m.expand_step(step, self.weight_granularity)

    def cell_codes(self, s_w: torch.Tensor) -> torch.Tensor:
        """Cell codes ``[P, S, O, T, R]`` (integer-valued, differentiable through STE) for column steps
        ``s_w`` ``[P, S, T, O]``; ``cell_gain`` (variation) not applied."""
        m = self.mapping
        w = m.tile_rows(self.weight)  # [O, T, R]
        u = w.unsqueeze(0).unsqueeze(0) / s_w.permute(0, 1, 3, 2).unsqueeze(-1)  # [P, S, O, T, R]
        qmin, qmax = m.weight_range()
        if self.weight_encoding is WeightEncoding.DIFFERENTIAL:
            # Each polarity is an unsigned quantizer of +w / -w: a weight goes to one array or the other.
            u = u * self.polarity.reshape(-1, 1, 1, 1, 1)
            qmin = 0
        w_int = round_ste(torch.clamp(u, qmin, qmax))
        codes = slice_bits(w_int, m, self.slice_gradient)
        per_copy = self.slice_gradient is SliceGradient.PER_COPY
        if per_copy and self.weight_per_split and m.n_splits > 1 and s_w.requires_grad:
            codes = codes + _per_copy_lsq_correction(codes, w_int.detach(), s_w, self.split_shift)
        return codes

    def _conductances(self, s_w: torch.Tensor) -> torch.Tensor:
        """Programmed cell values ``[T, P, S, O, R]`` (codes times the variation gain, per cell or broadcast from
        one per weight), tile-major for the conv."""
        codes = self.cell_codes(s_w)
        if self.cell_gain is not None:
            codes = codes * self.cell_gain.permute(0, 1, 4, 2, 3)
        return codes.permute(3, 0, 1, 2, 4)

    def _psum_step_full(self, n_positions: int = 1, factor: torch.Tensor | None = None) -> torch.Tensor:
        """Effective ADC steps (integer MAC units), one per column: ``[P, S, T, O]``. ``n_positions`` (output
        positions per image) and ``factor`` (the columns' dequantization factors, ``[P, S, T, O]``) only shape the
        gradient: LSQ's scale, and :func:`~cimexp.cim.quant.output_unit_gradient` over the columns of each step."""
        m = self.mapping
        n_per_step = m.n_columns * n_positions / self.psum_step.numel()
        step = self.psum_step
        if factor is not None:
            step = output_unit_gradient(step, m.reduce_to_step(factor.detach().square(), self.psum_granularity))
        step = effective_step(step, n_per_step, self._adc_qmax, self.psum_grad_scale)
        return m.expand_step(step, self.psum_granularity)

    # --- forward ----------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The layer computes in its own dtype whatever autocast says: a bf16/fp16 partial sum would round integer
        # MAC results (bf16 holds integers up to 256 exactly). On CUDA, TF32 convolutions are exact as long as
        # codes and activations are integers below 2^11 (the paper's setting); where they are not (cell variation,
        # unquantized activations, folded weights without partial-sum quantization) TF32 is off for the layer.
        with torch.autocast(x.device.type, enabled=False):
            x = x.to(self.weight.dtype)
            if torch.compiler.is_compiling() or not (x.is_cuda and self._non_integer_operands):
                return self._forward(x)
            with _tf32_off():
                return self._forward(x)

    @property
    def _non_integer_operands(self) -> bool:
        """Whether a convolution of this layer multiplies non-integers: varied cells, unquantized activations, or
        the folded weights of ``psum_quant=False``."""
        return self.cell_gain is not None or self.a_bits is None or not self.psum_quant

    @property
    def _int16_psums(self) -> bool:
        """Whether every partial sum is an integer below 2^15 in magnitude (saved as int16 for the backward pass):
        integer operands and ``rows * (2^cell_bits - 1) * (2^dac_bits - 1) < 2^15``."""
        bound = self.mapping.rows_per_tile * (2**self.cell_bits - 1) * (2 ** (self.dac_bits or 0) - 1)
        return not self._non_integer_operands and bound < 2**15

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        a_int, s_a = self._act_int(x)
        s_w = self._weight_step_full()  # [P, S, T, O]
        cond = self._conductances(s_w)  # [T, P, S, O, R]
        # factor[t, p, s, o] = polarity * shift * s_a * s_w: everything the dequantization multiplies by.
        sign_shift = self.polarity.reshape(-1, 1) * self.split_shift.reshape(1, -1)  # [P, S]
        factor = (s_w * (sign_shift.unsqueeze(-1).unsqueeze(-1) * s_a)).permute(2, 0, 1, 3)  # [T, P, S, O]
        kh, kw = self.kernel_size
        if not self.psum_quant:
            # Linear in the codes: fold shift-and-add and dequantization into one ordinary convolution.
            w_eff = torch.einsum("tpsor,tpso->otr", cond, factor).reshape(self.out_channels, -1, kh, kw)
            out = F.conv2d(a_int, w_eff[:, : self.in_channels], None, self.stride, self.padding, self.dilation)
        elif self.n_input_cycles == 1 and self.adc_state is None and self.psum_stats is None and self.psum_step_ready:
            # Fast path: ideal ADCs, one input cycle, nothing recorded: tile by tile (one conv + one fused ADC each).
            out = self._tiles_adc(a_int, cond, factor)
        else:
            if self.n_input_cycles > 1:  # bit-serial: the cycles run as extra batch entries through the same arrays
                a_int = slice_inputs(a_int, self.dac_bits, self.n_input_cycles).flatten(0, 1)
            psum = torch.cat(self._tile_psums(a_int, cond), 1)  # [K*B, G, O, H_out, W_out], G tile-major
            out = self._columns_adc(psum, factor)
        if self.bias is not None:
            out = out + self.bias.reshape(1, -1, 1, 1)
        return out

    def _tile_psums(self, a_int: torch.Tensor, cond: torch.Tensor) -> list[torch.Tensor]:
        """Every column's partial sum, as a list of ``[B, G_i, O, H_out, W_out]`` blocks of consecutive row tiles
        (``G_i`` = their tiles x ``P*S``, tile-major; paper Fig. 5). On the devices of :data:`ONE_CONV_DEVICES`
        (GPUs, where kernel launches bound these small layers): one grouped convolution, one group per tile, over
        zero-padded input channels. Elsewhere (CPU): one convolution per tile over just the channels it holds, so
        the multiply-adds are exactly ``P*S`` times the layer's and no grouped backward is needed (oneDNN's is slow)."""
        m = self.mapping
        kh, kw = self.kernel_size
        n_tiles, cpt = m.n_row_tiles, m.channels_per_tile
        conv = functools.partial(F.conv2d, bias=None, stride=self.stride, padding=self.padding, dilation=self.dilation)
        if n_tiles > 1 and a_int.device.type in ONE_CONV_DEVICES:
            padded = F.pad(a_int, (0, 0, 0, 0, 0, n_tiles * cpt - self.in_channels))
            psum = conv(padded, cond.reshape(-1, cpt, kh, kw), groups=n_tiles)
            return [psum.unflatten(1, (-1, self.out_channels))]
        psums = []
        for t in range(n_tiles):
            channels = min(cpt, self.in_channels - t * cpt)
            weight = cond[t].reshape(-1, cpt, kh, kw)[:, :channels]  # [P*S*O, channels, kh, kw]
            inputs = a_int if n_tiles == 1 else a_int[:, t * cpt : t * cpt + channels]
            psums.append(conv(inputs, weight).unflatten(1, (-1, self.out_channels)))
        return psums

    def _steps_and_factors(self, factor: torch.Tensor, n_positions: int) -> tuple[torch.Tensor, torch.Tensor]:
        """ADC steps ``s_p`` and dequantization factors, both ``[G, O]`` with ``G`` tile-major ``(t, p, s)``."""
        s_p = self._psum_step_full(n_positions, factor.permute(1, 2, 0, 3))
        s_p = s_p.permute(2, 0, 1, 3).reshape(-1, self.out_channels)
        return s_p, factor.reshape(-1, self.out_channels)

    def _adc_range(self, n_tiles: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(qmin, qmax)``, each ``[n_tiles*P*S, 1]``: the code range of every column group, tile-major."""
        qmin = self.adc_min.expand(n_tiles, -1, -1).reshape(-1, 1)
        qmax = self.adc_max.expand(n_tiles, -1, -1).reshape(-1, 1)
        return qmin, qmax

    def _tiles_adc(self, a_int: torch.Tensor, cond: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
        """The fast path of the ADC + shift-and-add: block by block of :meth:`_tile_psums`, summed;
        ``[B, O, H_out, W_out]``. On :data:`CHANNELS_LAST_DEVICES` the convolutions run channels-last (oneDNN's
        fast layout, 1.2-2x here) and the ADC reads their output in place as ``[B*H*W, G, O, 1]``."""
        columns_per_tile = self.mapping.n_polarities * self.mapping.n_splits
        int16_psums = self._int16_psums
        channels_last = a_int.device.type in CHANNELS_LAST_DEVICES
        if channels_last:
            a_int = a_int.contiguous(memory_format=torch.channels_last)
        out, g0 = None, 0
        for psum in self._tile_psums(a_int, cond):
            batch, g, o, h, w = psum.shape
            if out is None:
                s_p, factor = self._steps_and_factors(factor, h * w)
            qmin, qmax = self._adc_range(g // columns_per_tile)
            columns = psum.permute(0, 3, 4, 1, 2).reshape(-1, g, o, 1) if channels_last else psum.flatten(3)
            y = adc_shift_add(columns, s_p[g0 : g0 + g], factor[g0 : g0 + g], qmin, qmax, int16_psums)
            y = y.reshape(batch, h, w, o).permute(0, 3, 1, 2) if channels_last else y.reshape(batch, o, h, w)
            out, g0 = (y if out is None else out + y), g0 + g
        return out

    def _columns_adc(self, psum: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
        """ADC + shift-and-add of all columns at once, ``psum`` ``[K*B, G, O, H_out, W_out]`` -> ``[B, O, H_out,
        W_out]``: the general path (bit-serial cycles, non-ideal ADCs, telemetry, step initialisation)."""
        m = self.mapping
        n_cycles = self.n_input_cycles
        out_hw = psum.shape[-2:]
        psum = psum.flatten(3)
        if not self.psum_step_ready:
            self._init_psum_step(psum)
        s_p, factor = self._steps_and_factors(factor, psum.shape[-1] * n_cycles)
        qmin, qmax = self._adc_range(m.n_row_tiles)
        if n_cycles > 1:  # cycles become extra column groups [B, K*G, O, L], scaled by their significance
            psum = psum.unflatten(0, (n_cycles, -1)).transpose(0, 1).flatten(1, 2)
            factor = (self.input_shift.reshape(-1, 1, 1) * factor).flatten(0, 1)
            s_p, qmin, qmax = (v.repeat(n_cycles, 1) for v in (s_p, qmin, qmax))
        if self.psum_stats is not None:
            self.psum_stats.update(psum.detach() / s_p.detach().unsqueeze(-1), qmin, qmax)
        if self.adc_state is None:
            y = adc_shift_add(psum, s_p, factor, qmin, qmax, self._int16_psums)
        else:
            y = nonideal_adc_shift_add(psum, s_p, factor, qmin, qmax, self.adc_state, *self._adc_errors(n_cycles))
        return y.reshape(y.shape[0], self.out_channels, *out_hw)

    def _adc_errors(self, n_cycles: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The static ADC errors ``(offset, gain, dnl)`` in the ``[K*G, O(, thresholds)]`` order of the forward pass
        (the same ADC converts every input cycle of a column)."""

        def g_order(per_column: torch.Tensor | None) -> torch.Tensor | None:
            if per_column is None:
                return None
            tile_major = per_column.permute(2, 0, 1, 3, *range(4, per_column.dim()))
            return tile_major.flatten(0, 2).repeat(n_cycles, *([1] * (per_column.dim() - 3)))

        state = self.adc_state
        return g_order(state.offset), g_order(state.gain), g_order(state.dnl)

    # --- export -----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def cim_program(self) -> CIMProgram:
        """The chip's programming of this layer (see :class:`~cimexp.cim.program.CIMProgram` for the contract
        that ties it to this layer's eval-mode output). Needs initialised steps: run a forward pass or
        :func:`calibrate` first."""
        if not (self.act_step_ready and (self.psum_step_ready or not self.psum_quant)):
            raise RuntimeError(
                "CIMConv2d.cim_program(): step sizes are not initialised yet; run a forward pass or "
                "cimexp.cim.calibrate(model, batch) first"
            )
        m = self.mapping
        s_w = self._weight_step_full()
        codes = self.cell_codes(s_w).permute(0, 1, 3, 4, 2)  # [P, S, T, R, O]
        gain = torch.ones_like(codes) if self.cell_gain is None else self.cell_gain.expand_as(codes)
        level = None
        if self.cell_gain is not None:  # gains set by hand carry no level: per-cell shape or per-weight shape
            per_cell = self.cell_gain.shape[:2] == codes.shape[:2]
            level = self.variation_level or (VariationLevel.CELL if per_cell else VariationLevel.WEIGHT)
            level = VariationLevel.parse(level).value
        s_a = 1.0 if self.a_bits is None else float(positive(self.act_step))
        cpu = {"device": "cpu"}
        return CIMProgram(
            in_channels=self.in_channels,
            out_channels=self.out_channels,
            kernel_size=tuple(self.kernel_size),
            stride=tuple(self.stride),
            padding=tuple(self.padding),
            dilation=tuple(self.dilation),
            array_size=m.array_size,
            channels_per_tile=m.channels_per_tile,
            act_bits=self.a_bits,
            act_scale=s_a,
            act_signed=self.act_signed,
            dac_bits=self.dac_bits,
            input_shift=self.input_shift.to(**cpu),
            cell_codes=codes.to(**cpu),
            cell_gain=gain.to(**cpu).contiguous(),
            variation_level=level,
            polarity=self.polarity.to(**cpu),
            split_shift=self.split_shift.to(**cpu),
            weight_scale=s_w.to(**cpu).clone(),
            psum_quant=self.psum_quant,
            psum_scale=(self._psum_step_full() * s_a * s_w).to(**cpu),
            adc_min=self.adc_min.to(**cpu),
            adc_max=self.adc_max.to(**cpu),
            bias=None if self.bias is None else self.bias.detach().to(**cpu).clone(),
        )

    # --- lazy initialisation ----------------------------------------------------------------------------------
    # Each step group is set as self.calibration says (StepInit): LSQ's 2 E|v| / sqrt(qmax) refined by a search for
    # the lowest quantization MSE on the observed values (mse, the default), LSQ's rule alone (lsq), or the group's
    # max or p-th percentile magnitude over qmax (max, percentile). Groups follow the granularity, so layer-wise
    # steps see the whole layer.
    def _init_steps(
        self, samples, lsq_mean_abs, qmin, qmax, granularity, method: StepInit, per_split: bool = False
    ) -> torch.Tensor:
        """Initial steps from ``samples`` ``[N, P, S, T, O]`` in the shape of ``granularity``'s step (``per_split``:
        with the splits' axis); with ``granularity=None`` one step (shape ``[]``) for all of ``samples`` ``[N]``
        (activations). ``lsq_mean_abs`` is ``E|v|`` per step."""
        m = self.mapping
        if method is StepInit.MEAN_ABS:
            return fill_dead(lsq_mean_abs)
        if granularity is None:
            shape, reduce, expand = (), _same, _same
        else:
            shape = m.step_shape(granularity, per_split)
            reduce = functools.partial(m.reduce_to_step, granularity=granularity, per_split=per_split)
            expand = functools.partial(m.expand_step, granularity=granularity)
        if method in (StepInit.MAX, StepInit.PERCENTILE):
            percentile = 100.0 if method is StepInit.MAX else self.calibration.percentile
            n_groups = math.prod(shape)
            groups = expand(torch.arange(n_groups, device=samples.device).reshape(shape))
            return range_init(samples, qmin, qmax, percentile, groups, n_groups).reshape(shape)
        step = lsq_init(lsq_mean_abs, qmax if granularity in (None, Granularity.COLUMN) else _amax(qmax))
        if method is StepInit.LSQ:
            return step
        return mse_init(samples, step, qmin, qmax, reduce=reduce, expand=expand)

    @torch.no_grad()
    def _init_weight_step(self) -> None:
        m = self.mapping
        w = m.tile_rows(self.weight.detach()).permute(2, 1, 0)  # [R, T, O]
        samples = w.unsqueeze(1).unsqueeze(1) * self.polarity.reshape(1, -1, 1, 1, 1)  # [R, P, 1, T, O]
        samples = samples.expand(-1, -1, m.n_splits, -1, -1)  # one copy of the weights per column
        qmin, qmax = m.weight_range()
        if self.weight_encoding is WeightEncoding.DIFFERENTIAL:
            qmin = 0
        mean_abs = m.reduce_to_step(
            w.abs().sum(0).div(self._real_rows_per_tile(w).unsqueeze(-1)).expand(m.n_polarities, m.n_splits, -1, -1),
            self.weight_granularity,
            self.weight_per_split,
        )
        method, per_split = self.calibration.weight, self.weight_per_split
        step = self._init_steps(samples, mean_abs, float(qmin), float(qmax), self.weight_granularity, method, per_split)
        self.weight_step.copy_(step)
        self.weight_step_ready = True

    def _real_rows_per_tile(self, tiled: torch.Tensor) -> torch.Tensor:
        """``[T]``: rows that hold weights in each tile (the last tile may be partly empty)."""
        m = self.mapping
        channels = torch.full((m.n_row_tiles,), m.channels_per_tile, dtype=tiled.dtype, device=tiled.device)
        channels[-1] = self.in_channels - (m.n_row_tiles - 1) * m.channels_per_tile
        return channels * m.kernel_area

    @torch.no_grad()
    def _init_act_step(self, x: torch.Tensor) -> None:
        method = self.calibration.act
        samples = _subsample(x.detach().flatten(), INIT_SAMPLES[method])
        qmin, qmax = float(self.act_qmin), float(self.act_qmax)
        step = self._init_steps(samples, samples.abs().mean(), qmin, qmax, None, method)
        self.act_step.copy_(sync_mean(step))
        self.act_step_ready = True

    @torch.no_grad()
    def _init_psum_step(self, psum: torch.Tensor) -> None:
        """From partial sums ``[B, G, O, L]`` (``G`` = tile-major (t, p, s))."""
        m = self.mapping
        method = self.calibration.psum
        cols = (m.n_row_tiles, m.n_polarities, m.n_splits, self.out_channels)
        samples = psum.detach().permute(0, 3, 1, 2).reshape(-1, *cols).permute(0, 2, 3, 1, 4)  # [N, P, S, T, O]
        samples = _subsample(samples, INIT_SAMPLES[method])
        qmin = self.adc_min.reshape(m.n_polarities, m.n_splits, 1, 1)
        qmax = self.adc_max.reshape(m.n_polarities, m.n_splits, 1, 1)
        mean_abs = m.reduce_to_step(samples.abs().mean(0), self.psum_granularity)
        step = self._init_steps(samples, mean_abs, qmin, qmax, self.psum_granularity, method)
        self.psum_step.copy_(sync_mean(step))
        self.psum_step_ready = True

    def reset_psum_steps(self) -> None:
        """Re-initialise the ADC steps from the partial sums of the next forward pass (two-stage QAT's stage 2)."""
        self.psum_step_ready = False


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


@contextlib.contextmanager
def _tf32_off() -> Iterator[None]:
    """cuDNN's TF32 convolutions switched off (eager mode only: a compiled graph reads the flag once)."""
    previous = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = previous


def _check_act_signed(act_signed: bool, a_bits: int | None, dac_bits: int | None) -> bool:
    """``act_signed`` validated: a bool, with quantized inputs applied in one cycle."""
    if not isinstance(act_signed, bool):
        raise ValueError(f"invalid act_signed={act_signed!r}; valid values: true, false")
    if act_signed and a_bits is None:
        raise ValueError("invalid act_signed=True with a_bits=None: unquantized inputs are signed already")
    if act_signed and dac_bits != a_bits:
        raise ValueError(
            f"invalid act_signed=True with dac_bits={dac_bits} < a_bits={a_bits}: bit-serial inputs are unsigned; "
            f"valid: dac_bits=null (one cycle of {a_bits} bits)"
        )
    return act_signed


def _check_dac_bits(dac_bits: int | None, a_bits: int | None) -> int | None:
    """``dac_bits`` validated against ``a_bits`` (``None`` means one cycle of ``a_bits``)."""
    if a_bits is None:
        if dac_bits is not None:
            raise ValueError(f"invalid dac_bits={dac_bits}: bit-serial inputs need quantized activations (a_bits=None)")
        return None
    if dac_bits is None:
        return a_bits
    check_bits("dac_bits", dac_bits)
    if dac_bits > a_bits:
        raise ValueError(f"invalid dac_bits={dac_bits}: must be <= a_bits={a_bits} (valid: 1..{a_bits} or None)")
    return dac_bits


INIT_SAMPLES: dict[StepInit, int | None] = {
    StepInit.MAX: None,
    StepInit.PERCENTILE: 2**16,
    StepInit.LSQ: 4096,
    StepInit.MSE: 4096,
}
"""Observed values per column (activations: in all) that each method initialises a step from, evenly strided
(``None``: all of them). Max must see every value; a 99.99th percentile needs well over 10^4."""


def _subsample(samples: torch.Tensor, max_samples: int | None = 4096) -> torch.Tensor:
    """At most ``max_samples`` evenly strided rows of ``samples`` (all for ``None``)."""
    if max_samples is None:
        return samples
    stride = max(1, samples.shape[0] // max_samples)
    return samples[::stride]


def _amax(qmax: torch.Tensor | float) -> torch.Tensor | float:
    return qmax.max() if isinstance(qmax, torch.Tensor) else qmax


def _same(t: torch.Tensor) -> torch.Tensor:
    return t


@torch.no_grad()
def copy_conv_weights(conv: nn.Conv2d, layer: nn.Module) -> None:
    """Copy ``conv``'s float ``weight`` ``[O, I, kH, kW]`` and ``bias`` ``[O]`` (if it has one) into ``layer``, in
    place and outside autograd, converting to ``layer``'s device and dtype.

    The one weight-copy path of :meth:`CIMConv2d.from_conv` and :func:`cimexp.models.swap.swap_convs` (which builds
    any conv-like layer from a factory), so that both start a layer from a float conv in the same way. It lives
    here because ``cimexp.models`` may import ``cimexp.cim``, not the other way round."""
    layer.weight.copy_(conv.weight)
    if conv.bias is not None:
        layer.bias.copy_(conv.bias)


def dequant_granularity(layer: CIMConv2d) -> Granularity:
    """The level at which scales must be applied: the finer of weight and (if quantized) partial-sum steps."""
    if not layer.psum_quant:
        return layer.weight_granularity
    return max(layer.weight_granularity, layer.psum_granularity)


def dequant_ops(layer: CIMConv2d) -> int:
    """Dequantization multiplies per output position (paper Fig. 4 accounting, see :mod:`cimexp.cim.cost`).

    Defined here rather than in the cost module, which builds on this one, so that :meth:`CIMConv2d.dequant_ops`
    needs no import back from it."""
    m = layer.mapping
    level = dequant_granularity(layer)
    if level is Granularity.COLUMN:
        return m.n_columns
    # Splits with weight steps of their own are scaled apart before they are added: one multiply per split.
    splits = m.n_splits if layer.weight_per_split else 1
    if level is Granularity.LAYER:
        return splits
    return m.n_row_tiles * m.n_polarities * m.out_channels * splits  # ARRAY, CHANNEL: per output channel of an array


def cim_layers(model: nn.Module) -> Iterator[tuple[str, CIMConv2d]]:
    """``(name, layer)`` for every :class:`CIMConv2d` in ``model``, in module order."""
    for name, module in model.named_modules():
        if isinstance(module, CIMConv2d):
            yield name, module


def set_psum_quant(model: nn.Module, enabled: bool, recalibrate: bool = True) -> int:
    """Switch partial-sum (ADC) quantization on or off in every CIM layer of ``model``.

    With ``enabled`` and ``recalibrate``, the ADC steps are re-initialised from the partial sums of the next
    forward pass (stage 2 of two-stage QAT: calibrate from observed partial sums, then keep training).
    Returns the number of CIM layers changed.
    """
    layers = [layer for _, layer in cim_layers(model)]
    for layer in layers:
        layer.psum_quant = bool(enabled)
        if enabled and recalibrate:
            layer.reset_psum_steps()
    return len(layers)


@torch.no_grad()
def calibrate(
    model: nn.Module,
    *inputs: torch.Tensor,
    weights: bool = True,
    method: Calibration | Mapping[str, object] | str | None = None,
) -> int:
    """Initialise the step sizes of every CIM layer from data: forgets the current steps (weight steps too, unless
    ``weights=False``) and runs ``model(*inputs)`` once in eval mode (BatchNorm on its running statistics), which
    sets activation and ADC steps from this batch's statistics. To calibrate on several batches, concatenate them.

    ``method`` says how each step is set (:class:`~cimexp.cim.options.Calibration`, see
    :class:`~cimexp.cim.options.StepInit`): ``None`` for the defaults (``mse`` everywhere), a mapping such as
    ``{"weight": "max", "psum": "percentile", "percentile": 99.99}``, or one method name for all quantizers. The
    layers keep it (:func:`set_calibration`): steps initialised later, such as two-stage QAT's ADC steps, use it
    too. The model's train/eval mode is restored. Returns the number of CIM layers calibrated.

    Raises:
        ValueError: a bad method; the message names it and the valid choices. Nothing has changed then.
    """
    set_calibration(model, method)
    layers = [layer for _, layer in cim_layers(model)]
    for layer in layers:
        layer.weight_step_ready = layer.weight_step_ready and not weights
        layer.act_step_ready = layer.a_bits is None
        layer.psum_step_ready = False
    was_training = model.training
    model.eval()
    try:
        model(*inputs)
    finally:
        model.train(was_training)
    return len(layers)


def set_calibration(model: nn.Module, method: Calibration | Mapping[str, object] | str | None = None) -> int:
    """Choose how the CIM layers of ``model`` initialise their step sizes from now on (``method`` as in
    :func:`calibrate`), without initialising anything: for steps that a later forward pass sets (the first one,
    or stage 2 of two-stage QAT). Returns the number of CIM layers set."""
    calibration = Calibration.parse(method)
    layers = [layer for _, layer in cim_layers(model)]
    for layer in layers:
        layer.calibration = calibration
    return len(layers)


@torch.no_grad()
def reestimate_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Recompute the running statistics of every BatchNorm layer of ``model`` as plain averages over ``batches``
    (inputs of one forward pass each), everything else in eval mode. After :func:`calibrate`, BatchNorm then
    normalises what the quantized layers output instead of what the float network did. The momenta and the
    train/eval mode are restored. Returns the number of BatchNorm layers.

    Raises:
        ValueError: ``batches`` is empty; the statistics are left as they were.
    """
    norms = [module for module in model.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]
    momenta = [norm.momentum for norm in norms]
    was_training = model.training
    model.eval()
    seen = 0
    try:
        for inputs in batches:
            if seen == 0:
                for norm in norms:
                    norm.reset_running_stats()
                    norm.momentum = None  # cumulative average over the batches
                    norm.train()
            model(inputs)
            seen += 1
    finally:
        for norm, momentum in zip(norms, momenta, strict=True):
            norm.momentum = momentum
        model.train(was_training)
    if seen == 0:
        raise ValueError("reestimate_batchnorm: no batches given; pass at least one input batch")
    return len(norms)


def set_adc_errors(model: nn.Module, errors: ADCErrors | None) -> int:
    """Give every CIM layer of ``model`` non-ideal ADCs (:mod:`cimexp.cim.adc`); ``None`` or all-zero errors
    restore ideal ADCs. Static errors are drawn per ADC, layer by layer in module order, from one generator seeded
    with ``errors.seed``, and stay fixed until the next call. Returns the number of CIM layers set."""
    layers = [layer for _, layer in cim_layers(model)]
    ideal = errors is None or errors.ideal
    generator = None if ideal else torch.Generator().manual_seed(int(errors.seed))
    for layer in layers:
        layer.adc_state = None if ideal else draw_adc_state(layer, errors, generator)
    return len(layers)


def start_telemetry(model: nn.Module, per_column: bool = False) -> int:
    """Start recording ADC-input statistics (:class:`~cimexp.cim.adc.PsumStats`) in every CIM layer of ``model``
    with fresh counters; per column too with ``per_column``. Returns the number of layers."""
    layers = [layer for _, layer in cim_layers(model)]
    for layer in layers:
        layer.psum_stats = PsumStats(layer.adc_bits, per_column)
    return len(layers)


def telemetry_active(model: nn.Module) -> bool:
    """Whether any CIM layer of ``model`` is recording telemetry (between start and stop)."""
    return any(layer.psum_stats is not None for _, layer in cim_layers(model))


def stop_telemetry(model: nn.Module) -> dict[str, PsumStats]:
    """Stop recording; returns ``{layer name: PsumStats}`` of the layers that converted anything."""
    stats = {}
    for name, layer in cim_layers(model):
        if layer.psum_stats is not None and layer.psum_stats.conversions:
            stats[name] = layer.psum_stats
        layer.psum_stats = None
    return stats
