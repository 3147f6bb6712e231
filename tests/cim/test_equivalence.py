"""The fast CIMConv2d forward against the literal simulator of its exported program (``CIMProgram``'s contract).

Everything runs in float64 so that the only differences are summation order (~1e-15), never an ADC code.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from cimexp.cim import CIMConv2d, cell_variation, simulate

GRANULARITIES = ("layer", "array", "channel", "column")
VARIATION_LEVELS = ("weight", "cell")  # per-weight gains broadcast over the cells (eq. 5), and per-cell gains


def _trained_layer(in_ch, out_ch, k, *, stride=1, padding=0, steps=3, seed=0, **options) -> CIMConv2d:
    """A layer after a few SGD steps on a random regression target, so that steps and weights have moved."""
    torch.manual_seed(seed)
    layer = CIMConv2d(in_ch, out_ch, k, stride=stride, padding=padding, **options).double()
    opt = torch.optim.SGD(layer.parameters(), lr=0.05)
    for _ in range(steps):
        x = torch.rand(4, in_ch, 7, 7, dtype=torch.float64)
        loss = (layer(x) - 1.0).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return layer.eval()


def _assert_matches_program(layer: CIMConv2d, x: torch.Tensor) -> None:
    with torch.no_grad():
        fast = layer(x)
    literal = simulate(layer.cim_program(), x)
    scale = float(literal.abs().max().clamp_min(1.0))
    torch.testing.assert_close(fast, literal, rtol=0, atol=1e-9 * scale)


@pytest.mark.parametrize(
    ("weight_granularity", "psum_granularity", "weight_encoding"),
    list(itertools.product(GRANULARITIES, GRANULARITIES, ("twos_complement", "differential"))),
)
def test_every_granularity_pair_and_encoding(weight_granularity, psum_granularity, weight_encoding):
    # 20 input channels on 54-row arrays: 6 channels per tile, 4 row tiles, the last one partly empty;
    # 12 output channels at 2 splits = 27 per array, so 1 column tile; stride 2 and a bias.
    layer = _trained_layer(
        20,
        12,
        3,
        stride=2,
        padding=1,
        bias=True,
        array_size=54,
        weight_granularity=weight_granularity,
        psum_granularity=psum_granularity,
        weight_encoding=weight_encoding,
    )
    x = torch.rand(3, 20, 9, 9, dtype=torch.float64)
    _assert_matches_program(layer, x)
    for level in VARIATION_LEVELS:
        with cell_variation(layer, sigma=0.2, seed=1, level=level):
            _assert_matches_program(layer, x)


READINGS = {  # conf/quantizer/*.yaml as layer options (the activation step's gradient scale needs training to act)
    "authors": {"weight_grad_scale": 1e-4, "act_grad_scale": 0.0, "psum_grad_scale": 1e-2,
                "weight_splits": "per_split", "slice_gradient": "lowest_split"},
    "lsq_untied": {"weight_splits": "per_split"},
}  # fmt: skip


@pytest.mark.parametrize("reading", list(READINGS))
@pytest.mark.parametrize(("weight_granularity", "psum_granularity"), list(itertools.product(GRANULARITIES, repeat=2)))
def test_every_granularity_pair_under_the_other_readings(reading, weight_granularity, psum_granularity):
    """Untied splits at layer and array granularity (one weight step per split) and the authors' gradients: trained
    a few steps, the exported program's literal simulation still equals the layer."""
    layer = _trained_layer(
        20, 12, 3, stride=2, padding=1, array_size=54, weight_granularity=weight_granularity,
        psum_granularity=psum_granularity, **READINGS[reading],
    )  # fmt: skip
    per_split = weight_granularity != "channel"
    assert layer.weight_step.shape[1] == (layer.mapping.n_splits if per_split else 1)
    _assert_matches_program(layer, torch.rand(3, 20, 9, 9, dtype=torch.float64))


