"""The words cimexp's settings are spoken in, in one place without dependencies: the layer, the configs' checks,
the post-training table and the report (which runs without torch) all read them here.

- :data:`GRANULARITIES`: weight / partial-sum quantization granularities, coarse to fine (``cimexp.cim.Granularity``
  holds the same names); :data:`FLOAT` and :data:`NO_PSQ` name the float baseline and a run without partial-sum
  quantization where a granularity would stand.
- :data:`SCHEDULES`: the QAT schedules of the partial sums (``conf/schedule/``).
- :data:`PAPER_SETTINGS`: the paper's hardware and scheme (Kim et al., DATE 2025, Sec. IV): the defaults of the
  layer, of the configs and of the benchmarks.
- :data:`QUANTIZER_READINGS`: the named readings of the quantizers (``conf/quantizer/``).
"""

from __future__ import annotations

from typing import Any

GRANULARITIES = ("layer", "array", "channel", "column")
"""Quantization granularities, coarse to fine: one step per layer, per array, per output channel of an array, per
column (bit-split) of an array."""

FLOAT = "float"
"""The scheme of the full-precision baseline (``granularity=float``)."""

NO_PSQ = "none"
"""The partial-sum granularity recorded for a run without partial-sum quantization (``granularity.psum_quant``
false)."""

SCHEDULES = ("one_stage", "two_stage")
"""QAT schedules: partial sums quantized from the first step (the paper's), or from stage 2 (related work [8], [9])."""

PAPER_SETTINGS: dict[str, Any] = {
    "w_bits": 4,
    "a_bits": 4,
    "cell_bits": 2,
    "adc_bits": 4,
    "array_size": 128,
    "weight_granularity": "column",
    "psum_granularity": "column",
}
"""The paper's setting: W4A4, 2-bit cells, 4-bit ADCs, 128x128 arrays, column-wise weights and partial sums."""

QUANTIZER_READINGS: dict[str, dict[str, Any]] = {
    "lsq": {
        "weight_grad_scale": "lsq",
        "act_grad_scale": "lsq",
        "psum_grad_scale": "lsq",
        "weight_splits": "shared",
        "slice_gradient": "per_copy",
        "decay_steps": False,
    },
    "authors": {
        "weight_grad_scale": 1e-4,
        "act_grad_scale": 0.0,
        "psum_grad_scale": 1e-2,
        "weight_splits": "per_split",
        "slice_gradient": "lowest_split",
        "decay_steps": True,
        "decay_norms_biases": True,
    },
}
"""The named readings of the quantizers (``conf/quantizer/<name>.yaml``, with ``decay_steps``: whether step sizes
are decayed, ``decay_norms_biases``: whether normalisation weights and biases are; both from ``no_weight_decay``).
The first is cimexp's (the layer's defaults) and what a record without these keys ran; a test holds them equal to
the config files."""
