"""Step calibration methods (``calibrate(..., method=)``): each sets the step it claims, per granularity group;
method parsing and its errors; BatchNorm re-estimation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cimexp.cim import (
    Calibration,
    CIMConv2d,
    StepInit,
    calibrate,
    reestimate_batchnorm,
    set_calibration,
    set_psum_quant,
)
from cimexp.cim.options import Granularity
from cimexp.cim.quant import (
    MSE_SEARCH_FACTORS,
    lsq_init,
    mse_errors_reference,
    mse_init,
    percentile_of,
    range_init,
    set_kernels,
)

W_QMAX = 7  # 4-bit two's complement weights: codes -8..7


def _layer(**kwargs) -> CIMConv2d:
    """8 input channels of 3x3 on 36-row arrays: 2 row tiles of 4 channels; 4-bit weights over two 2-bit cells;
    24 output channels over 2 column tiles of 18."""
    torch.manual_seed(0)
    return CIMConv2d(8, 24, 3, padding=1, array_size=36, **kwargs)


def _tiled_weights(layer: CIMConv2d) -> torch.Tensor:
    """``[O, T, R]``: every column's weights (both tiles are full here)."""
    return layer.weight.detach().reshape(24, 2, 36)


def _capture_psums(layer: CIMConv2d) -> list[torch.Tensor]:
    """The partial sums ``[B, G, O, L]`` each ADC step initialisation of ``layer`` sees, recorded as it runs."""
    seen: list[torch.Tensor] = []
    original = layer._init_psum_step

    def spy(psum: torch.Tensor) -> None:
        seen.append(psum.detach().clone())
        original(psum)

    layer._init_psum_step = spy
    return seen


def _psum_magnitudes(psum: torch.Tensor) -> torch.Tensor:
    """``[N, S, T, O]``: every column's partial sums over its top code, ``|P| / 7`` in the signed MSB column (ADC
    codes -8..7) and ``max(P, 0) / 15`` in the unsigned LSB column (0..15); ``G`` of ``psum`` is ``(t, s)``."""
    batch, _, out, positions = psum.shape
    cols = psum.reshape(batch, 2, 2, out, positions).permute(0, 4, 2, 1, 3).reshape(-1, 2, 2, out)  # [N, S, T, O]
    return torch.stack([cols[:, 0].abs() / 7, cols[:, 1].clamp_min(0) / 15], 1)


def test_max_gives_max_abs_weight_over_qmax_per_column_array_and_layer() -> None:
    for granularity in ("column", "array", "layer"):
        layer = _layer(weight_granularity=granularity)
        w = _tiled_weights(layer).abs()
        calibrate(layer, torch.rand(2, 8, 6, 6), method={"weight": "max"})
        step = layer.weight_step.detach()
        if granularity == "column":
            expected = (w.amax(2).T / W_QMAX).expand(1, 2, 2, 24)  # [P, S, T, O]: every split of a column alike
        elif granularity == "array":
            tiles = [w[:18].amax((0, 2)), w[18:].amax((0, 2))]  # per column tile (output channels), per row tile
            expected = (torch.stack(tiles, 1) / W_QMAX).reshape(1, 1, 2, 2)
        else:
            expected = (w.max() / W_QMAX).reshape(1, 1, 1, 1)
        torch.testing.assert_close(step, expected, rtol=0, atol=0)


def test_max_with_differential_encoding_takes_each_polaritys_own_weights() -> None:
    layer = _layer(weight_granularity="column", weight_encoding="differential")
    calibrate(layer, torch.rand(2, 8, 6, 6), method={"weight": "max"})
    w = _tiled_weights(layer)
    top = 7  # 4-bit differential weights: -7..7, each polarity an unsigned magnitude 0..7
    positive, negative = w.clamp_min(0).amax(2).T / top, (-w).clamp_min(0).amax(2).T / top
    step = layer.weight_step.detach()  # [P, S, T, O]
    torch.testing.assert_close(step[0], positive.expand_as(step[0]), rtol=0, atol=0)
    torch.testing.assert_close(step[1], negative.expand_as(step[1]), rtol=0, atol=0)


def test_lsq_gives_lsqs_initial_step() -> None:
    layer = _layer(weight_granularity="column")
    calibrate(layer, torch.rand(2, 8, 6, 6), method="lsq")
    expected = 2 * _tiled_weights(layer).abs().mean(2).T / W_QMAX**0.5
    torch.testing.assert_close(layer.weight_step.detach(), expected.expand(1, 2, 2, 24))


