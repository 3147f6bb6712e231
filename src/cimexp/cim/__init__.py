"""The CIM layers as a library: ``CIMConv2d`` and ``CIMLinear``, its chip programming (``CIMProgram``), variation, ADC
non-idealities, partial-sum telemetry and cost.

Where things are: ``layer`` (``CIMConv2d``: one layer's forward pass), ``linear`` (``CIMLinear``), ``network``
(whole-model operations: ``calibrate``, ``set_psum_quant``, telemetry, ...), ``options`` (validated settings),
``mapping`` (the layout on arrays, bit slicing), ``quant`` (quantizer primitives, fused ADC kernels), ``step_init``
(a layer's initial step sizes), ``adc`` (ADC non-idealities, telemetry), ``program`` (``CIMProgram``: export, file
format, literal simulator), ``variation``, ``cost``, ``convert`` (any network onto the crossbars) and ``rebuild``
(a layer built from a float conv); ``vocabulary``
(the names of granularities, schedules and the paper's settings, importable without torch).

>>> from cimexp.cim import CIMConv2d
>>> layer = CIMConv2d(64, 64, 3, padding=1, w_bits=4, a_bits=4, cell_bits=2, adc_bits=3, array_size=128,
...                   weight_granularity="column", psum_granularity="column")
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ADCErrors": "cimexp.cim.adc",
    "PsumStats": "cimexp.cim.adc",
    "Conversion": "cimexp.cim.convert",
    "convert": "cimexp.cim.convert",
    "CostModel": "cimexp.cim.cost",
    "cim_summary": "cimexp.cim.cost",
    "layer_cost": "cimexp.cim.cost",
    "CIMConv2d": "cimexp.cim.layer",
    "dequant_ops": "cimexp.cim.cost",
    "CIMLinear": "cimexp.cim.linear",
    "ArrayMapping": "cimexp.cim.mapping",
    "calibrate": "cimexp.cim.network",
    "cim_layers": "cimexp.cim.network",
    "reestimate_batchnorm": "cimexp.cim.network",
    "set_adc_errors": "cimexp.cim.network",
    "set_calibration": "cimexp.cim.network",
    "set_psum_quant": "cimexp.cim.network",
    "start_telemetry": "cimexp.cim.network",
    "stop_telemetry": "cimexp.cim.network",
    "telemetry_active": "cimexp.cim.network",
    "Calibration": "cimexp.cim.options",
    "Granularity": "cimexp.cim.options",
    "StepInit": "cimexp.cim.options",
    "VariationLevel": "cimexp.cim.options",
    "WeightEncoding": "cimexp.cim.options",
    "CIMProgram": "cimexp.cim.program",
    "simulate": "cimexp.cim.program",
    "set_kernels": "cimexp.cim.quant",
    "cell_variation": "cimexp.cim.variation",
}
"""Where each name of the package lives. Imported on first use, so that ``cimexp.cim.vocabulary`` (and the report,
which reads it) loads without torch."""

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'cimexp.cim' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
