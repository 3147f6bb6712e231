"""ADC cost models against their published constants, and cim_summary's ADC counts against hand counts."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from cimexp.cim import CIMConv2d, cim_summary
from cimexp.cim.cost import ADC_MODELS, CostModel, isaac_adc, n_adcs, walden_adc, zigzag_adc

# b: (pJ per conversion, um^2 per ADC). E = (100 b + 0.001 4^b) fF * 0.81 V^2, e.g. b = 4: (400 + 0.256) * 0.81 =
# 324.20736 fJ; A = 10^(1.206 - 0.0369 b) * 2^b, e.g. b = 4: 10^1.0584 * 16 = 183.029 um^2; b = 1: no area.
ZIGZAG_BY_HAND = {
    1: (0.08100324, 0.0),
    2: (0.16201296, 54.2325458),
    3: (0.24305184, 99.6299671),
    4: (0.32420736, 183.0290319),
    5: (0.40582944, 336.2404656),
    6: (0.48931776, 617.7033746),
    7: (0.58027104, 1134.7755494),
    8: (0.70108416, 2084.6827141),
}
ISAAC_BITS = [4, 5, 6, 7, 8, 9, 10]
ISAAC_PJ = [0.79, 0.99, 1.20, 1.42, 1.67, 1.97, 2.38]
ISAAC_UM2 = [361, 477, 627, 845, 1200, 1828, 3002]


# --- the models ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", sorted(ZIGZAG_BY_HAND))
def test_zigzag_matches_hand_values(bits):
    energy, area = ZIGZAG_BY_HAND[bits]
    cost = zigzag_adc(bits)
    assert cost.energy_pj == pytest.approx(energy, rel=1e-12)
    assert cost.area_um2 == pytest.approx(area, rel=1e-8, abs=0)
    assert CostModel().adc(bits) == cost  # zigzag at 0.9 V is the default


def test_zigzag_energy_scales_with_vdd_squared():
    assert zigzag_adc(4, vdd=1.0).energy_pj == pytest.approx(0.400256)
    assert CostModel(vdd=1.2).adc(4).energy_pj == pytest.approx(0.400256 * 1.44)
    assert zigzag_adc(4, vdd=1.0).area_um2 == zigzag_adc(4).area_um2


def test_isaac_is_its_table_exactly():
    assert [isaac_adc(b).energy_pj for b in ISAAC_BITS] == ISAAC_PJ
    assert [isaac_adc(b).area_um2 for b in ISAAC_BITS] == ISAAC_UM2
    assert CostModel("isaac").adc(8) == (1.67, 1200)  # ISAAC's own ADC: 2 mW at 1.2 GS/s, 1200 um^2


@pytest.mark.parametrize("bits", [1, 3, 11])
def test_isaac_outside_its_table_names_the_valid_range(bits):
    with pytest.raises(ValueError, match=rf"no {bits}-bit ADC; valid adc_bits: 4\.\.10"):
        isaac_adc(bits)


def test_walden_is_fom_times_levels_with_zigzag_area():
    assert walden_adc(4).energy_pj == pytest.approx(10 * 16 / 1000)  # default 10 fJ/step
    assert walden_adc(8, fom_fj=1.0).energy_pj == pytest.approx(0.256)
    assert CostModel("walden", fom_fj=50.0).adc(6).energy_pj == pytest.approx(50 * 64 / 1000)
    assert walden_adc(5).area_um2 == zigzag_adc(5).area_um2


def test_cost_model_rejects_bad_settings_naming_the_valid_ones():
    with pytest.raises(ValueError, match=r"invalid cost.adc_model='murmann'; valid choices: zigzag, walden, isaac"):
        CostModel("murmann")
    for field, value in (("vdd", 0.0), ("fom_fj", -1.0), ("vdd", "0.9")):
        with pytest.raises(ValueError, match=rf"invalid cost.{field}="):
            CostModel(**{field: value})
    for share in (0, 1.5, True):
        with pytest.raises(ValueError, match=r"invalid cost.adc_share=.*integers >= 1"):
            CostModel(adc_share=share)
    with pytest.raises(ValueError, match=r"unknown cost settings \['volts'\]; valid keys"):
        CostModel.from_config({"adc_model": "zigzag", "volts": 1.0})
    with pytest.raises(ValueError, match="no 3-bit ADC"):
        CostModel.from_config({"adc_model": "isaac"}, adc_bits=3)


@pytest.mark.parametrize("name", list(ADC_MODELS))
def test_describe_logs_name_settings_and_constants_as_json(name):
    described = CostModel(name, adc_share=4).describe()
    assert described == json.loads(json.dumps(described))
    assert described["name"] == name and described["adc_share"] == 4
    assert {"energy_formula", "area_formula", "source"} <= described.keys()
    assert ("vdd" in described) == (name == "zigzag") and ("fom_fj" in described) == (name == "walden")


# --- conversions and ADCs --------------------------------------------------------------------------------------
def _row(layer: CIMConv2d, size: int = 32, cost: CostModel | None = None) -> dict:
    return cim_summary(layer, torch.zeros(1, layer.in_channels, size, size), cost)["layers"][0]


def test_resnet20_layer1_conversions_adcs_energy_and_area_by_hand():
    # layer1: 16 -> 16 3x3 at 32x32 on 128x128 arrays, W4 on 2-bit cells: 14 channels per tile -> T = 2, S = 2, P = 1
    row = _row(CIMConv2d(16, 16, 3, padding=1))
    assert (row["row_tiles"], row["n_splits"], row["n_polarities"], row["input_cycles"]) == (2, 2, 1, 1)
    assert row["adc_conversions"] == 32 * 32 * 2 * 16 * 2 == 65_536
    assert row["n_adcs"] == 2 * 16 * 2  # 2 arrays, 32 mapped columns each
    assert row["adc_energy_pj"] == pytest.approx(65_536 * 0.32420736)
    assert row["adc_area_um2"] == pytest.approx(64 * 183.0290319)
    assert row["dequant_ops_per_image"] == 32 * 32 * 64  # column granularity: one per column and position


def test_differential_one_bit_cells_by_hand():
    # differential W4: 3 magnitude bits on 1-bit cells -> S = 3, P = 2; T = 2
    row = _row(CIMConv2d(16, 16, 3, padding=1, cell_bits=1, weight_encoding="differential"))
    assert (row["row_tiles"], row["n_splits"], row["n_polarities"]) == (2, 3, 2)
    assert row["adc_conversions"] == 32 * 32 * 2 * 16 * 3 * 2 == 196_608
    assert row["n_adcs"] == 2 * 2 * 16 * 3


# 64 -> 64 3x3, differential 1-bit cells: S = 3, 128 // 3 = 42 channels per array -> column tiles of 42 and 22
# channels = 126 and 66 mapped columns; T = 5, P = 2 -> 10 (polarity, row tile) pairs.
SHARED = {1: 10 * (126 + 66), 2: 10 * (63 + 33), 3: 10 * (42 + 22), 4: 10 * (32 + 17), 128: 10 * (1 + 1)}


@pytest.mark.parametrize("share", sorted(SHARED))
def test_adc_share_changes_adcs_and_area_not_conversions(share):
    layer = CIMConv2d(64, 64, 3, padding=1, cell_bits=1, weight_encoding="differential")
    alone, shared = _row(layer, 8), _row(layer, 8, CostModel(adc_share=share))
    assert shared["n_adcs"] == n_adcs(layer, share) == SHARED[share]
    # the same count as the ADCs that the non-ideality model assigns to columns
    assert n_adcs(layer, share) == layer.mapping.adc_index(share).unique().numel()
    assert shared["adc_conversions"] == alone["adc_conversions"] == 8 * 8 * 5 * 64 * 3 * 2
    assert shared["adc_energy_pj"] == alone["adc_energy_pj"]
    assert shared["adc_area_um2"] == pytest.approx(alone["adc_area_um2"] * SHARED[share] / SHARED[1])


@pytest.mark.parametrize(("dac_bits", "cycles"), [(4, 1), (3, 2), (2, 2), (1, 4)])
def test_bit_serial_inputs_multiply_conversions_not_adcs(dac_bits, cycles):
    row = _row(CIMConv2d(16, 16, 3, padding=1, a_bits=4, dac_bits=dac_bits))
    assert row["input_cycles"] == cycles
    assert row["adc_conversions"] == 65_536 * cycles and row["n_adcs"] == 64


def test_summary_totals_sum_the_layers_each_at_its_own_adc_bits():
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),  # float: not counted
        CIMConv2d(16, 32, 3, stride=2, padding=1, adc_bits=4),
        CIMConv2d(32, 64, 3, stride=2, padding=1, adc_bits=6),
    )
    summary = cim_summary(model, torch.zeros(1, 3, 32, 32), CostModel("isaac", adc_share=2))
    first, second = summary["layers"]
    assert first["out_hw"] == [16, 16] and second["out_hw"] == [8, 8]
    assert first["adc_energy_per_conversion_pj"] == 0.79 and second["adc_energy_per_conversion_pj"] == 1.20
    assert first["adc_energy_pj"] == pytest.approx(first["adc_conversions"] * 0.79)
    assert second["adc_area_um2"] == pytest.approx(second["n_adcs"] * 627)
    total = summary["total"]
    for key in ("adc_conversions", "adc_energy_pj", "adc_area_um2", "n_adcs", "dequant_ops_per_image"):
        assert total[key] == pytest.approx(first[key] + second[key]), key
    assert total["adc_model"] == total["cost_model"]["name"] == "isaac" and total["cost_model"]["adc_share"] == 2
    assert summary == json.loads(json.dumps(summary))
    assert math.isclose(cim_summary(model, torch.zeros(1, 3, 32, 32))["total"]["cost_model"]["vdd"], 0.9)
