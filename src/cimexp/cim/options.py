"""Validated option types of the CIM layer: quantization granularity and weight encoding.

Strings from configs (``"column"``, ``"differential"``) are parsed once, here, into enums; a bad value raises a
``ValueError`` that names it and lists the valid choices.
"""

from __future__ import annotations

import enum


class Granularity(enum.IntEnum):
    """How many elements share one quantization step (scale factor), coarsest first.

    For weights the step shapes are (``P`` polarities, ``S`` splits, ``T`` row tiles, ``O`` output channels,
    ``n_ct`` column tiles, i.e. arrays along the output-channel axis):

    - ``LAYER``: one step for the whole layer, shape ``[1, 1, 1, 1]``.
    - ``ARRAY``: one step per physical array (row tile x column tile x polarity), shape ``[P, 1, T, n_ct]``.
    - ``COLUMN``: one step per array column, i.e. per (polarity, split, row tile, output channel),
      shape ``[P, S, T, O]``.

    Partial sums use the same three levels with the same shapes. The order (``LAYER < ARRAY < COLUMN``) is used
    to find the finer of two granularities (dequantization accounting).
    """

    LAYER = 0
    ARRAY = 1
    COLUMN = 2

    @classmethod
    def parse(cls, value: str | Granularity, what: str = "granularity") -> Granularity:
        return _parse_enum(cls, value, what)


class WeightEncoding(enum.Enum):
    """How a signed integer weight is stored in cells of ``cell_bits`` bits.

    - ``TWOS_COMPLEMENT``: one array; the ``w_bits``-bit two's-complement integer (range
      ``[-2^(w_bits-1), 2^(w_bits-1)-1]``) is split over ``S = ceil(w_bits / cell_bits)`` cells, most significant
      first. The most significant cell is signed, the others unsigned; ``sum_s cell_s * 2^(cell_bits*(S-1-s))``
      equals the integer weight.
    - ``DIFFERENTIAL``: a positive and a negative array (``w = w+ - w-``, as RRAM macros do). The weight range is
      symmetric, ``[-(2^(w_bits-1)-1), 2^(w_bits-1)-1]`` (``w_bits`` counts the sign), so each polarity stores an
      unsigned magnitude of ``w_bits - 1`` bits over ``S = ceil((w_bits-1) / cell_bits)`` unsigned cells.
    """

    TWOS_COMPLEMENT = "twos_complement"
    DIFFERENTIAL = "differential"

    @classmethod
    def parse(cls, value: str | WeightEncoding, what: str = "weight_encoding") -> WeightEncoding:
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
