"""CIMLinear: a linear layer on the crossbars, exact against the literal simulator of its exported program (float64),
for every granularity pair and both weight encodings; signed inputs; weights from nn.Linear."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from cimexp.cim import CIMLinear, cim_layers, cim_summary, simulate
from cimexp.cim.vocabulary import GRANULARITIES


def _trained(in_features: int, out_features: int, *, signed: bool = False, seed: int = 0, **options) -> CIMLinear:
    """A layer after a few SGD steps on a random regression target, so that its steps and weights have moved."""
    torch.manual_seed(seed)
    layer = CIMLinear(in_features, out_features, act_signed=signed, **options).double()
    opt = torch.optim.SGD(layer.parameters(), lr=0.05)
    for _ in range(3):
        x = _inputs(6, in_features, signed)
        loss = (layer(x) - 1.0).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return layer.eval()


def _inputs(n: int, features: int, signed: bool) -> torch.Tensor:
    x = torch.rand(n, 3, features, dtype=torch.float64)  # a leading batch and a token axis, as in a transformer
    return 2 * x - 1 if signed else x


def _assert_matches_program(layer: CIMLinear, x: torch.Tensor) -> None:
    with torch.no_grad():
        fast = layer(x)
    literal = simulate(layer.cim_program(), x.reshape(-1, layer.in_features, 1, 1))
    literal = literal.reshape(*x.shape[:-1], layer.out_features)
    torch.testing.assert_close(fast, literal, rtol=0, atol=1e-9 * float(literal.abs().max().clamp_min(1.0)))


@pytest.mark.parametrize(
    ("weight_granularity", "psum_granularity", "weight_encoding"),
    list(itertools.product(GRANULARITIES, GRANULARITIES, ("twos_complement", "differential"))),
)
def test_every_granularity_pair_and_encoding(weight_granularity, psum_granularity, weight_encoding):
    # 150 inputs on 64-row arrays: 3 row tiles, the last one partly empty; 40 outputs at 2 splits = 32 per array,
    # so 2 column tiles.
    layer = _trained(
        150, 40, array_size=64, bias=True, weight_granularity=weight_granularity,
        psum_granularity=psum_granularity, weight_encoding=weight_encoding,
    )  # fmt: skip
    _assert_matches_program(layer, _inputs(4, 150, signed=False))


@pytest.mark.parametrize(("weight_granularity", "psum_granularity"), [("column", "column"), ("layer", "array")])
def test_signed_inputs(weight_granularity, psum_granularity):
    layer = _trained(
        150, 40, signed=True, array_size=64, weight_granularity=weight_granularity, psum_granularity=psum_granularity
    )
    x = _inputs(4, 150, signed=True)
    _assert_matches_program(layer, x)
    codes = torch.round(x / layer.cim_program().act_scale)
    assert bool((codes < 0).any()), "the test must exercise negative input codes"
    assert layer.mapping.column_signed() == [[True, True]]  # every column's partial sum is signed


def test_unsigned_inputs_clip_negatives_at_zero():
    layer = _trained(20, 4, array_size=32)
    x = _inputs(2, 20, signed=True)
    with torch.no_grad():
        assert torch.equal(layer(x), layer(x.clamp_min(0)))


def test_from_linear_and_nn_linear_state_dicts():
    torch.manual_seed(0)
    linear = nn.Linear(30, 7)
    layer = CIMLinear.from_linear(linear, weight_granularity="layer", psum_granularity="column")
    assert (layer.in_features, layer.out_features) == (30, 7)
    assert torch.equal(layer.weight.reshape(7, 30), linear.weight) and torch.equal(layer.bias, linear.bias)
    other = CIMLinear(30, 7)
    missing, unexpected = other.load_state_dict(nn.Linear(30, 7).state_dict(), strict=False)
    assert unexpected == [] and "weight" not in missing and other.weight.shape == (7, 30, 1, 1)
    assert "in_features=30, out_features=7" in repr(layer)


def test_linear_layers_count_in_whole_model_operations():
    model = nn.Sequential(nn.Flatten(), CIMLinear(48, 16), nn.ReLU(), CIMLinear(16, 10))
    assert [name for name, _ in cim_layers(model)] == ["1", "3"]
    summary = cim_summary(model, torch.rand(2, 3, 4, 4))
    assert summary["total"]["cim_layers"] == 2 and summary["total"]["adc_conversions"] > 0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"act_signed": "yes"}, "act_signed='yes'"),
        ({"act_signed": True, "a_bits": None}, "unquantized inputs are signed already"),
        ({"act_signed": True, "dac_bits": 1}, "bit-serial inputs are unsigned"),
    ],
)
def test_bad_signed_input_settings_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        CIMLinear(8, 4, **options)
