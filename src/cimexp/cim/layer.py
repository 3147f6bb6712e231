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
   non-idealities (noise, offset, gain, DNL; :mod:`cimexp.cim.adc`) via :func:`~cimexp.cim.network.set_adc_errors`.
5. Shift-and-add + dequantization: ``y = sum_{k,p,t,s} input_shift_k * polarity * shift_s * code * s_p * s_a * s_w``.

Fast path: every row tile's columns come out of one convolution over that tile's input channels (channels-last on
a CPU; on a GPU all tiles in one grouped convolution, paper Fig. 5), and the ADC, dequantization and shift-and-add
run in one autograd node whose forward and backward are compiled fused kernels (:mod:`cimexp.cim.quant`). With
``psum_quant=False`` the whole layer is linear in the cell codes, so it folds into a single ordinary convolution.
Bit-serial inputs, non-ideal ADCs and telemetry take the general path (all columns at once). The literal reference
is :func:`cimexp.cim.program.simulate`, tested against both paths."""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cimexp.cim.adc import ADCState, PsumStats, adc_errors_tile_major, nonideal_adc_shift_add
from cimexp.cim.fused import fused_path_applies, fused_tiles_adc
from cimexp.cim.mapping import (
    ArrayMapping,
    ConvGeometry,
    dequant_ops,
    input_shift,
    slice_bits,
    slice_inputs,
    tile_psums,
)
from cimexp.cim.options import (
    Calibration,
    Granularity,
    SliceGradient,
    VariationLevel,
    WeightEncoding,
    WeightSplits,
    check_act_signed,
    check_bits,
    check_dac_bits,
    parse_choice,
    parse_grad_scale,
)
from cimexp.cim.program import CIMProgram, export_program
from cimexp.cim.quant import (
    adc_shift_add,
    effective_step,
    output_unit_gradient,
    per_copy_lsq_correction,
    quantize_int,
    round_ste,
    sync_mean,
    tf32_off,
)
from cimexp.cim.rebuild import rebuild_conv
from cimexp.cim.step_init import initial_act_step, initial_psum_step, initial_weight_step
from cimexp.cim.vocabulary import PAPER_SETTINGS, QUANTIZER_READINGS

DEFAULTS = {key: value for key, value in QUANTIZER_READINGS["lsq"].items() if key != "decay_steps"}
"""The quantizer options' defaults (cimexp's reading; ``conf/quantizer/lsq.yaml``)."""

CHANNELS_LAST_DEVICES = ("cpu",)
"""Device types whose fast path computes partial sums channels-last (``[B, H, W, C]`` in memory)."""
ONE_CONV_DEVICES = ("cuda",)
"""Device types whose partial sums come from one grouped convolution per layer instead of one per row tile."""
READY_FLAGS = ("weight_step_ready", "act_step_ready", "psum_step_ready")
"""Whether each step is initialised: the layer's extra state in its ``state_dict``."""


