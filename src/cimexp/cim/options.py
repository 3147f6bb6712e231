"""Validated option types of the CIM layer: quantization granularity, weight encoding, variation level and step
calibration.

Strings from configs (``"column"``, ``"differential"``) are parsed once, here, into enums; a bad value raises a
``ValueError`` that names it and lists the valid choices.
"""

from __future__ import annotations

import contextlib
import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields


class Granularity(enum.IntEnum):
    """How many elements share one quantization step (scale factor), coarsest first.

    For weights the step shapes are (``P`` polarities, ``S`` splits, ``T`` row tiles, ``O`` output channels,
    ``n_ct`` column tiles, i.e. arrays along the output-channel axis):

    - ``LAYER``: one step for the whole layer, shape ``[1, 1, 1, 1]``.
    - ``ARRAY``: one step per physical array (row tile x column tile x polarity), shape ``[P, 1, T, n_ct]``.
    - ``CHANNEL``: one step per output channel per array, i.e. per (polarity, row tile, output channel), shape
      ``[P, 1, T, O]``: the ``S`` adjacent columns that hold one output channel's splits share it. Not one of the
      paper's levels; for weights it is column-wise quantization with the splits' steps tied, so every split
      slices the same integer weight (docs/cim_layer.md, "Choices worth knowing").
    - ``COLUMN``: one step per array column, i.e. per (polarity, split, row tile, output channel),
      shape ``[P, S, T, O]``. For weights this is the paper's Sec. III-C: each split quantizes its own copy of
      the weight with its own step ``s_w1 .. s_wS``.

    Partial sums use the same levels with the same shapes. The order (``LAYER < ARRAY < CHANNEL < COLUMN``) is
    used to find the finer of two granularities (dequantization accounting).
    """

    LAYER = 0
    ARRAY = 1
    CHANNEL = 2
    COLUMN = 3

    @classmethod
    def parse(cls, value: str | Granularity, what: str = "granularity") -> Granularity:
        return _parse_enum(cls, value, what)


class WeightEncoding(enum.Enum):
    """How a signed integer weight is stored in cells of ``cell_bits`` bits.

    - ``TWOS_COMPLEMENT``: one array; the ``w_bits``-bit two's-complement integer (range
      ``[-2^(w_bits-1), 2^(w_bits-1)-1]``) is split over ``S = ceil(w_bits / cell_bits)`` cells, most significant
      first. The most significant cell is signed, the others unsigned; ``sum_s cell_s * 2^(cell_bits*(S-1-s))``
      equals the integer weight. A most significant cell left with one bit (``cell_bits`` 1, or 4-bit weights on
      3-bit cells) stores the sign bit as 0/1 with significance ``-2^(w_bits-1)`` instead
      (:attr:`~cimexp.cim.mapping.ArrayMapping.sign_bit_msb`).
    - ``DIFFERENTIAL``: a positive and a negative array (``w = w+ - w-``, as RRAM macros do). The weight range is
      symmetric, ``[-(2^(w_bits-1)-1), 2^(w_bits-1)-1]`` (``w_bits`` counts the sign), so each polarity stores an
      unsigned magnitude of ``w_bits - 1`` bits over ``S = ceil((w_bits-1) / cell_bits)`` unsigned cells.
    """

    TWOS_COMPLEMENT = "twos_complement"
    DIFFERENTIAL = "differential"

    @classmethod
    def parse(cls, value: str | WeightEncoding, what: str = "weight_encoding") -> WeightEncoding:
        return _parse_enum(cls, value, what)


class VariationLevel(enum.Enum):
    """What one log-normal factor ``exp(theta)`` of memory-cell variation multiplies (:mod:`cimexp.cim.variation`).

    - ``WEIGHT``: the paper's eq. 5, ``w_var = w * exp(theta)``: one factor per weight, shared by all its cells
      (splits) and both polarities, so every varied weight is its ideal (quantized) value times ``exp(theta)``.
    - ``CELL``: one factor per physical cell, multiplying that cell's conductance, i.e. the magnitude ``|code|`` of
      its cell code; the sign of two's complement's signed MSB cell comes from the periphery and does not vary.
    """

    WEIGHT = "weight"
    CELL = "cell"

    @classmethod
    def parse(cls, value: str | VariationLevel, what: str = "variation level") -> VariationLevel:
        return _parse_enum(cls, value, what)


