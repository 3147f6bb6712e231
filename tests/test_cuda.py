"""On a CUDA GPU: the fast CIM layer against the literal simulator, bf16 autocast and TF32, and short trainings
through the real config path (``trainer=gpu``). Skipped without CUDA.

The simulator (:func:`cimexp.cim.simulate`) runs on the CPU in float64 on the programs the GPU layers export.
float32 layers are compared on inputs and steps chosen so that float32 is exact where it matters: activation
codes ``k`` from inputs ``k * 2^-n``, and odd-integer ADC steps, so that an integer partial sum is never a
rounding tie and float32 and float64 always pick the same ADC code (one code off is ~1e-2 of the output).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator

import lightning as L
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from cimexp.cim import CIMConv2d, CIMProgram, calibrate, cell_variation, simulate
from cimexp.train import train

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

DEVICE = torch.device("cuda")

GRANULARITY_PAIRS = [("layer", "layer"), ("layer", "column"), ("column", "column")]
ENCODINGS = ["twos_complement", "differential"]
GEOMETRIES = {
    # name: (in_channels, out_channels, stride, options); 3x3 kernels on 128-row arrays: 14 channels per row tile
    "three_row_tiles": (32, 16, 1, {}),
    "two_row_tiles_stride2_bias": (16, 8, 2, {"bias": True}),
    "five_row_tiles_bit_serial": (64, 8, 1, {"dac_bits": 2}),  # K = 2 input cycles of 2 bits
}
REL_TOL = {torch.float64: 1e-9, torch.float32: 1e-5}
"""Largest difference from the float64 simulator, relative to the largest output: summation order in float64;
in float32, rounding of the scales and of the sum of a few dozen dequantized codes (<= 3.3e-7 on the CPU)."""

_CONV2D = F.conv2d


def _layer(in_ch: int, out_ch: int, dtype: torch.dtype, stride: int = 1, seed: int = 0, **options) -> CIMConv2d:
    """A 3x3 CIM layer on 128-row arrays on the GPU, calibrated, then a few SGD steps on a random regression
    target (so that steps and weights have moved); in eval mode."""
    torch.manual_seed(seed)
    layer = CIMConv2d(in_ch, out_ch, 3, stride=stride, padding=1, array_size=128, device=DEVICE, dtype=dtype, **options)
    calibrate(layer, torch.rand(4, in_ch, 8, 8, dtype=dtype, device=DEVICE))
    opt = torch.optim.SGD(layer.parameters(), lr=0.05)
    for _ in range(3):
        loss = (layer(torch.rand(4, in_ch, 8, 8, dtype=dtype, device=DEVICE)) - 1.0).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return layer.eval()


def _geometry_layer(name: str, granularity: tuple[str, str], encoding: str, dtype: torch.dtype) -> CIMConv2d:
    in_ch, out_ch, stride, options = GEOMETRIES[name]
    return _layer(
        in_ch,
        out_ch,
        dtype,
        stride=stride,
        weight_granularity=granularity[0],
        psum_granularity=granularity[1],
        weight_encoding=encoding,
        **options,
    )


@torch.no_grad()
def _snap_to_integer_grid(layer: CIMConv2d) -> None:
    """A power-of-two activation step and odd-integer ADC steps (see the module docstring)."""
    layer.act_step.copy_(torch.exp2(torch.round(torch.log2(layer.act_step.abs()))))
    layer.psum_step.copy_(2 * torch.floor(layer.psum_step.abs() / 2) + 1)


def _grid_input(layer: CIMConv2d, batch: int = 2, size: int = 8) -> torch.Tensor:
    """``[batch, C, size, size]`` inputs ``k * act_step``, ``k`` from -1 to ``2^a_bits`` (both ends clip); exact in
    float32 and bfloat16 after :func:`_snap_to_integer_grid`."""
    k = torch.randint(-1, layer.act_qmax + 2, (batch, layer.in_channels, size, size), device=DEVICE)
    return k.to(layer.weight.dtype) * layer.act_step.detach().abs()


def _float64(program: CIMProgram) -> CIMProgram:
    """``program`` with every tensor in float64 (the simulator needs one dtype throughout)."""
    tensors = {f.name: getattr(program, f.name) for f in dataclasses.fields(program)}
    return dataclasses.replace(program, **{k: v.double() for k, v in tensors.items() if isinstance(v, torch.Tensor)})


def _assert_matches_program(layer: CIMConv2d, x: torch.Tensor) -> None:
    """The layer's output on ``x`` ``[B, C, H, W]`` (both on the GPU) equals the float64 simulator's output of its
    program to ``REL_TOL`` of the layer's dtype."""
    with torch.no_grad():
        fast = layer(x)
    assert fast.device == x.device and fast.dtype == layer.weight.dtype
    literal = simulate(_float64(layer.cim_program()), x.double().cpu())
    scale = float(literal.abs().max())
    torch.testing.assert_close(fast.double().cpu(), literal, rtol=0, atol=REL_TOL[layer.weight.dtype] * scale)