@pytest.mark.parametrize("percentile", [90.0, 99.99, 100.0])
@pytest.mark.parametrize("granularity", ["column", "layer"])
def test_percentile_gives_the_pth_percentile_of_the_psums(percentile: float, granularity: str) -> None:
    layer = _layer(psum_granularity=granularity)
    seen = _capture_psums(layer)
    method = {"psum": "max" if percentile == 100 else "percentile", "percentile": percentile}
    calibrate(layer, torch.rand(2, 8, 6, 6), method=method)
    (psum,) = seen
    magnitudes = _psum_magnitudes(psum).double()  # [N, S, T, O]; float64: torch.quantile's float32 rank is off
    if granularity == "column":
        expected = torch.quantile(magnitudes, percentile / 100, dim=0).unsqueeze(0)  # [1, S, T, O]
    else:
        expected = torch.quantile(magnitudes.flatten(), percentile / 100).reshape(1, 1, 1, 1)
    torch.testing.assert_close(layer.psum_step.detach(), expected.float())


@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "integer values with ties (partial sums)"])
def test_percentile_of_matches_torch_quantile(ties: bool) -> None:
    """Every branch (near the top and the bottom: ``topk``; in between: ``kthvalue``) and both ends."""
    torch.manual_seed(0)
    values = torch.randn(1001, 7, dtype=torch.float64)
    values = (values * 3).round() if ties else values
    for p in (0.0, 0.1, 12.5, 50.0, 99.0, 99.9, 99.99, 100.0):
        torch.testing.assert_close(percentile_of(values, p), torch.quantile(values, p / 100, dim=0), rtol=0, atol=1e-12)
        torch.testing.assert_close(percentile_of(values[:, 0], p), torch.quantile(values[:, 0], p / 100))
    grid = values.reshape(1001, 7, 1).expand(1001, 7, 3)  # several column dimensions
    torch.testing.assert_close(percentile_of(grid, 99.99), torch.quantile(values, 0.9999, dim=0)[:, None].expand(7, 3))
    assert percentile_of(values[:1], 99.99).shape == (7,) and percentile_of(values[:2], 50.0).shape == (7,)


def test_range_init_groups_pool_their_columns_and_dead_groups_get_the_mean() -> None:
    samples = torch.tensor([[1.0, -4.0, 0.0, 2.0], [3.0, 1.0, 0.0, 6.0]])  # [N=2, 4 columns]
    groups = torch.tensor([0, 0, 1, 2])
    step = range_init(samples, -1.0, 2.0, 100.0, groups, 3)
    torch.testing.assert_close(step, torch.tensor([2.0, 2.5, 3.0]))  # group 1 saw only zeros: mean of the others
    unsigned = range_init(samples, 0.0, 2.0, 100.0, groups, 3)  # negative values cannot be represented: ignored
    torch.testing.assert_close(unsigned, torch.tensor([1.5, 2.25, 3.0]))