class StepInit(enum.Enum):
    """How a step size is set from observed values ``v`` (weights, activations or partial sums), one step per
    granularity group, with ``qmax`` the top integer code of the group's range:

    - ``MAX``: ``max |v| / qmax``, so nothing clips (for an unsigned range, ``max(v) / qmax``: negative values
      clip to 0 whatever the step).
    - ``PERCENTILE``: the ``p``-th percentile of those magnitudes over ``qmax``; the top ``100 - p`` percent clip.
    - ``LSQ``: LSQ's ``2 E|v| / sqrt(qmax)`` (Esser et al., 2020).
    - ``MSE``: the step of lowest quantization MSE on ``v``, searched from LSQ's over 1/64x..2x in quarter octaves
      (:func:`cimexp.cim.quant.mse_init`).
    - ``MEAN_ABS``: ``E|v|`` over the group, the same for every split (weights only): the authors' public code
      (``LSQ.py``, ``LsqWeight.init_from``, commented "LSQ paper v2").
    """

    MAX = "max"
    PERCENTILE = "percentile"
    LSQ = "lsq"
    MSE = "mse"
    MEAN_ABS = "mean_abs"


WEIGHT_STEP_INITS = (StepInit.MAX, StepInit.LSQ, StepInit.MSE, StepInit.MEAN_ABS)
"""Methods for weight steps. Not ``PERCENTILE``: a column's step sees one weight per row (~100), where any
percentile worth clipping at is the max."""
DATA_STEP_INITS = (StepInit.MAX, StepInit.PERCENTILE, StepInit.LSQ, StepInit.MSE)
"""Methods for activation and partial-sum steps, which are set from a batch."""


@dataclass(frozen=True)
class Calibration:
    """How :func:`cimexp.cim.calibrate` (or a CIM layer's first forward pass) initialises the step sizes: one
    :class:`StepInit` per quantizer. Strings are parsed (``Calibration(weight="max", psum="percentile")``); a bad
    value raises ``ValueError`` naming it and the valid choices.

    Attributes:
        weight: weight steps, from the weights (``max``, ``lsq``, ``mse`` or ``mean_abs``).
        act: activation (DAC) steps, from the batch's layer inputs.
        psum: partial-sum (ADC) steps, from the batch's partial sums, in integer MAC units.
        percentile: ``p`` of the quantizers whose method is ``percentile``, in ``(0, 100]``.

    The defaults (``mse`` everywhere) are the layer's behaviour before methods were selectable.
    """

    weight: StepInit | str = StepInit.MSE
    act: StepInit | str = StepInit.MSE
    psum: StepInit | str = StepInit.MSE
    percentile: float = 99.99

    def __post_init__(self) -> None:
        object.__setattr__(self, "weight", _parse_step_init(self.weight, "calibration.weight", WEIGHT_STEP_INITS))
        object.__setattr__(self, "act", _parse_step_init(self.act, "calibration.act", DATA_STEP_INITS))
        object.__setattr__(self, "psum", _parse_step_init(self.psum, "calibration.psum", DATA_STEP_INITS))
        p = self.percentile
        if isinstance(p, bool) or not isinstance(p, int | float) or not (0 < p <= 100 and math.isfinite(p)):
            raise ValueError(f"invalid calibration.percentile={p!r}; valid values: a number in (0, 100]")
        object.__setattr__(self, "percentile", float(p))

    @classmethod
    def parse(cls, method: Calibration | Mapping[str, object] | str | None) -> Calibration:
        """``method`` as a :class:`Calibration`: one already, ``None`` (the defaults), a mapping of its fields
        (``{"weight": "max", "psum": "percentile"}``), or one method name for every quantizer (``"lsq"``)."""
        if isinstance(method, cls):
            return method
        if method is None:
            return cls()
        if isinstance(method, str):
            return cls(weight=method, act=method, psum=method)
        if isinstance(method, Mapping):
            names = [f.name for f in fields(cls)]
            unknown = sorted(str(key) for key in method if key not in names)
            if unknown:
                raise ValueError(f"invalid calibration keys {unknown}; valid keys: {', '.join(names)}")
            return cls(**{str(key): value for key, value in method.items()})
        raise ValueError(
            f"invalid calibration method {method!r}; valid: a Calibration, a mapping of {{weight, act, psum, "
            "percentile}}, one method name or None"
        )

    def to_dict(self) -> dict[str, str | float]:
        """Plain values (method names and ``percentile``), e.g. for results files."""
        return {f.name: getattr(self, f.name) for f in fields(self)} | {
            key: getattr(self, key).value for key in ("weight", "act", "psum")
        }