@contextlib.contextmanager
def _recorded_convs() -> Iterator[list[tuple[tuple, dict, torch.Tensor]]]:
    """Every ``F.conv2d`` call inside the block as ``(args, kwargs, output)``: the CIM layer's partial-sum
    convolutions, however the layer arranges them."""
    calls = []

    def conv2d(*args, **kwargs):
        out = _CONV2D(*args, **kwargs)
        calls.append((args, kwargs, out))
        return out

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(F, "conv2d", conv2d)
        yield calls


def _float64_conv(args: tuple, kwargs: dict) -> torch.Tensor:
    """A recorded convolution recomputed in float64."""
    args = [a.double() if isinstance(a, torch.Tensor) else a for a in args]
    kwargs = {k: v.double() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    return _CONV2D(*args, **kwargs)


# --- the fast layer against the literal simulator -------------------------------------------------------------
@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("granularity", GRANULARITY_PAIRS, ids="/".join)
@pytest.mark.parametrize("geometry", list(GEOMETRIES))
def test_layer_matches_the_simulator_in_float64(geometry, granularity, encoding):
    layer = _geometry_layer(geometry, granularity, encoding, torch.float64)
    x = torch.rand(2, layer.in_channels, 8, 8, dtype=torch.float64, device=DEVICE)
    _assert_matches_program(layer, x)
    with cell_variation(layer, sigma=0.2, seed=1):
        _assert_matches_program(layer, x)


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("granularity", GRANULARITY_PAIRS, ids="/".join)
@pytest.mark.parametrize("geometry", list(GEOMETRIES))
def test_layer_matches_the_simulator_in_float32(geometry, granularity, encoding):
    """Integer partial sums are exact in float32: the float32 layer matches the float64 simulator to float32
    rounding (with PyTorch's default ``torch.backends.cudnn.allow_tf32 = True``, see the TF32 tests)."""
    layer = _geometry_layer(geometry, granularity, encoding, torch.float32)
    _snap_to_integer_grid(layer)
    _assert_matches_program(layer, _grid_input(layer))


# --- mixed precision ------------------------------------------------------------------------------------------
def test_bf16_autocast_keeps_the_partial_sums_in_float32():
    """Under bf16 autocast the partial-sum convolutions must still run in float32: bfloat16 has an 8-bit
    significand, so integer partial sums above 256 would be rounded and flip ADC codes."""
    layer = _layer(64, 16, torch.float32, psum_quant=True, weight_granularity="column", psum_granularity="column")
    _snap_to_integer_grid(layer)
    x = _grid_input(layer)
    assert torch.equal(x.bfloat16().float(), x)  # the input itself loses nothing in bfloat16
    with torch.no_grad():
        out_fp32 = layer(x)
        with _recorded_convs() as convs, torch.autocast("cuda", dtype=torch.bfloat16):
            out_autocast = layer(x)

    # Exact: with and without autocast the layer must run the same float32 arithmetic on the same values; any
    # bfloat16 step would move outputs by ~2^-8 of their size.
    torch.testing.assert_close(out_autocast.float(), out_fp32, rtol=0, atol=0)
    assert convs, "the layer ran no F.conv2d"
    for args, kwargs, psum in convs:  # float32 partial sums, equal to the (integer) float64 ones
        exact = _float64_conv(args, kwargs)
        assert psum.dtype == torch.float32 and torch.equal(exact, exact.round())
        torch.testing.assert_close(psum.double(), exact, rtol=1e-5, atol=1e-5 * float(exact.abs().max()))
    assert max(float(psum.abs().max()) for _, _, psum in convs) > 256  # large enough for bfloat16 to round
    _assert_matches_program(layer, x)


# --- TF32 -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_tf32_does_not_change_integer_partial_sums(monkeypatch, encoding):
    """TF32 keeps 10 significand bits: cell codes and activation codes (integers below 2^11) and their products
    summed in float32 stay exact, so with TF32 allowed the layer still matches the simulator to float32 rounding."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    layer = _layer(64, 16, torch.float32, weight_encoding=encoding)
    _snap_to_integer_grid(layer)
    _assert_matches_program(layer, _grid_input(layer))


NON_INTEGER_OPERANDS = {
    # name: (layer options, cell variation sigma)
    "cell_variation": ({}, 0.2),  # conductances code * gain
    "unquantized_activations": ({"a_bits": None}, 0.0),  # inputs reach the arrays as they are
    "no_psum_quant": ({"psum_quant": False}, 0.0),  # one convolution with the folded float weights
}


@pytest.mark.parametrize("case", list(NON_INTEGER_OPERANDS))
def test_tf32_is_off_where_operands_are_not_integers(monkeypatch, case):
    """The layer must switch TF32 off where its convolution operands are not integers. Rounded to TF32 (~2^-11
    relative) such operands put the convolutions off by ~1e-4 of their size, float32 by ~1e-7 (measured on the
    CPU by rounding the operands to 10 significand bits). The ADC hides most of it in the output, so this
    compares every convolution the layer runs with float64, at rtol 1e-5."""
    options, sigma = NON_INTEGER_OPERANDS[case]
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)  # PyTorch's default, stated
    layer = _layer(64, 16, torch.float32, **options)
    x = torch.rand(2, 64, 8, 8, device=DEVICE) - 0.5
    variation = cell_variation(layer, sigma=sigma, seed=1) if sigma else contextlib.nullcontext()
    with variation, torch.no_grad(), _recorded_convs() as convs:
        layer(x)
    assert convs, "the layer ran no F.conv2d"
    for args, kwargs, out in convs:
        exact = _float64_conv(args, kwargs)
        scale = float(exact.abs().max())
        torch.testing.assert_close(out.double(), exact, rtol=1e-5, atol=1e-5 * scale)


# --- training through the real config path --------------------------------------------------------------------
class DeviceProbe(L.Callback):
    """Records, for every training batch, the device types of the model's parameters and the loss."""

    def __init__(self) -> None:
        self.seen: list[tuple[set[str], float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        devices = {p.device.type for p in pl_module.parameters()}
        self.seen.append((devices, float(outputs["loss"])))


def _train_two_steps(make_cfg, overrides: list[str]) -> tuple[dict[str, float], dict]:
    """Two training steps on tiny synthetic data with the CSV logger, and the checks every GPU run shares."""
    metrics, objects = train(
        make_cfg(
            [
                *overrides,
                "++trainer.max_steps=2",
                "logger=csv",
                "+callbacks.device_probe._target_=test_cuda.DeviceProbe",
            ]
        )
    )
    probe = next(cb for cb in objects["callbacks"] if isinstance(cb, DeviceProbe))
    assert [devices for devices, _ in probe.seen] == [{"cuda"}, {"cuda"}]
    assert all(math.isfinite(loss) for _, loss in probe.seen)
    assert objects["trainer"].global_step == 2
    assert math.isfinite(metrics["train/loss"]) and math.isfinite(metrics["val/loss"])
    assert objects["results"]["status"] == "finished"
    return metrics, objects


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_gpu_training(make_cfg, tiny_data, quiet, precision):
    """``trainer=gpu``: calibration in ``setup`` (before Lightning moves the model), two steps, validation."""
    _, objects = _train_two_steps(make_cfg, [*tiny_data, *quiet, "trainer=gpu", f"trainer.precision={precision}"])
    assert objects["trainer"].precision == precision
    assert objects["results"]["compile"] == "reduce-overhead"  # model.compile=auto: CUDA graphs on one GPU


def test_gpu_training_eager(make_cfg, tiny_data, quiet):
    """``model.compile=false`` on a GPU: the eager path the default replaces."""
    _, objects = _train_two_steps(make_cfg, [*tiny_data, *quiet, "trainer=gpu", "model.compile=false"])
    assert objects["results"]["compile"] is None


def test_ddp_on_one_gpu(make_cfg, tiny_data, quiet, monkeypatch):
    """``trainer=ddp`` on one GPU: the process group (NCCL) exists while ``setup`` calibrates, so the step sizes
    are averaged over ranks there (``sync_mean``)."""
    for name in ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)  # Lightning sets them for its ranks: unset again afterwards
    try:
        _, objects = _train_two_steps(make_cfg, [*tiny_data, *quiet, "trainer=ddp", "trainer.devices=1"])
        assert objects["results"]["compile"] is None  # model.compile=auto stays eager under DDP
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