GEOMETRIES = {
    # name: (in, out, kernel, stride, padding, array_size, options)
    "1x1": (10, 8, 1, 1, 0, 4, {}),
    "1x1_stride2": (6, 5, 1, 2, 0, 4, {}),
    "several_column_tiles": (5, 9, 3, 1, 1, 18, {"cell_bits": 1}),  # S=4: 4 channels per array -> 3 col tiles
    "rectangular_kernel": (7, 4, (1, 3), 1, (0, 1), 16, {}),
    "w8_c4_adc3": (9, 6, 3, 1, 1, 36, {"w_bits": 8, "cell_bits": 4, "adc_bits": 3}),
    "w3_c2_uneven_split": (9, 6, 3, 2, 1, 36, {"w_bits": 3, "cell_bits": 2, "adc_bits": 2}),
    "w5_c1_adc1": (9, 6, 3, 1, 1, 45, {"w_bits": 5, "cell_bits": 1, "adc_bits": 1}),
    "w2_c2": (9, 6, 3, 1, 1, 27, {"w_bits": 2, "cell_bits": 2, "adc_bits": 5}),
    "w4_c3_sign_bit_msb": (9, 6, 3, 1, 1, 36, {"cell_bits": 3}),  # 1 + 3 bits: the MSB cell holds the sign bit
    "w6_c4_signed_2bit_msb": (9, 6, 3, 1, 1, 36, {"w_bits": 6, "cell_bits": 4, "adc_bits": 3}),  # 2 + 4 bits
    "signed_inputs": (9, 6, 3, 1, 1, 27, {"a_bits": None}),
    "a8_adc8": (9, 6, 3, 1, 1, 27, {"a_bits": 8, "adc_bits": 8}),
    "no_psum_quant": (9, 6, 3, 2, 1, 27, {"psum_quant": False}),
    "no_psum_quant_differential": (9, 6, 3, 1, 1, 27, {"psum_quant": False, "weight_encoding": "differential"}),
    "differential_w3_c1": (9, 6, 3, 1, 1, 27, {"weight_encoding": "differential", "w_bits": 3, "cell_bits": 1}),
    "dilation2": (4, 4, 3, 1, 2, 18, {"dilation": 2}),
    "two_row_tiles_dense_path": (16, 6, 3, 1, 1, 128, {}),  # 14 channels per tile -> T = 2
}


@pytest.mark.parametrize("name", list(GEOMETRIES))
@pytest.mark.parametrize("granularity", [("column", "column"), ("layer", "array")])
def test_geometries_and_bit_widths(name, granularity):
    in_ch, out_ch, k, stride, padding, array_size, options = GEOMETRIES[name]
    layer = _trained_layer(
        in_ch,
        out_ch,
        k,
        stride=stride,
        padding=padding,
        array_size=array_size,
        weight_granularity=granularity[0],
        psum_granularity=granularity[1],
        **options,
    )
    x = torch.rand(2, in_ch, 8, 8, dtype=torch.float64)
    if options.get("a_bits", 4) is None:
        x = x - 0.5  # signed inputs reach the arrays unquantized
    _assert_matches_program(layer, x)
    for level in VARIATION_LEVELS:
        with cell_variation(layer, sigma=0.3, seed=7, level=level):
            _assert_matches_program(layer, x)


