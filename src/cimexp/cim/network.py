"""Operations on a whole network's CIM layers: find them, switch partial-sum quantization, calibrate their steps,
re-estimate BatchNorm, give them non-ideal ADCs, record telemetry.

Each takes any ``nn.Module`` and acts on every :class:`~cimexp.cim.layer.CIMConv2d` (and
:class:`~cimexp.cim.linear.CIMLinear`) inside it, in module order (:func:`reestimate_batchnorm`: on its BatchNorm
layers), and returns what it did, usually the number of layers. They live apart from the layer, as torchao's
``quantize_`` lives apart from the tensor subclasses it installs; what one layer does is in :mod:`cimexp.cim.layer`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

import torch
from torch import nn

from cimexp.cim.adc import ADCErrors, PsumStats, draw_adc_state
from cimexp.cim.layer import CIMConv2d
from cimexp.cim.options import Calibration


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