class WeightSplits(enum.Enum):
    """Whether the bit-splits of a weight share one weight step where the granularity leaves it open (layer and
    array granularity); a channel step is shared by the splits of its output channel and a column step belongs to
    one split, by definition.

    - ``SHARED``: one step for all splits, so every split slices the same integer weight.
    - ``PER_SPLIT``: every split quantizes its own copy of the weight with its own step (layer: one step per split;
      array: one per split of every array), as the authors' code does at every granularity (``SplitConv4Pim_group.py``:
      one ``LsqWeight`` per split module).
    """

    SHARED = "shared"
    PER_SPLIT = "per_split"


class SliceGradient(enum.Enum):
    """How gradients pass through bit slicing (integer weight -> cell codes) when splits have steps of their own.

    - ``PER_COPY``: every split gets ``1/S`` of the straight-through gradient, and with one step per split each
      split's step gets LSQ's gradient of its own copy, ``(q_s - u_s) / S``
      (:func:`cimexp.cim.quant.per_copy_lsq_correction`). cimexp's reading.
    - ``LOWEST_SPLIT``: the gradients that bit arithmetic by remainder and floor division gives: the least
      significant split passes the whole straight-through gradient (``d code / d q = 1``), the others none; a
      split's step then gets ``shift_s * code_s``, the least significant one ``code - u`` (inside the range). The
      authors' code (``utils.py``, ``split4d``: ``torch.remainder`` and ``(x - remainder) / K``).
    """

    PER_COPY = "per_copy"
    LOWEST_SPLIT = "lowest_split"


def parse_grad_scale(value: object, what: str) -> float | None:
    """A step-gradient scale: ``"lsq"`` (or ``None``) for LSQ's ``1 / sqrt(N * qmax)``, returned as ``None``, or a
    number ``>= 0`` used as it is (0 freezes the step). Raises ``ValueError`` naming ``what`` and the valid values."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "lsq"):
        return None
    number = value
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            number = float(value)
    if isinstance(number, bool) or not isinstance(number, int | float) or not (math.isfinite(number) and number >= 0):
        raise ValueError(f"invalid {what}={value!r}; valid values: lsq (LSQ's 1/sqrt(N*qmax)) or a number >= 0")
    return float(number)


def _parse_step_init(value: object, what: str, allowed: tuple[StepInit, ...]) -> StepInit:
    key = value.value if isinstance(value, StepInit) else str(value).strip().lower()
    for member in allowed:
        if key == member.value:
            return member
    choices = ", ".join(m.value for m in allowed)
    raise ValueError(f"invalid {what} {key if isinstance(value, StepInit) else repr(value)}; valid choices: {choices}")


def parse_choice(cls, value, what: str):
    """``value`` (a member, or its name or value in any case) as a member of the enum ``cls``; a bad one raises
    ``ValueError`` naming ``what``, the value and the valid choices."""
    return _parse_enum(cls, value, what)


def _parse_enum(cls, value, what: str):
    if isinstance(value, cls):
        return value
    key = str(value).strip().lower()
    for member in cls:
        if key in (member.name.lower(), str(member.value).lower()):
            return member
    choices = ", ".join(m.name.lower() for m in cls)
    raise ValueError(f"invalid {what} {value!r}; valid choices: {choices}")


def check_bits(name: str, value: int | None, *, allow_none: bool = False, maximum: int = 16) -> int | None:
    """Validate a bit width: an int in ``[1, maximum]`` (or ``None`` where that means "not quantized")."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        allowed = f"an integer in [1, {maximum}]" + (" or None" if allow_none else "")
        raise ValueError(f"invalid {name}={value!r}; valid values: {allowed}")
    return value


def check_act_signed(act_signed: bool, a_bits: int | None, dac_bits: int | None) -> bool:
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


def check_dac_bits(dac_bits: int | None, a_bits: int | None) -> int | None:
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
