"""Chip export files, cell variation, and the hardware accounting (dequantization ops, ADC conversions)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from cimexp.cim import CIMConv2d, CIMProgram, calibrate, cell_variation, cim_summary, dequant_ops, simulate


def _calibrated(*args, **kwargs) -> CIMConv2d:
    torch.manual_seed(0)
    layer = CIMConv2d(*args, **kwargs)
    calibrate(layer, torch.rand(2, layer.in_channels, 8, 8))
    return layer.eval()


# --- program files ---------------------------------------------------------------------------------------------
def test_program_fields_and_shapes_follow_the_contract():
    layer = _calibrated(20, 12, 3, padding=1, array_size=54, weight_encoding="differential", bias=True)
    p = layer.cim_program()
    # 6 channels per tile -> T = 4, R = 54; differential W4 on 2-bit cells -> P = 2, S = ceil(3/2) = 2
    assert p.cell_codes.shape == (2, 2, 4, 54, 12)
    assert p.weight_scale.shape == p.psum_scale.shape == (2, 2, 4, 12)
    assert p.polarity.tolist() == [1, -1] and p.split_shift.tolist() == [4, 1]
    assert p.adc_min.tolist() == [[0, 0], [0, 0]] and p.adc_max.tolist() == [[15, 15], [15, 15]]
    assert torch.equal(p.cell_codes, p.cell_codes.round()) and p.cell_codes.min() >= 0
    assert torch.equal(p.cell_gain, torch.ones_like(p.cell_gain))
    assert p.cell_codes[:, :, 3, 18:].abs().sum() == 0  # last tile holds 2 channels = 18 rows; the rest are empty
    # Row r of tile t = input channel t*6 + r//9, kernel position r%9: the cells rebuild the weights' signs.
    w_int = (p.cell_codes * p.split_shift.reshape(1, -1, 1, 1, 1)).sum(1)  # [P, T, R, O]
    w_int = w_int[0] - w_int[1]
    rebuilt = w_int.permute(2, 0, 1).reshape(12, 4 * 6, 3, 3)[:, :20]
    assert (torch.sign(rebuilt) == torch.sign(layer.weight))[rebuilt != 0].all()


def test_two_complement_program_has_signed_msb_adc():
    p = _calibrated(9, 4, 3, array_size=27, adc_bits=3).cim_program()
    assert p.adc_min.tolist() == [[-4, 0]] and p.adc_max.tolist() == [[3, 7]]
    assert p.cell_codes[0, 0].min() < 0 <= p.cell_codes[0, 1].min()


def test_program_save_load_round_trip_readable_without_cimexp(tmp_path):
    layer = _calibrated(9, 4, 3, stride=2, padding=1, array_size=27, bias=True)
    with cell_variation(layer, sigma=0.1, seed=3):
        program = layer.cim_program()
    npz, meta_path = program.save(tmp_path / "layer1")
    meta = json.loads(meta_path.read_text())
    assert meta["format"] == "cimexp.CIMProgram" and meta["act_bits"] == 4 and meta["stride"] == [2, 2]
    assert "psum_scale" in meta["contract"] and meta["shapes"]["cell_codes"] == [1, 2, 3, 27, 4]
    assert meta["variation_level"] == "weight" and meta["format_version"] == 4 and meta["groups"] == 1
    with np.load(npz) as arrays:
        assert arrays["cell_gain"].shape == (1, 2, 3, 27, 4) and not np.all(arrays["cell_gain"] == 1)
    loaded = CIMProgram.load(tmp_path / "layer1.json")
    assert loaded.variation_level == "weight"
    x = torch.rand(2, 9, 7, 7)
    torch.testing.assert_close(simulate(loaded, x), simulate(program, x))
    assert not list(tmp_path.glob("*.tmp"))  # atomic writes leave no temporaries


@pytest.mark.parametrize("sigma", [0.0, 0.1])
def test_program_files_before_variation_levels_load_as_per_cell(tmp_path, sigma):
    """Format 2 drew gains per cell and had no variation_level: such files read as level cell (None unvaried)."""
    layer = _calibrated(9, 4, 3, array_size=27)
    with cell_variation(layer, sigma=sigma, seed=3, level="cell"):
        _, meta_path = layer.cim_program().save(tmp_path / "old")
    meta = json.loads(meta_path.read_text())
    del meta["variation_level"]
    meta_path.write_text(json.dumps({**meta, "format_version": 2}))
    assert CIMProgram.load(meta_path).variation_level == ("cell" if sigma else None)


def test_program_variation_level_of_gains_set_by_hand_follows_their_shape():
    layer = _calibrated(9, 4, 3, array_size=27)
    m = layer.mapping
    layer.cell_gain = torch.full((1, 1, m.n_row_tiles, m.rows_per_tile, 4), 1.1)
    assert layer.cim_program().variation_level == "weight"
    layer.cell_gain = torch.full((1, m.n_splits, m.n_row_tiles, m.rows_per_tile, 4), 1.1)
    assert layer.cim_program().variation_level == "cell"


# --- variation -------------------------------------------------------------------------------------------------
def _model() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(CIMConv2d(4, 8, 3, padding=1, array_size=36), nn.ReLU(), CIMConv2d(8, 4, 3, padding=1))
    calibrate(model, torch.rand(4, 4, 6, 6))
    return model.eval()


def test_zero_sigma_changes_nothing_bit_for_bit():
    model, x = _model(), torch.rand(2, 4, 6, 6)
    clean = model(x)
    with cell_variation(model, sigma=0.0, seed=5):
        assert torch.equal(model(x), clean)


def test_variation_is_one_reproducible_chip_per_seed_and_restored_on_exit():
    model, x = _model(), torch.rand(2, 4, 6, 6)
    clean = model(x)
    with cell_variation(model, sigma=0.2, seed=1):
        chip1 = model(x)
        assert torch.equal(model(x), chip1)  # fixed within the context
        assert model[0].cell_gain is not None and model[2].cell_gain is not None
    with cell_variation(model, sigma=0.2, seed=1):
        assert torch.equal(model(x), chip1)
    with cell_variation(model, sigma=0.2, seed=2):
        assert not torch.equal(model(x), chip1)
    assert not torch.equal(chip1, clean)
    assert model[0].cell_gain is None and torch.equal(model(x), clean)


@pytest.mark.parametrize("level", ["weight", "cell"])
def test_variation_gains_are_lognormal_with_the_requested_sigma(level):
    layer = CIMConv2d(64, 64, 3, array_size=128)
    with cell_variation(layer, sigma=0.3, seed=0, level=level):
        theta = layer.cell_gain.log()
    assert abs(theta.mean().item()) < 0.01 and abs(theta.std().item() - 0.3) < 0.01


def test_negative_sigma_is_rejected():
    with pytest.raises(ValueError, match="invalid sigma=-0.1"), cell_variation(nn.Sequential(), -0.1):
        pass


def test_invalid_level_names_the_value_and_the_choices():
    message = "invalid level 'chip'; valid choices: weight, cell"
    with pytest.raises(ValueError, match=message), cell_variation(nn.Sequential(), 0.1, level="chip"):
        pass


def _lognormal_std(sigma: float) -> float:
    """Standard deviation of ``exp(theta)``, ``theta ~ N(0, sigma^2)`` (~sigma for small sigma)."""
    return float(np.sqrt(np.expm1(sigma**2) * np.exp(sigma**2)))


def _weight_layer(**options) -> CIMConv2d:
    """W4 on 2-bit cells (two's complement: w = 4 * c_msb + c_lsb), one step for the layer, so that thousands of
    weights share each integer value (36,864 weights, ~2,500 of them -1)."""
    torch.manual_seed(0)
    layer = CIMConv2d(64, 64, 3, array_size=128, weight_granularity="layer", psum_granularity="layer", **options)
    layer = layer.double()
    calibrate(layer, torch.rand(2, 64, 8, 8, dtype=torch.float64))
    return layer.eval()


def _int_weights(p: CIMProgram, gain: torch.Tensor) -> torch.Tensor:
    """Integer weights ``[T, R, O]`` the cells of ``p`` store with conductance factors ``gain`` ``[P, S, T, R, O]``:
    ``sum_p polarity * sum_s split_shift * code * gain``."""
    return (p.cell_codes * gain * _sign_shift(p).reshape(*p.cell_codes.shape[:2], 1, 1, 1)).sum((0, 1))


def _sign_shift(p: CIMProgram) -> torch.Tensor:
    """``[P, S]``: what a cell code of each polarity and split counts in its weight."""
    return p.polarity.reshape(-1, 1) * p.split_shift.reshape(1, -1)


@pytest.mark.parametrize("encoding", ["twos_complement", "differential"])
@pytest.mark.parametrize("granularity", ["column", "layer"])
def test_weight_level_is_eq5_one_factor_per_weight(encoding, granularity):
    """Level weight: every varied (dequantized) weight is exactly its ideal value times one exp(theta), shared by
    all its splits and polarities, also with a different step per split (column granularity)."""
    torch.manual_seed(0)
    layer = CIMConv2d(
        20, 12, 3, array_size=54, weight_encoding=encoding, weight_granularity=granularity, psum_granularity="column"
    ).double()
    calibrate(layer, torch.rand(2, 20, 8, 8, dtype=torch.float64))
    ideal = layer.eval().cim_program()
    assert ideal.variation_level is None
    with cell_variation(layer, sigma=0.2, seed=4, level="weight"):
        p = layer.cim_program()
    assert p.variation_level == "weight" and p.cell_gain.shape == p.cell_codes.shape
    gain = p.cell_gain[0, 0]  # [T, R, O]: one factor per weight
    assert torch.equal(p.cell_gain, gain.expand_as(p.cell_gain)) and not torch.all(gain == 1)

    def dequantized(program: CIMProgram, cell_gain: torch.Tensor) -> torch.Tensor:
        scale = program.weight_scale.unsqueeze(3)  # [P, S, T, 1, O]
        return _int_weights(program, cell_gain * scale)

    expected = dequantized(ideal, ideal.cell_gain) * gain
    torch.testing.assert_close(dequantized(p, p.cell_gain), expected, rtol=1e-12, atol=0)


def test_weight_level_relative_std_is_sigma_for_every_weight_value():
    """Eq. 5 makes the relative error of a weight independent of its bit pattern: weight -1 (codes -1 and 3) varies
    like weight 1 (codes 0 and 1), with the std of exp(theta)."""
    layer, sigma = _weight_layer(), 0.1
    with cell_variation(layer, sigma=sigma, seed=0, level="weight"):
        p = layer.cim_program()
    ideal, varied = _int_weights(p, torch.ones_like(p.cell_gain)), _int_weights(p, p.cell_gain)
    for value in (-7, -4, -3, -2, -1, 1, 2, 3, 7):
        relative = varied[ideal == value] / value
        assert len(relative) > 500
        assert abs(relative.std().item() - _lognormal_std(sigma)) < 0.1 * sigma, value
        assert abs(relative.mean().item() - np.exp(sigma**2 / 2)) < 0.01, value


def test_weight_minus_one_is_not_inflated_at_weight_level_but_is_per_cell():
    """The bug this level fixes: per cell, weight -1 = -4 * g_msb + 3 * g_lsb has std sqrt(16 + 9) * std(g) ~ 5 sigma;
    per weight (eq. 5) it has sigma."""
    layer, sigma = _weight_layer(), 0.1
    stds = {}
    for level in ("weight", "cell"):
        with cell_variation(layer, sigma=sigma, seed=0, level=level):
            p = layer.cim_program()
        ideal, varied = _int_weights(p, torch.ones_like(p.cell_gain)), _int_weights(p, p.cell_gain)
        assert (p.cell_codes[0, :, ideal == -1] == torch.tensor([[-1.0], [3.0]])).all()  # the codes of -1
        stds[level] = varied[ideal == -1].std().item()
    assert abs(stds["weight"] - _lognormal_std(sigma)) < 0.1 * sigma
    assert abs(stds["cell"] - 5 * _lognormal_std(sigma)) < 0.5 * sigma


@pytest.mark.parametrize("encoding", ["twos_complement", "differential"])
def test_cell_level_scales_every_cell_magnitude_by_its_own_factor(encoding):
    """Level cell: one exp(theta) per cell, multiplying the conductance |code|; the sign of the signed MSB cell
    (two's complement, code < 0) is the periphery's and does not vary, so a cell contributes code * exp(theta)
    and the varied weight is the sum of its cells. The variance of a weight is the sum of its cells' variances."""
    layer, sigma = _weight_layer(weight_encoding=encoding), 0.1
    with cell_variation(layer, sigma=sigma, seed=0, level="cell"):
        p = layer.cim_program()
    assert p.variation_level == "cell" and p.cell_gain.shape == p.cell_codes.shape
    assert (p.cell_gain > 0).all()  # a conductance stays positive whatever the code's sign
    assert len(torch.unique(p.cell_gain[:, :, 0, 0, 0])) == p.cell_gain.shape[0] * p.cell_gain.shape[1]
    ideal, varied = _int_weights(p, torch.ones_like(p.cell_gain)), _int_weights(p, p.cell_gain)
    msb = p.cell_codes[0, 0]
    if encoding == "twos_complement":  # negative MSB codes: contribution -|code| * 4 * g, i.e. code * 4 * g
        negative = (msb < 0) & (p.cell_codes[0, 1] == 0)
        assert negative.any()
        torch.testing.assert_close(varied[negative], 4 * msb[negative] * p.cell_gain[0, 0][negative])
    for value in (-3, -1, 1, 3):
        selected = ideal == value
        codes = p.cell_codes[:, :, selected] * _sign_shift(p).unsqueeze(-1)  # [P, S, N] signed contributions
        expected = _lognormal_std(sigma) * codes.square().sum((0, 1)).sqrt()  # sqrt(sum of cell variances)
        assert torch.all(expected == expected[0])  # one integer weight, one cell pattern
        assert abs(varied[selected].std().item() - expected[0].item()) < 0.1 * expected[0].item(), value


# --- accounting ------------------------------------------------------------------------------------------------
# ResNet-20's last stage: 64 -> 64 3x3 on 128x128 arrays with 4-bit weights on 2-bit cells:
# 14 channels per tile -> T = 5 row tiles, S = 2 splits, 64 channels per array -> 1 column tile.
FIG4 = {
    ("layer", "layer"): 1,
    ("layer", "array"): 5 * 64,
    ("array", "layer"): 5 * 64,
    ("array", "array"): 5 * 64,
    ("layer", "column"): 2 * 5 * 64,
    ("array", "column"): 2 * 5 * 64,
    ("column", "layer"): 2 * 5 * 64,
    ("column", "array"): 2 * 5 * 64,
    ("column", "column"): 2 * 5 * 64,
    # channel (one step per output channel of every array) scales like array: after the splits' shift-and-add
    ("channel", "layer"): 5 * 64,
    ("channel", "array"): 5 * 64,
    ("layer", "channel"): 5 * 64,
    ("channel", "channel"): 5 * 64,
    ("channel", "column"): 2 * 5 * 64,
    ("column", "channel"): 2 * 5 * 64,
}


@pytest.mark.parametrize(("weight", "psum"), list(FIG4))
def test_dequant_ops_follow_fig4(weight, psum):
    layer = CIMConv2d(64, 64, 3, padding=1, weight_granularity=weight, psum_granularity=psum)
    assert dequant_ops(layer) == layer.dequant_ops() == FIG4[weight, psum]
    differential = CIMConv2d(
        64, 64, 3, padding=1, weight_granularity=weight, psum_granularity=psum, weight_encoding="differential"
    )
    # differential W4: P = 2 arrays of 3-bit magnitudes -> still S = 2 splits; array/column counts double
    assert dequant_ops(differential) == (1 if FIG4[weight, psum] == 1 else 2 * FIG4[weight, psum])


def test_dequant_ops_without_psum_quant_follow_the_weight_granularity():
    assert dequant_ops(CIMConv2d(64, 64, 3, weight_granularity="layer", psum_quant=False)) == 1
    assert dequant_ops(CIMConv2d(64, 64, 3, weight_granularity="column", psum_quant=False)) == 640


def test_summary_counts_adc_conversions_by_hand():
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),  # float first layer: not counted
        CIMConv2d(16, 32, 3, stride=2, padding=1),  # 32x32 -> 16x16
        CIMConv2d(32, 64, 3, stride=2, padding=1, weight_granularity="layer", psum_granularity="layer"),  # -> 8x8
    )
    summary = cim_summary(model, torch.rand(1, 3, 32, 32))
    first, second = summary["layers"]
    assert (first["name"], second["name"]) == ("1", "2")
    # 16 input channels: 14 per tile -> T = 2; conversions = 16*16 positions * T * S * O = 256 * 2 * 2 * 32
    assert first["row_tiles"] == 2 and first["adc_conversions"] == 256 * 2 * 2 * 32
    # 32 input channels -> T = 3; 8*8 * 3 * 2 * 64
    assert second["adc_conversions"] == 64 * 3 * 2 * 64
    assert second["dequant_ops"] == 1 and second["weight_scales"] == 1 and second["psum_scales"] == 1
    assert first["weight_scales"] == first["psum_scales"] == 2 * 2 * 32
    assert summary["total"]["adc_conversions"] == first["adc_conversions"] + second["adc_conversions"]
    assert summary["total"]["cim_layers"] == 2
    assert not model[1].act_step_ready  # the summary ran on a copy: nothing was initialised