@pytest.mark.parametrize("seed", range(4))
def test_mse_is_no_worse_than_lsq_in_quantization_mse(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    samples = torch.randn(512, 3, 5, generator=generator) * 3 * torch.rand(3, 5, generator=generator)
    lsq = lsq_init(samples.abs().mean(0), W_QMAX)
    mse = mse_init(samples, lsq, -8.0, float(W_QMAX), reduce=lambda t: t, expand=lambda t: t)

    def error(step: torch.Tensor) -> torch.Tensor:
        return (torch.clamp(torch.round(samples / step), -8, W_QMAX) * step - samples).square().mean(0)

    assert bool((error(mse) <= error(lsq)).all()) and bool((error(mse) < error(lsq)).any())


@pytest.mark.parametrize("kernels", ["eager", "compiled"])
@pytest.mark.parametrize("granularity", ["layer", "array", "channel", "column"])
def test_mse_init_picks_the_steps_of_the_literal_search(granularity: str, kernels: str) -> None:
    """The blocked, fused search chooses what the literal one chooses: every candidate's per-column error as the
    definition reads, averaged over each step group, the first smallest kept. Partial sums of a layer's shape
    ``[N, P, S, T, O]``, integers as the ADC sees them, with the MSB column's signed code range."""
    mapping = _layer().mapping
    g = Granularity.parse(granularity)
    generator = torch.Generator().manual_seed(1)
    cols = (mapping.n_polarities, mapping.n_splits, mapping.n_row_tiles, mapping.out_channels)
    spread = torch.randint(2, 60, cols, generator=generator).float()
    samples = (torch.randn(700, *cols, generator=generator) * spread + spread).round()
    qmin = torch.tensor([-8.0, 0.0]).reshape(1, 2, 1, 1)
    qmax = torch.tensor([7.0, 15.0]).reshape(1, 2, 1, 1)
    reduce = lambda t: mapping.reduce_to_step(t, g)  # noqa: E731
    expand = lambda t: mapping.expand_step(t, g)  # noqa: E731
    lsq = lsq_init(reduce(samples.abs().mean(0)), 7.0)
    errors = torch.stack(
        [reduce(mse_errors_reference(samples, expand(lsq * f), qmin, qmax)) for f in MSE_SEARCH_FACTORS]
    )
    literal = lsq * torch.tensor(MSE_SEARCH_FACTORS)[errors.argmin(0)]  # argmin: the first of equal minima
    previous = set_kernels(kernels)
    try:
        chosen = mse_init(samples, lsq, qmin, qmax, reduce=reduce, expand=expand)
    finally:
        set_kernels(previous)
    assert chosen.shape == lsq.shape == mapping.step_shape(g)
    torch.testing.assert_close(chosen, literal, rtol=1e-6, atol=0)
    chosen_factors = set(chosen.flatten().div(lsq.flatten()).round(decimals=4).tolist())
    assert len(chosen_factors) > 1 or g is Granularity.LAYER  # not a trivial search: groups choose differently


def test_mse_is_no_worse_than_lsq_on_a_layers_weights() -> None:
    def weight_mse(method: str) -> torch.Tensor:
        layer = _layer(weight_granularity="column")
        calibrate(layer, torch.rand(2, 8, 6, 6), method={"weight": method})
        w, step = _tiled_weights(layer), layer.weight_step.detach()[0, 0].T.unsqueeze(-1)  # [O, T, 1]
        return (torch.clamp(torch.round(w / step), -8, W_QMAX) * step - w).square().mean(2)

    assert bool((weight_mse("mse") <= weight_mse("lsq")).all())


def test_default_method_is_mse_everywhere_and_is_what_the_first_forward_pass_does() -> None:
    assert Calibration() == Calibration("mse", "mse", "mse", 99.99) == Calibration.parse(None)
    x = torch.rand(2, 8, 6, 6)
    lazy, explicit = _layer(), _layer()
    lazy.eval()(x)
    calibrate(explicit, x, method="mse")
    for name in ("weight_step", "act_step", "psum_step"):
        assert torch.equal(getattr(lazy, name), getattr(explicit, name))


def test_methods_stay_with_the_layers_for_steps_set_later() -> None:
    """Two-stage QAT's stage 2 initialises the ADC steps on a later batch: with the method chosen at calibration."""
    layer = _layer(psum_granularity="column")
    calibrate(layer, torch.rand(2, 8, 6, 6), method={"psum": "max"})
    assert layer.calibration.psum is StepInit.MAX
    seen = _capture_psums(layer)
    set_psum_quant(layer, True)
    layer.eval()(torch.rand(2, 8, 6, 6))
    (psum,) = seen
    torch.testing.assert_close(layer.psum_step.detach(), _psum_magnitudes(psum).amax(0, keepdim=True))
    assert set_calibration(layer, "lsq") == 1 and layer.calibration == Calibration("lsq", "lsq", "lsq")


@pytest.mark.parametrize(
    ("method", "message"),
    [
        ({"weight": "percentile"}, "invalid calibration.weight 'percentile'; valid choices: max, lsq, mse"),
        ({"psum": "prc"}, "invalid calibration.psum 'prc'; valid choices: max, percentile, lsq, mse"),
        ({"act": "minmax"}, "invalid calibration.act 'minmax'; valid choices: max, percentile, lsq, mse"),
        ({"psm": "max"}, r"invalid calibration keys \['psm'\]; valid keys: weight, act, psum, percentile"),
        ({"percentile": 0}, r"invalid calibration.percentile=0; valid values: a number in \(0, 100\]"),
        ({"percentile": 100.5}, r"invalid calibration.percentile=100.5"),
        ("percentile", "invalid calibration.weight 'percentile'"),
        (3, "invalid calibration method 3"),
    ],
)
def test_bad_methods_name_the_value_and_the_choices(method, message: str) -> None:
    layer = _layer()
    with pytest.raises(ValueError, match=message):
        calibrate(layer, torch.rand(2, 8, 6, 6), method=method)
    assert not layer.psum_step_ready  # refused before anything changed


def test_strings_and_enums_parse_alike() -> None:
    parsed = Calibration.parse({"weight": "MAX", "psum": StepInit.PERCENTILE, "percentile": 99})
    assert parsed == Calibration(StepInit.MAX, StepInit.MSE, StepInit.PERCENTILE, 99.0)
    assert parsed.to_dict() == {"weight": "max", "act": "mse", "psum": "percentile", "percentile": 99.0}


def test_reestimate_batchnorm_averages_the_quantized_networks_statistics() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(CIMConv2d(3, 4, 3, padding=1, array_size=27), nn.BatchNorm2d(4))
    calibrate(model, torch.rand(4, 3, 6, 6))
    batches = [torch.rand(4, 3, 6, 6) + i for i in range(3)]
    norm = model[1]
    before = norm.running_mean.clone()
    with pytest.raises(ValueError, match="no batches"):
        reestimate_batchnorm(model, [])
    assert torch.equal(norm.running_mean, before)

    model.train()
    assert reestimate_batchnorm(model, iter(batches)) == 1
    with torch.no_grad():
        features = [model[0](b) for b in batches]
    torch.testing.assert_close(norm.running_mean, torch.stack([f.mean((0, 2, 3)) for f in features]).mean(0))
    expected_var = torch.stack([f.transpose(0, 1).flatten(1).var(1) for f in features]).mean(0)
    torch.testing.assert_close(norm.running_var, expected_var)
    assert model.training and norm.training and norm.momentum == 0.1 and int(norm.num_batches_tracked) == 3
