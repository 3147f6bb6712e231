"""Grouped and depthwise ``CIMConv2d``: each group on its own columns (``cimexp.cim.mapping``), against the literal
simulator of its exported program, against separate dense layers, and in the mapping's counts."""

from __future__ import annotations

import itertools

import pytest
import torch
from test_equivalence import _assert_matches_program  # tests/cim is on sys.path (pytest's prepend mode)
from torch import nn

from cimexp.cim import CIMConv2d, cell_variation, cim_summary, convert
from cimexp.cim.cost import n_adcs

GRANULARITIES = ("layer", "array", "channel", "column")

GROUPED = {
    # name: (in, out, groups, array_size, options); 3x3 kernels
    "grouped_two_row_tiles": (12, 8, 4, 18, {}),  # 3 channels a group on 2-channel tiles: T = 2; 4 column tiles
    "depthwise_packed": (6, 6, 6, 54, {}),  # 9 rows a group: 6 groups share one 54x54 array block-diagonally
    "depthwise_multiplier_2": (4, 8, 4, 36, {}),  # 2 outputs a group; 4 groups on 36 rows
    "wide_groups": (4, 40, 2, 18, {}),  # 20 outputs a group on 9-output arrays: 3 column tiles per group
    "depthwise_differential": (6, 6, 6, 27, {"weight_encoding": "differential"}),
    "depthwise_bit_serial": (6, 6, 6, 54, {"dac_bits": 2}),
    "grouped_no_psum_quant": (12, 8, 4, 18, {"psum_quant": False}),
}


def _trained_grouped(in_ch, out_ch, groups, array_size, seed=0, steps=3, **options) -> CIMConv2d:
    torch.manual_seed(seed)
    layer = CIMConv2d(in_ch, out_ch, 3, padding=1, groups=groups, bias=True, array_size=array_size, **options)
    layer = layer.double()
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.05)
    for _ in range(steps):
        loss = (layer(torch.rand(4, in_ch, 7, 7, dtype=torch.float64)) - 1.0).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return layer.eval()


EVERY_PAIR = ("depthwise_packed",)
CASES = [
    (name, *pair)
    for name in GROUPED
    for pair in (
        itertools.product(GRANULARITIES, repeat=2) if name in EVERY_PAIR else [("column", "column"), ("layer", "array")]
    )
]


@pytest.mark.parametrize(("name", "weight_granularity", "psum_granularity"), CASES)
def test_grouped_layers_equal_the_literal_simulator(name, weight_granularity, psum_granularity) -> None:
    """Every granularity pair on a packed depthwise layer (array steps shared by the groups of an array); layer
    weights with array partial sums on grouped layers with two row tiles, depthwise multipliers, groups wider than an
    array, differential cells, bit-serial inputs and the folded path (column steps: the dense-layers test below)."""
    in_ch, out_ch, groups, array_size, options = GROUPED[name]
    layer = _trained_grouped(
        in_ch, out_ch, groups, array_size, weight_granularity=weight_granularity, psum_granularity=psum_granularity,
        **options,
    )  # fmt: skip
    x = torch.rand(3, in_ch, 8, 8, dtype=torch.float64)
    _assert_matches_program(layer, x)
    with cell_variation(layer, sigma=0.2, seed=1, level="cell"):
        _assert_matches_program(layer, x)


def test_a_grouped_layer_with_column_steps_is_its_groups_as_dense_layers() -> None:
    """Column steps belong to one column each, so a grouped layer is exactly its groups run as separate dense layers
    with the same weights and steps: nothing of one group reaches another's columns."""
    layer = _trained_grouped(12, 8, 4, 18)
    x = torch.rand(2, 12, 8, 8, dtype=torch.float64)
    outputs = []
    for g in range(4):
        dense = CIMConv2d(3, 2, 3, padding=1, bias=True, array_size=18).double().eval()
        with torch.no_grad():
            dense.weight.copy_(layer.weight[2 * g : 2 * g + 2])
            dense.bias.copy_(layer.bias[2 * g : 2 * g + 2])
            dense.weight_step.copy_(layer.weight_step[..., 2 * g : 2 * g + 2])
            dense.psum_step.copy_(layer.psum_step[..., 2 * g : 2 * g + 2])
            dense.act_step.copy_(layer.act_step)
        dense.weight_step_ready = dense.act_step_ready = dense.psum_step_ready = True
        with torch.no_grad():
            outputs.append(dense(x[:, 3 * g : 3 * g + 3]))
    with torch.no_grad():
        torch.testing.assert_close(layer(x), torch.cat(outputs, 1), rtol=0, atol=1e-12)


def test_the_mapping_of_a_depthwise_layer_packs_groups_block_diagonally() -> None:
    """MobileNetV2's 3x3 depthwise layer of 96 channels on 128x128 arrays, 2-bit cells (S = 2): 9 rows a group,
    so 14 groups share an array (126 of its rows, 14 x 2 of its columns): 7 arrays, not 96."""
    layer = CIMConv2d(96, 96, 3, padding=1, groups=96)
    m = layer.mapping
    assert (m.in_channels, m.rows_per_tile, m.n_row_tiles) == (1, 9, 1)
    assert (m.groups_per_array, m.channels_per_array, m.n_col_tiles, m.n_arrays) == (14, 14, 7, 7)
    assert m.n_columns == 96 * 2
    assert n_adcs(layer) == 96 * 2  # every mapped column has its ADC
    assert layer.weight_step.shape == m.step_shape(layer.weight_granularity, layer.weight_per_split)
    array_steps = CIMConv2d(96, 96, 3, groups=96, weight_granularity="array").weight_step
    assert array_steps.shape == (1, 1, 1, 7)


def test_convert_maps_depthwise_and_grouped_convolutions() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU(),
        nn.Conv2d(8, 16, 1, groups=2), nn.ReLU(),
        nn.Flatten(), nn.Linear(16 * 36, 10),
    )  # fmt: skip
    x = torch.rand(2, 3, 6, 6)
    report = convert(net, adc_bits=8, array_size=64)
    assert report.converted == ["2", "4"] and set(report.kept) == {"0", "7"}
    assert net[2].groups == 8 and net[4].groups == 2
    net(x)  # calibrates
    summary = cim_summary(net, x)
    assert [(layer["name"], layer["groups"]) for layer in summary["layers"]] == [("2", 8), ("4", 2)]
    assert summary["layers"][0]["cells"] == 9 * 8 * 2  # 9 rows a group, 8 outputs, 2 splits
