"""The CIM layers as a library: ``CIMConv2d`` and ``CIMLinear``, its chip programming (``CIMProgram``), variation, ADC
non-idealities, partial-sum telemetry and cost.

Where things are: ``layer`` (``CIMConv2d``: one layer's forward pass), ``linear`` (``CIMLinear``), ``network``
(whole-model operations: ``calibrate``, ``set_psum_quant``, telemetry, ...), ``options`` (validated settings),
``mapping`` (the layout on arrays, bit slicing), ``quant`` (quantizer primitives, fused ADC kernels), ``step_init``
(a layer's initial step sizes), ``adc`` (ADC non-idealities, telemetry), ``program`` (``CIMProgram``: export, file
format, literal simulator), ``variation``, ``cost``, ``convert`` (any network onto the crossbars) and ``rebuild``
(a layer built from a float conv).

>>> from cimexp.cim import CIMConv2d
>>> layer = CIMConv2d(64, 64, 3, padding=1, w_bits=4, a_bits=4, cell_bits=2, adc_bits=3, array_size=128,
...                   weight_granularity="column", psum_granularity="column")
"""

from cimexp.cim.adc import ADCErrors, PsumStats
from cimexp.cim.convert import Conversion, convert
from cimexp.cim.cost import CostModel, cim_summary, layer_cost
from cimexp.cim.layer import CIMConv2d, dequant_ops
from cimexp.cim.linear import CIMLinear
from cimexp.cim.mapping import ArrayMapping
from cimexp.cim.network import (
    calibrate,
    cim_layers,
    reestimate_batchnorm,
    set_adc_errors,
    set_calibration,
    set_psum_quant,
    start_telemetry,
    stop_telemetry,
    telemetry_active,
)
from cimexp.cim.options import Calibration, Granularity, StepInit, VariationLevel, WeightEncoding
from cimexp.cim.program import CIMProgram, simulate
from cimexp.cim.quant import set_kernels
from cimexp.cim.variation import cell_variation

__all__ = [
    "ADCErrors",
    "ArrayMapping",
    "Calibration",
    "CIMConv2d",
    "CIMLinear",
    "CIMProgram",
    "CostModel",
    "Granularity",
    "StepInit",
    "VariationLevel",
    "WeightEncoding",
    "calibrate",
    "Conversion",
    "convert",
    "cell_variation",
    "cim_layers",
    "cim_summary",
    "dequant_ops",
    "layer_cost",
    "PsumStats",
    "reestimate_batchnorm",
    "set_adc_errors",
    "set_calibration",
    "set_kernels",
    "set_psum_quant",
    "simulate",
    "start_telemetry",
    "stop_telemetry",
    "telemetry_active",
]