def test_adc_saturation():
    """The equivalence must also hold where every ADC saturates: with steps 1e-4 of their size, each non-zero
    (integer) partial sum clips to adc_min or adc_max, so the output becomes linear in the steps."""
    layer = _trained_layer(9, 6, 3, padding=1, array_size=27, adc_bits=2, steps=1)
    x = torch.rand(2, 9, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        layer.psum_step.mul_(1e-4)
        saturated = layer(x)
        layer.psum_step.mul_(0.5)
        assert torch.allclose(layer(x), 0.5 * saturated, rtol=1e-12, atol=0)
    _assert_matches_program(layer, x)


@pytest.mark.parametrize("in_channels", [16, 40])  # T = 2 and T = 3 on 128-row arrays
@pytest.mark.parametrize("granularity", [("column", "column"), ("layer", "layer")])
@pytest.mark.parametrize("one_conv", [False, True])
def test_tile_path_and_column_path_agree_compiled_and_eager(monkeypatch, in_channels, granularity, one_conv):
    """The fast path (one fused ADC per block of row tiles, compiled kernels) and the general path (all columns
    at once, taken while telemetry records; eager kernels) give the same outputs and gradients, with partial sums
    from one convolution per tile (CPU) or one grouped convolution (GPU, ``one_conv``)."""
    import cimexp.cim.layer as layer_module
    from cimexp.cim import start_telemetry, stop_telemetry
    from cimexp.cim.quant import set_kernels

    monkeypatch.setattr(layer_module, "ONE_CONV_DEVICES", ("cpu",) if one_conv else ())

    weight, psum = granularity
    results = []
    for kernels, telemetry in (("compiled", False), ("eager", True)):
        previous = set_kernels(kernels)
        try:
            torch.manual_seed(0)
            layer = _trained_layer(
                in_channels, 6, 3, padding=1, steps=1, weight_granularity=weight, psum_granularity=psum
            ).train()
            x = torch.rand(2, in_channels, 6, 6, dtype=torch.float64, requires_grad=True)
            if telemetry:
                start_telemetry(layer)
            out = layer(x)
            out.square().sum().backward()
            if telemetry:
                assert stop_telemetry(layer)  # the general path ran
            results.append([out.detach(), x.grad, *(p.grad for p in layer.parameters())])
        finally:
            set_kernels(previous)
    for fast, general in zip(*results, strict=True):
        torch.testing.assert_close(fast, general, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dac_bits", [1, 2, 3])
@pytest.mark.parametrize("weight_encoding", ["twos_complement", "differential"])
@pytest.mark.parametrize("granularity", [("column", "column"), ("layer", "array"), ("array", "layer")])
def test_bit_serial_inputs(dac_bits, weight_encoding, granularity):
    """dac_bits < a_bits: K = ceil(a_bits/dac_bits) input cycles, each through the ADCs, shifted and added
    (dac_bits=3 of a_bits=4 leaves a 1-bit most significant cycle)."""
    layer = _trained_layer(
        20,
        12,
        3,
        padding=1,
        array_size=54,
        dac_bits=dac_bits,
        weight_encoding=weight_encoding,
        weight_granularity=granularity[0],
        psum_granularity=granularity[1],
    )
    program = layer.cim_program()
    n_cycles = -(-4 // dac_bits)
    assert program.dac_bits == dac_bits and program.input_shift.tolist() == [
        2 ** (dac_bits * (n_cycles - 1 - k)) for k in range(n_cycles)
    ]
    x = torch.rand(2, 20, 7, 7, dtype=torch.float64)
    _assert_matches_program(layer, x)
    for level in VARIATION_LEVELS:
        with cell_variation(layer, sigma=0.2, seed=3, level=level):
            _assert_matches_program(layer, x)


def test_bit_serial_without_adc_equals_one_cycle():
    """Without partial-sum quantization the shift-and-add of input cycles is exact: the same output as one
    multi-bit DAC cycle; with a 4-bit ADC the two differ (every 1-bit cycle is converted on its own)."""
    outputs = {}
    for psum_quant in (False, True):
        for dac_bits in (4, 1):
            torch.manual_seed(0)
            layer = CIMConv2d(9, 6, 3, padding=1, array_size=27, dac_bits=dac_bits, psum_quant=psum_quant).double()
            x = torch.rand(2, 9, 8, 8, dtype=torch.float64)
            layer(x)  # initialises the steps from this batch
            outputs[psum_quant, dac_bits] = layer.eval()(x).detach()
    torch.testing.assert_close(outputs[False, 1], outputs[False, 4], rtol=0, atol=1e-12)
    assert not torch.allclose(outputs[True, 1], outputs[True, 4])
