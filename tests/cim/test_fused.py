"""The fused Triton kernel (``model.kernels=triton``, ``cimexp.cim.fused``) under Triton's CPU interpreter: the
layer's output against the literal simulator, its gradients against the default path, and where it applies."""

from __future__ import annotations

import itertools

import pytest
import torch

from cimexp.cim import CIMConv2d, cell_variation, simulate
from cimexp.cim import fused as fused_module
from cimexp.cim.fused import fused_tiles_adc, reference_tiles_adc
from cimexp.cim.mapping import ConvGeometry
from cimexp.cim.quant import set_kernels

pytest.importorskip("triton")


@pytest.fixture
def triton_kernels(monkeypatch):
    """Triton's interpreter on the CPU and ``kernels="triton"`` for the test; the kernel's launches counted."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    launches = []
    launch = fused_module._launch
    monkeypatch.setattr(fused_module, "_launch", lambda *args: (launches.append(1), launch(*args))[1])
    previous = set_kernels("triton")
    yield launches
    set_kernels(previous)


def _layer(dtype, seed=0, **options) -> CIMConv2d:
    """20 input channels on 54-row arrays: 6 channels a tile, 4 row tiles (the last partly empty); stride 2."""
    torch.manual_seed(seed)
    layer = CIMConv2d(20, 12, 3, stride=2, padding=1, bias=True, array_size=54, **options).to(dtype)
    layer(torch.rand(4, 20, 7, 7, dtype=dtype))  # initialises the steps (the general path)
    return layer


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    ("weight_granularity", "psum_granularity", "weight_encoding"),
    [
        ("column", "column", "twos_complement"),
        ("layer", "array", "differential"),
        ("channel", "layer", "twos_complement"),
    ],
)
def test_the_fused_kernel_equals_the_literal_simulator(
    triton_kernels, dtype, weight_granularity, psum_granularity, weight_encoding
) -> None:
    layer = _layer(dtype, weight_granularity=weight_granularity, psum_granularity=psum_granularity,
                   weight_encoding=weight_encoding).eval()  # fmt: skip
    x = torch.rand(3, 20, 9, 9, dtype=dtype)
    with torch.no_grad():
        fused = layer(x)
    assert triton_kernels, "the fused kernel did not run"
    literal = simulate(layer.cim_program(), x).double()
    tolerance = 1e-9 if dtype == torch.float64 else 2e-6  # summation order only: no ADC code differs
    torch.testing.assert_close(fused.double(), literal, rtol=0, atol=tolerance * float(literal.abs().max()))


def test_the_fused_kernel_gives_the_default_paths_gradients(triton_kernels) -> None:
    layer = _layer(torch.float64).train()
    x = torch.rand(2, 20, 7, 7, dtype=torch.float64, requires_grad=True)
    results = []
    for mode in ("triton", "eager"):
        set_kernels(mode)
        layer.zero_grad()
        x.grad = None
        out = layer(x)
        out.square().sum().backward()
        results.append([out.detach(), x.grad.clone(), *(p.grad.clone() for p in layer.parameters())])
    assert len(triton_kernels) == 1
    for fused, default in zip(*results, strict=True):
        torch.testing.assert_close(fused, default, rtol=1e-10, atol=1e-10)


def test_the_kernel_alone_equals_its_reference_on_odd_shapes(triton_kernels) -> None:
    """Shapes that fill no block: 3 positions, 5 outputs, 45 rows, dilation and asymmetric stride and padding."""
    torch.manual_seed(1)
    geometry = ConvGeometry((3, 3), (2, 1), (0, 2), (2, 1), 5)
    a = torch.randint(0, 16, (1, 7, 6, 3)).double()
    cond = torch.randint(-2, 4, (2, 1, 2, 5, 45)).double()
    cond[-1, ..., 2 * 9 :] = 0  # the second tile holds 2 of its 5 channels
    step, factor = torch.rand(4, 5).double() * 20 + 5, torch.randn(4, 5).double()
    qmin, qmax = torch.full((4, 1), -8.0).double(), torch.full((4, 1), 7.0).double()
    args = (a, cond, step, factor, qmin, qmax, geometry)
    torch.testing.assert_close(fused_tiles_adc(*args), reference_tiles_adc(*args), rtol=0, atol=1e-10)


@pytest.mark.parametrize("case", ["variation", "grouped", "bit_serial", "same_padding", "no_interpreter"])
def test_the_other_paths_run_where_the_kernel_does_not_apply(triton_kernels, monkeypatch, case) -> None:
    """Non-integer operands (cell variation), grouped layers, bit-serial inputs, padding given by name and a CPU
    without the interpreter take the other paths, which the other tests check."""
    options = {"dac_bits": 2} if case == "bit_serial" else {}
    if case in ("grouped", "same_padding"):
        torch.manual_seed(0)
        shape = {"padding": 1, "groups": 4} if case == "grouped" else {"padding": "same"}
        layer = CIMConv2d(20, 12, 3, array_size=54, **shape).double()
        layer(torch.rand(2, 20, 7, 7, dtype=torch.float64))
    else:
        layer = _layer(torch.float64, **options)
    if case == "no_interpreter":
        monkeypatch.setenv("TRITON_INTERPRET", "0")
    x = torch.rand(2, 20, 7, 7, dtype=torch.float64)
    with torch.no_grad(), cell_variation(layer, sigma=0.1, seed=0) if case == "variation" else _nothing():
        layer.eval()(x)
    assert not triton_kernels


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def test_kernel_modes_name_triton() -> None:
    from cimexp.cim.quant import KERNEL_MODES

    assert "triton" in KERNEL_MODES
    with pytest.raises(ValueError, match="auto, compiled, eager, triton"):
        set_kernels("cuda")
    assert list(itertools.islice(KERNEL_MODES, 1)) == ["auto"]  # auto stays the default choice