class CIMConv2d(nn.Conv2d):
    """Convolution computed as on compute-in-memory crossbars with bit-sliced weights and low-resolution ADCs.

    Args (beyond ``nn.Conv2d``'s; ``groups > 1`` maps every group to its own columns, :mod:`cimexp.cim.mapping`):
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
            run time with :func:`~cimexp.cim.network.set_psum_quant`, as in two-stage QAT).
        weight_encoding: ``"twos_complement"`` or ``"differential"`` (see
            :class:`~cimexp.cim.options.WeightEncoding`).
        weight_grad_scale, act_grad_scale, psum_grad_scale: the factor each step's gradient is multiplied by:
            ``"lsq"`` (default) for LSQ's ``1 / sqrt(N * qmax)``, or a number (the authors' code: ``1e-4`` for
            weight steps, ``1e-2`` for partial-sum steps; ``0`` freezes a step at its initial value).
        weight_splits: ``"shared"`` (default) or ``"per_split"``: whether the bit-splits of a weight share one step
            at layer and array granularity (:class:`~cimexp.cim.options.WeightSplits`).
        slice_gradient: ``"per_copy"`` (default) or ``"lowest_split"``: how gradients pass through bit slicing
            (:class:`~cimexp.cim.options.SliceGradient`).

    Steps are set on the first forward pass (weight steps from the weights, activation and ADC steps from that
    batch), as ``calibration`` says (:class:`~cimexp.cim.options.Calibration`, :mod:`cimexp.cim.step_init`), or by
    :func:`~cimexp.cim.network.calibrate`; then they are parameters only: in eval mode an output never depends on
    the rest of the batch. The ``state_dict`` keeps whether they are initialised, not how."""

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
        w_bits: int = PAPER_SETTINGS["w_bits"],
        a_bits: int | None = PAPER_SETTINGS["a_bits"],
        cell_bits: int = PAPER_SETTINGS["cell_bits"],
        adc_bits: int = PAPER_SETTINGS["adc_bits"],
        array_size: int = PAPER_SETTINGS["array_size"],
        weight_granularity: str | Granularity = PAPER_SETTINGS["weight_granularity"],
        psum_granularity: str | Granularity = PAPER_SETTINGS["psum_granularity"],
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
        if padding_mode != "zeros":
            raise ValueError(f"invalid padding_mode={padding_mode!r}; valid choices: zeros")
        super().__init__(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, "zeros", device, dtype
        )
        self.w_bits = check_bits("w_bits", w_bits)
        self.a_bits = check_bits("a_bits", a_bits, allow_none=True)
        self.dac_bits = check_dac_bits(dac_bits, self.a_bits)
        self.act_signed = check_act_signed(act_signed, self.a_bits, self.dac_bits)
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
            in_channels // groups,
            out_channels,
            self.kernel_size,
            array_size=array_size,
            w_bits=self.w_bits,
            cell_bits=self.cell_bits,
            adc_bits=self.adc_bits,
            encoding=self.weight_encoding,
            signed_inputs=self.a_bits is None or self.act_signed,
            groups=groups,
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
        """A CIM layer with ``conv``'s geometry, device and dtype and a copy of its float weights (and bias), e.g. to
        fine-tune from a float checkpoint (:func:`~cimexp.cim.rebuild.rebuild_conv`). ``cim_options`` are the CIM
        keyword arguments of the constructor."""
        # Built on the conv's device and in its dtype, so that rebuild_conv's move has nothing left to do.
        factory = functools.partial(cls, device=conv.weight.device, dtype=conv.weight.dtype, **cim_options)
        return rebuild_conv(conv, factory)

    # --- initialisation state (saved in state_dict via extra state) -------------------------------------------
    def get_extra_state(self) -> dict[str, bool]:
        return {flag: getattr(self, flag) for flag in READY_FLAGS}

    def set_extra_state(self, state: dict[str, bool]) -> None:
        for flag in READY_FLAGS:
            setattr(self, flag, bool(state[flag]))

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
        """Dequantization multiplies per output position (paper Fig. 4; :func:`cimexp.cim.mapping.dequant_ops`)."""
        psum = self.psum_granularity if self.psum_quant else None
        return dequant_ops(self.mapping, self.weight_granularity, psum, self.weight_per_split)

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
            codes = codes + per_copy_lsq_correction(codes, w_int.detach(), s_w, self.split_shift)
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
        # In the layer's own dtype whatever autocast says (bf16 would round integer MAC results above 256). On CUDA,
        # TF32 convolutions are exact for integer codes and activations below 2^11 (the paper's setting); where
        # operands are not integers (variation, unquantized activations, folded weights) TF32 is off.
        with torch.autocast(x.device.type, enabled=False):
            x = x.to(self.weight.dtype)
            if torch.compiler.is_compiling() or not (x.is_cuda and self._non_integer_operands):
                return self._forward(x)
            with tf32_off():
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
            w_eff = w_eff[:, : self.mapping.in_channels]
            out = F.conv2d(a_int, w_eff, None, self.stride, self.padding, self.dilation, self.groups)
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
        """Every column's partial sum in blocks of row tiles (:func:`~cimexp.cim.mapping.tile_psums`): one
        convolution for a dense layer on :data:`ONE_CONV_DEVICES` (GPUs, where launches bound these small layers),
        else one per tile (no grouped backward for a dense layer on CPUs: oneDNN's is slow)."""
        one_conv = a_int.device.type in ONE_CONV_DEVICES
        return tile_psums(a_int, cond, self._geometry(), self.groups, one_conv)

    def _geometry(self) -> ConvGeometry:
        return ConvGeometry(self.kernel_size, self.stride, self.padding, self.dilation, self.mapping.channels_per_tile)

    def _steps_and_factors(self, factor: torch.Tensor, n_positions: int) -> tuple[torch.Tensor, torch.Tensor]:
        """ADC steps ``s_p`` and dequantization factors, both ``[G, O]`` with ``G`` tile-major ``(t, p, s)``."""
        s_p = self._psum_step_full(n_positions, factor.permute(1, 2, 0, 3))
        s_p = s_p.permute(2, 0, 1, 3).reshape(-1, self.out_channels)
        return s_p, factor.reshape(-1, self.out_channels)

    def _adc_range(self, n_tiles: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(qmin, qmax)``, each ``[n_tiles*P*S, 1]``: the code range of every column group, tile-major."""
        return self.adc_min.expand(n_tiles, -1, -1).reshape(-1, 1), self.adc_max.expand(n_tiles, -1, -1).reshape(-1, 1)

    def _tiles_adc(self, a_int: torch.Tensor, cond: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
        """The fast path of the ADC + shift-and-add: block by block of :meth:`_tile_psums`, summed;
        ``[B, O, H_out, W_out]``. On :data:`CHANNELS_LAST_DEVICES` the convolutions run channels-last (oneDNN's
        faster layout; timings in ``experiments/results/bench``) and the ADC reads their output in place as
        ``[B*H*W, G, O, 1]``. Where :func:`~cimexp.cim.fused.fused_path_applies`: one fused Triton kernel."""
        m = self.mapping
        if fused_path_applies(self, a_int.device):
            geometry = self._geometry()
            s_p, factor = self._steps_and_factors(factor, math.prod(geometry.out_size(*a_int.shape[2:])))
            return fused_tiles_adc(a_int, cond, s_p, factor, *self._adc_range(m.n_row_tiles), geometry)
        columns_per_tile = m.n_polarities * m.n_splits
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
            y = nonideal_adc_shift_add(
                psum, s_p, factor, qmin, qmax, self.adc_state, *adc_errors_tile_major(self.adc_state, n_cycles)
            )
        return y.reshape(y.shape[0], self.out_channels, *out_hw)

    # --- export -----------------------------------------------------------------------------------------------
    def cim_program(self) -> CIMProgram:
        """The chip's programming of this layer (see :class:`~cimexp.cim.program.CIMProgram` for the contract
        that ties it to this layer's eval-mode output; built by :func:`~cimexp.cim.program.export_program`). Needs
        initialised steps: run a forward pass or :func:`~cimexp.cim.network.calibrate` first."""
        return export_program(self)

    # --- lazy initialisation (cimexp.cim.step_init) -----------------------------------------------------------
    @torch.no_grad()
    def _init_weight_step(self) -> None:
        how = (self.polarity, self.mapping, self.weight_granularity, self.weight_per_split, self.calibration)
        self.weight_step.copy_(initial_weight_step(self.weight.detach(), *how))
        self.weight_step_ready = True

    @torch.no_grad()
    def _init_act_step(self, x: torch.Tensor) -> None:
        step = initial_act_step(x, float(self.act_qmin), float(self.act_qmax), self.calibration)
        self.act_step.copy_(sync_mean(step))
        self.act_step_ready = True

    @torch.no_grad()
    def _init_psum_step(self, psum: torch.Tensor) -> None:
        """From partial sums ``[B, G, O, L]`` (``G`` = tile-major (t, p, s))."""
        how = (self.adc_min, self.adc_max, self.mapping, self.psum_granularity, self.calibration)
        step = initial_psum_step(psum, *how)
        self.psum_step.copy_(sync_mean(step))
        self.psum_step_ready = True

    def reset_psum_steps(self) -> None:
        """Re-initialise the ADC steps from the partial sums of the next forward pass (two-stage QAT's stage 2)."""
        self.psum_step_ready = False
