"""The CIM layers as a library: ``CIMConv2d`` and ``CIMLinear``, its chip programming (``CIMProgram``), variation, ADC
non-idealities, partial-sum telemetry and cost.

>>> from cimexp.cim import CIMConv2d
>>> layer = CIMConv2d(64, 64, 3, padding=1, w_bits=4, a_bits=4, cell_bits=2, adc_bits=3, array_size=128,
...                   weight_granularity="column", psum_granularity="column")
"""

from cimexp.cim.adc import ADCErrors, PsumStats
from cimexp.cim.convert import Conversion, convert
from cimexp.cim.cost import CostModel, cim_summary, layer_cost
from cimexp.cim.layer import (
    CIMConv2d,
    CIMLinear,
    calibrate,
    cim_layers,
    dequant_ops,
    reestimate_batchnorm,
    set_adc_errors,
    set_calibration,
    set_psum_quant,
    start_telemetry,
    stop_telemetry,
    telemetry_active,
)
from cimexp.cim.mapping import ArrayMapping
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
