"""ADC non-idealities, partial-sum telemetry and bit-serial input settings (cimexp.cim.adc, CIMConv2d(dac_bits=...))."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from cimexp.cim import ADCErrors, CIMConv2d, PsumStats, set_adc_errors, start_telemetry, stop_telemetry
from cimexp.cim.adc import ADCState, adc_errors_tile_major, draw_adc_state, nonideal_adc_shift_add
from cimexp.cim.cost import adc_conversions


def _layer(seed: int = 0, **options) -> CIMConv2d:
    """A 9 -> 6 channel 3x3 layer on 27-row arrays (3 row tiles), steps initialised from one random batch."""
    torch.manual_seed(seed)
    layer = CIMConv2d(9, 6, 3, padding=1, array_size=27, **options).double()
    layer(torch.rand(4, 9, 8, 8, dtype=torch.float64))
    return layer.eval()


def _x(seed: int = 1, batch: int = 8) -> torch.Tensor:
    return torch.rand(batch, 9, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


# --- settings --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"noise_lsb": -0.5}, "noise_lsb=-0.5"),
        ({"gain_sigma": "big"}, "gain_sigma='big'"),
        ({"share": 0}, "share=0"),
    ],
)
def test_adc_errors_reject_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ADCErrors(**kwargs)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"a_bits": 4, "dac_bits": 5}, r"dac_bits=5: must be <= a_bits=4 \(valid: 1..4 or None\)"),
        ({"a_bits": None, "dac_bits": 2}, "dac_bits=2: bit-serial inputs need quantized activations"),
        ({"a_bits": 4, "dac_bits": 0}, "dac_bits"),
    ],
)
def test_dac_bits_validation(options, message):
    with pytest.raises(ValueError, match=message):
        CIMConv2d(9, 6, 3, **options)


def test_dac_bits_default_is_one_multibit_cycle():
    layer = CIMConv2d(9, 6, 3, a_bits=4)
    assert layer.dac_bits == 4 and layer.n_input_cycles == 1 and "dac_bits" not in repr(layer)
    serial = CIMConv2d(9, 6, 3, a_bits=4, dac_bits=1)
    assert serial.n_input_cycles == 4 and serial.input_shift.tolist() == [8, 4, 2, 1] and "dac_bits=1" in repr(serial)


def test_adc_index_by_hand():
    # 9 inputs x 3x3 on 27 rows: 3 channels per tile, T = 3; S = 2 splits, 13 channels per array, one column tile.
    # Column of (o, s) in its array: o*2 + s; share 4 -> ceil(27/4) = 7 ADCs per array, numbered array by array.
    index = CIMConv2d(9, 6, 3, array_size=27).mapping.adc_index(4)
    assert index.shape == (1, 2, 3, 6)
    assert index[0, 1, 1, 5] == 1 * 7 + (5 * 2 + 1) // 4
    assert index[0, 0, 2, 0] == 2 * 7
    # 5 inputs, S = 4 (1-bit cells), 18 rows: 2 channels per tile (T = 3), 4 channels per array (3 column tiles).
    index = CIMConv2d(5, 9, 3, array_size=18, cell_bits=1).mapping.adc_index(3)
    array = 2 * 3 + 1  # row tile 2, column tile 1 (output channel 6)
    assert index[0, 3, 2, 6] == array * 6 + ((6 % 4) * 4 + 3) // 3


def test_columns_sharing_an_adc_share_its_static_errors():
    layer = _layer()
    errors = ADCErrors(offset_lsb=0.5, gain_sigma=0.1, dnl_lsb=0.2, share=4, seed=3)
    state = draw_adc_state(layer, errors, torch.Generator().manual_seed(errors.seed))
    index = layer.mapping.adc_index(4).flatten()
    offset, gain, dnl = state.offset.flatten(), state.gain.flatten(), state.dnl.flatten(0, 3)
    for adc in index.unique():
        same = index == adc
        assert (offset[same] == offset[same][0]).all() and (gain[same] == gain[same][0]).all()
        assert (dnl[same] == dnl[same][0]).all()
    assert offset.unique().numel() == index.unique().numel()  # different ADCs, different draws


# --- the error models, by hand ---------------------------------------------------------------------------------
def _convert(v, *, offset=0.0, gain=1.0, dnl=None, qmin=0, qmax=3) -> list[float]:
    """Codes of ADC inputs ``v`` (LSB units) of one column through ``nonideal_adc_shift_add`` (step 1, factor 1)."""
    psum = torch.tensor(v, dtype=torch.float64).reshape(1, 1, 1, -1)
    one = torch.ones(1, 1, dtype=torch.float64)
    state = ADCState(ADCErrors(), one * offset, one * gain, None)
    dnl_t = None if dnl is None else torch.tensor(dnl, dtype=torch.float64).reshape(1, 1, -1)
    lo, hi = torch.tensor([[float(qmin)]]), torch.tensor([[float(qmax)]])
    return nonideal_adc_shift_add(psum, one, one, lo, hi, state, one * offset, one * gain, dnl_t).flatten().tolist()


def test_offset_gain_and_dnl_by_hand():
    assert _convert([0.0, 1.0, 2.8, -0.2]) == [0, 1, 3, 0]
    assert _convert([0.0, 1.0, 2.8, -0.2], offset=0.6) == [1, 2, 3, 0]  # 0.6, 1.6, 3.4 -> 3, 0.4
    assert _convert([0.0, 1.0, 1.8, 3.0], gain=1.5) == [0, 2, 3, 3]  # 0, 1.5 (half to even), 2.7, 4.5 -> 3
    assert _convert([-1.2, 2.0, -5.0], qmin=-4, qmax=3, offset=-0.5) == [-2, 2, -4]
    # thresholds at 0.5 + d: 0.4 | 1.7 | 2.5 -> 0.45 is code 1, 1.6 stays 1, 2.6 is 3
    assert _convert([0.45, 1.6, 2.6, 0.3, 9.0], dnl=[-0.1, 0.2, 0.0]) == [1, 1, 3, 0, 3]
    # thresholds 1.1 | 1.1 | 2.5: code 1 is missing, as in a flash ADC whose comparators cross
    assert _convert([0.9, 1.2, 1.4], dnl=[0.6, -0.4, 0.0]) == [0, 2, 2]


def test_all_zero_errors_are_bit_identical_to_the_ideal_adc():
    layer = _layer()
    x = _x()
    with torch.no_grad():
        ideal = layer(x)
        assert set_adc_errors(layer, ADCErrors(seed=5)) == 1 and layer.adc_state is None
        assert torch.equal(layer(x), ideal)
        # the non-ideal code path itself, forced on with zero errors, gives the same codes
        layer.adc_state = draw_adc_state(layer, ADCErrors(), torch.Generator())
        torch.testing.assert_close(layer(x), ideal, rtol=0, atol=1e-12)
    set_adc_errors(layer, None)
    assert layer.adc_state is None


def test_static_errors_are_seeded_and_fixed_between_calls():
    layer, x = _layer(), _x()
    errors = ADCErrors(offset_lsb=0.4, gain_sigma=0.05, dnl_lsb=0.1, seed=1)
    with torch.no_grad():
        ideal = layer(x)
        set_adc_errors(layer, errors)
        first = layer(x)
        assert torch.equal(layer.train()(x), first) and torch.equal(layer.eval()(x), first)
        set_adc_errors(layer, errors)  # drawn again from the same seed: the same chip
        assert torch.equal(layer(x), first)
        set_adc_errors(layer, ADCErrors(offset_lsb=0.4, gain_sigma=0.05, dnl_lsb=0.1, seed=2))
        other = layer(x)
    assert not torch.equal(first, ideal) and not torch.equal(first, other)


def test_noise_is_reproducible_under_a_seed_and_fresh_per_conversion():
    layer, x = _layer(), _x()
    set_adc_errors(layer, ADCErrors(noise_lsb=0.5))
    with torch.no_grad():
        torch.manual_seed(0)
        a = layer(x)
        torch.manual_seed(0)
        b = layer(x)
        c = layer(x)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_noise_lowers_accuracy_monotonically_on_average():
    """A random CIM classifier's labels are its own ideal predictions; the share it keeps under ADC noise,
    averaged over 4 seeds, falls as noise_lsb grows."""
    torch.manual_seed(0)
    net = nn.Sequential(
        CIMConv2d(9, 16, 3, padding=1, array_size=27, adc_bits=4),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    ).double()
    x = _x(batch=256)
    net(x)
    net.eval()
    with torch.no_grad():
        labels = net(x).argmax(1)
        accuracy = []
        for noise in (0.0, 0.25, 0.5, 1.0, 2.0):
            set_adc_errors(net, ADCErrors(noise_lsb=noise))
            hits = []
            for seed in range(4):
                torch.manual_seed(seed)
                hits.append((net(x).argmax(1) == labels).double().mean().item())
            accuracy.append(sum(hits) / len(hits))
    assert accuracy[0] == 1.0
    assert all(a > b for a, b in itertools.pairwise(accuracy)), accuracy


def test_training_with_errors_on_has_straight_through_gradients():
    layer = _layer()
    layer.train()
    set_adc_errors(layer, ADCErrors(noise_lsb=0.5, offset_lsb=0.3, gain_sigma=0.05, dnl_lsb=0.1))
    layer(_x()).square().mean().backward()
    for name in ("weight", "weight_step", "psum_step", "act_step"):
        grad = getattr(layer, name).grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name


@pytest.mark.parametrize("granularity", ["layer", "array", "channel", "column"])
def test_adc_step_gradients_are_those_of_the_step_in_output_units(granularity, monkeypatch):
    """The ADC step is kept in integer MAC units; its gradient is divided by the square of the dequantization factor
    c = s_w * s_a * shift (the mean over the columns that share the step), so that SGD moves it as LSQ moves the
    output-unit step c * s_p."""
    layer = _layer(weight_granularity="column", psum_granularity=granularity).train()
    x = _x()
    upstream = torch.randn_like(layer(x))

    def step_grad() -> torch.Tensor:
        layer.zero_grad()
        (layer(x) * upstream).sum().backward()
        return layer.psum_step.grad.clone()

    preconditioned = step_grad()
    monkeypatch.setattr("cimexp.cim.layer.output_unit_gradient", lambda step, unit_sq: step)
    raw = step_grad()
    with torch.no_grad():
        s_a = layer.act_step.abs()
        shift = (layer.polarity.reshape(-1, 1) * layer.split_shift.reshape(1, -1)).unsqueeze(-1).unsqueeze(-1)
        factor = layer._weight_step_full() * shift * s_a  # [P, S, T, O]
        c_sq = layer.mapping.reduce_to_step(factor.square(), layer.psum_granularity)
    assert preconditioned.shape == raw.shape == c_sq.shape
    torch.testing.assert_close(preconditioned * c_sq, raw, rtol=1e-9, atol=1e-15)
    assert raw.abs().max() < 1e-3 * preconditioned.abs().max()  # c ~ 1e-2 here: the raw gradient is negligible


def test_bit_serial_cycles_share_the_column_adc_errors():
    """All input cycles of a column go through the same ADC: its static errors repeat per cycle."""
    layer = _layer(dac_bits=2)
    set_adc_errors(layer, ADCErrors(offset_lsb=0.5, seed=0))
    offset, _, _ = adc_errors_tile_major(layer.adc_state, layer.n_input_cycles)
    groups = offset.shape[0] // 2
    assert torch.equal(offset[:groups], offset[groups:])
    with torch.no_grad():
        layer(_x())  # runs


# --- telemetry -------------------------------------------------------------------------------------------------
def test_psum_stats_by_hand():
    stats = PsumStats(adc_bits=2, per_column=True)
    v = torch.tensor([[0.2, 3.6, -1.0, 2.0], [-2.6, 0.4, 1.2, 5.0]]).reshape(1, 2, 1, 4)  # [B, G, O, L]
    qmin, qmax = torch.tensor([[0.0], [-2.0]]), torch.tensor([[3.0], [1.0]])
    stats.update(v, qmin, qmax)
    summary = stats.summary()
    # group 0 (unsigned 0..3): 4 clips high, -1 clips low; group 1 (signed -2..1): -3 low, 5 high
    assert summary["conversions"] == 8
    assert summary["clip_rate"] == 0.5 and summary["clip_low"] == 0.25 and summary["clip_high"] == 0.25
    # codes above adc_min: group 0 -> 0, 3, 0, 2; group 1 -> 0, 2, 3, 3: three of four codes used
    assert summary["code_utilization"] == 0.75
    assert summary["column_clip_rate"].tolist() == [[0.5], [0.5]]
    assert stats.histogram.sum() == 8 and stats.histogram_edges().numel() == stats.histogram.numel() + 1
    stats.update(v, qmin, qmax)
    assert stats.summary()["conversions"] == 16 and stats.summary()["clip_rate"] == 0.5


def test_psum_stats_count_nan_inputs_apart():
    """A diverged network feeds NaN to its ADCs: they have no code, and validation must still be recorded."""
    stats = PsumStats(adc_bits=2)
    v = torch.tensor([[0.2, float("nan"), -1.0, 2.0], [float("nan"), 0.4, 1.2, 5.0]]).reshape(1, 2, 1, 4)
    stats.update(v, torch.tensor([[0.0], [-2.0]]), torch.tensor([[3.0], [1.0]]))
    summary = stats.summary()
    assert summary["conversions"] == 8 and stats.nan_conversions == 2 and summary["nan_rate"] == 0.25
    assert stats.histogram.sum() == 6 and summary["clip_low"] == 0.125 and summary["clip_high"] == 0.125


@pytest.mark.parametrize("dac_bits", [None, 1])
def test_telemetry_counts_every_conversion(dac_bits):
    layer, x = _layer(dac_bits=dac_bits), _x(batch=3)
    assert start_telemetry(layer) == 1
    with torch.no_grad():
        layer(x)
    stats = stop_telemetry(layer)[""]
    assert stats.conversions == 3 * adc_conversions(layer, (8, 8))
    assert 0 <= stats.summary()["clip_rate"] <= 1 and layer.psum_stats is None
    with torch.no_grad():
        layer(x)  # telemetry off: nothing recorded
    assert stop_telemetry(layer) == {}


def test_small_psum_steps_clip_more():
    layer, x = _layer(), _x()
    rates = []
    for factor in (1.0, 0.1):
        with torch.no_grad():
            layer.psum_step.mul_(factor)
            start_telemetry(layer)
            layer(x)
        rates.append(stop_telemetry(layer)[""].summary()["clip_rate"])
    assert rates[1] > rates[0]
