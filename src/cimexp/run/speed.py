"""Steps and memory of CIM layers and networks against float, measured side by side: the measurements behind
``cimexp-bench`` (:mod:`cimexp.bench`, which describes the tables and their targets).

Every ratio comes from one run, interleaved round by round (each model or layer in turn), so machine load affects
both sides alike.
"""

from __future__ import annotations

import contextlib
import functools
import statistics
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cimexp.cim import CIMConv2d, calibrate, simulate
from cimexp.cim.vocabulary import PAPER_SETTINGS
from cimexp.models import resnet20

RESNET20_SHAPES = ((16, 32), (32, 16), (64, 8))
"""(channels, spatial size) of ResNet-20's 3x3 convolutions in its three stages."""

CIM_SETTINGS: dict[str, int] = {
    key: PAPER_SETTINGS[key] for key in ("w_bits", "a_bits", "cell_bits", "adc_bits", "array_size")
}
"""CIM layer settings of every benchmark (the paper's: W4A4, 2-bit cells, 4-bit ADC, 128x128 arrays)."""

NET_MODELS: dict[str, tuple[str, str] | None] = {
    "float": None,
    "column/column": ("column", "column"),
    "layer/column": ("layer", "column"),
    "layer/layer": ("layer", "layer"),
}
"""ResNet-20 variants of :func:`bench_net`: name -> (weight, partial-sum) granularity of its CIM layers; ``None``
is the float network (``nn.Conv2d``). The first is the reference of the ratios."""

COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")
"""``--compile`` choices: ``none`` runs eager; the others are ``torch.compile`` modes."""


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_once(fn: Callable[[], object], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _median_time(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 4) -> float:
    # oneDNN builds its kernels on the first calls of each shape (seconds for a grouped backward): warm up.
    for _ in range(warmup):
        fn()
    return statistics.median(_time_once(fn, device) for _ in range(repeats))


def _storage_key(t: torch.Tensor) -> tuple[int, int]:
    return t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()


@contextlib.contextmanager
def _recording_saved(storages: dict[tuple[int, int], int]) -> Iterator[None]:
    # Only while the graph holds the saved tensors is a storage address unique: record the forward pass only.
    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[_storage_key(t)] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield


def saved_tensor_bytes(fn: Callable[[], torch.Tensor]) -> int:
    """Bytes of the distinct tensors autograd saves for the backward pass of ``fn()`` (training memory)."""
    storages: dict[tuple[int, int], int] = {}
    with _recording_saved(storages):
        fn()
    return sum(storages.values())


def _peak_cuda_bytes(fn: Callable[[], object], device: torch.device) -> int | None:
    if device.type != "cuda":
        return None
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    _sync(device)
    return torch.cuda.max_memory_allocated(device) - base


def bench_shape(
    channels: int, size: int, batch: int, device: torch.device, repeats: int, rounds: int = 3
) -> dict[str, float]:
    """Measure one ``channels x size x size`` 3x3 layer shape; returns times (s), ratios and memory (bytes)."""
    torch.manual_seed(0)
    conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False).to(device)
    cim = CIMConv2d.from_conv(conv, **CIM_SETTINGS, weight_granularity="column", psum_granularity="column")
    x = torch.rand(batch, channels, size, size, device=device)
    calibrate(cim, x)
    x.requires_grad_(True)

    def fwd_bwd(layer: nn.Module) -> Callable[[], None]:
        def run() -> None:
            layer.zero_grad(set_to_none=True)
            x.grad = None
            layer(x).sum().backward()

        return run

    def forward(layer: nn.Module) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            with torch.no_grad():
                return layer(x)

        return run

    program = cim.eval().cim_program()
    x_cpu = x.detach().cpu()
    cim.train()
    # Interleave the two sides round by round so that load changes hit both.
    times = {"cim_fwd_bwd": [], "conv_fwd_bwd": [], "cim_fwd": [], "literal_fwd": []}
    for _ in range(rounds):
        times["cim_fwd_bwd"].append(_median_time(fwd_bwd(cim), device, repeats))
        times["conv_fwd_bwd"].append(_median_time(fwd_bwd(conv), device, repeats))
        times["cim_fwd"].append(_median_time(forward(cim), device, repeats))
        times["literal_fwd"].append(_median_time(lambda: simulate(program, x_cpu), device, 1, warmup=0))
    t = {name: statistics.median(values) for name, values in times.items()}
    return {
        "shape": f"{channels}x{size}x{size}",
        **t,
        "cim_vs_conv": t["cim_fwd_bwd"] / t["conv_fwd_bwd"],
        "literal_vs_cim": t["literal_fwd"] / t["cim_fwd"],
        "cim_saved_bytes": saved_tensor_bytes(lambda: cim(x)),
        "conv_saved_bytes": saved_tensor_bytes(lambda: conv(x)),
        "cim_peak_bytes": _peak_cuda_bytes(fwd_bwd(cim), device),
        "conv_peak_bytes": _peak_cuda_bytes(fwd_bwd(conv), device),
    }


def format_table(rows: list[dict[str, float]]) -> str:
    """Markdown table of :func:`bench_shape` results."""
    lines = [
        "| shape | CIM fwd+bwd (ms) | Conv2d fwd+bwd (ms) | CIM / Conv2d | CIM fwd (ms) | literal fwd (ms) "
        "| literal / CIM | saved for bwd CIM / Conv2d (MiB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['shape']} | {1e3 * r['cim_fwd_bwd']:.1f} | {1e3 * r['conv_fwd_bwd']:.1f} | "
            f"{r['cim_vs_conv']:.1f}x | {1e3 * r['cim_fwd']:.1f} | {1e3 * r['literal_fwd']:.1f} | "
            f"{r['literal_vs_cim']:.1f}x | {r['cim_saved_bytes'] / 2**20:.1f} / {r['conv_saved_bytes'] / 2**20:.1f} |"
        )
    return "\n".join(lines)


@dataclass
class _BenchedNet:
    """One network of :func:`bench_net` with its optimizer; ``forward`` is ``model`` or its compiled wrapper."""

    model: nn.Module
    forward: Callable[[torch.Tensor], torch.Tensor]
    optimizer: torch.optim.Optimizer

    def step(self, x: torch.Tensor, y: torch.Tensor, saved: dict[tuple[int, int], int] | None = None) -> None:
        """One SGD step on ``(x, y)``; records the storages saved for backward into ``saved`` when given."""
        self.optimizer.zero_grad(set_to_none=True)
        with contextlib.nullcontext() if saved is None else _recording_saved(saved):
            loss = F.cross_entropy(self.forward(x), y)
        loss.backward()
        self.optimizer.step()

    def state_tensors(self) -> Iterable[torch.Tensor]:
        """Weights, buffers, gradients and optimizer state (momentum)."""
        yield from self.model.parameters()
        yield from self.model.buffers()
        yield from (p.grad for p in self.model.parameters() if p.grad is not None)
        for state in self.optimizer.state.values():
            yield from (v for v in state.values() if isinstance(v, torch.Tensor))


def _storage_bytes(tensors: Iterable[torch.Tensor], storages: dict[tuple[int, int], int] | None = None) -> int:
    storages = {} if storages is None else storages
    storages.update((_storage_key(t), t.untyped_storage().nbytes()) for t in tensors)
    return sum(storages.values())


def _build_net(name: str, x: torch.Tensor, compile_mode: str) -> tuple[_BenchedNet, float]:
    """ResNet-20 variant ``name`` of :data:`NET_MODELS` on ``x``'s device, its CIM layers calibrated on ``x``; returns
    the network and the calibration time (s)."""
    granularity = NET_MODELS[name]
    conv_layer: Callable[..., nn.Module] = (
        nn.Conv2d
        if granularity is None
        else functools.partial(
            CIMConv2d, **CIM_SETTINGS, weight_granularity=granularity[0], psum_granularity=granularity[1]
        )
    )
    torch.manual_seed(0)  # the same initial weights in every variant
    model = resnet20(conv_layer=conv_layer, num_classes=10).to(x.device).train()
    calibrate_s = _time_once(lambda: calibrate(model, x), x.device)
    forward = model if compile_mode == "none" else torch.compile(model, mode=compile_mode)
    return _BenchedNet(model, forward, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)), calibrate_s


def bench_net(
    batch: int = 128,
    device: torch.device | str = "cpu",
    rounds: int = 5,
    repeats: int = 2,
    compile_mode: str = "none",
    warmup: int = 2,
    models: tuple[str, ...] = tuple(NET_MODELS),
) -> list[dict[str, Any]]:
    """Time one ResNet-20 SGD training step of every model of :data:`NET_MODELS`, all built in this process.

    Each model is built, calibrated (CIM) and, unless ``compile_mode`` is ``"none"``, wrapped in
    ``torch.compile(model, mode=compile_mode)``; then each runs ``warmup`` untimed steps in turn, then ``rounds``
    rounds of ``repeats`` timed steps of each model in turn. One-time costs of the process (kernels the CIM layer
    compiles on its first call, say) fall in the first CIM model's calibration and warm-up.

    Args:
        batch: images per step, ``[batch, 3, 32, 32]`` uniform random inputs and random labels of 10 classes.
        device: where the models and data live.
        rounds: interleaved rounds (each model in turn per round).
        repeats: timed steps per model and round.
        compile_mode: one of :data:`COMPILE_MODES`.
        warmup: steps per model before timing, at least 1: the first step (kernel selection, compilation) is
            never among the timed ones.
        models: names of :data:`NET_MODELS` to run, ``"float"`` first (the reference of the ratios).

    Returns:
        One dict per model: ``model``; ``step_s`` (median of the ``rounds * repeats`` step times, s) and
        ``step_vs_float``; ``memory_bytes`` and ``memory_vs_float`` (``cuda_peak_bytes`` on CUDA, else
        ``saved_and_state_bytes``); ``cuda_peak_bytes`` (peak allocation of a step, weights, gradients and momentum
        included, other models excluded; ``None`` off CUDA); ``saved_and_state_bytes`` (distinct storages saved
        for the backward pass, weights, buffers, gradients and momentum); ``warmup_s`` (sum of ``warmup_steps_s``,
        the first steps' times, s); ``calibrate_s``; ``step_times_s`` (every timed step, s).
    """
    if compile_mode not in COMPILE_MODES:
        raise ValueError(f"invalid compile_mode={compile_mode!r}; valid choices: {', '.join(COMPILE_MODES)}")
    if not models or models[0] != "float" or not set(models) <= set(NET_MODELS):
        raise ValueError(f"invalid models={','.join(models)}: 'float' first, then any of {', '.join(NET_MODELS)}")
    if min(batch, rounds, repeats, warmup) < 1:
        raise ValueError(f"batch, rounds, repeats and warmup must be >= 1, got {batch}, {rounds}, {repeats}, {warmup}")
    device = torch.device(device)
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, 32, 32, generator=generator).to(device)
    y = torch.randint(0, 10, (batch,), generator=generator).to(device)
    nets, calibrate_s = zip(*(_build_net(name, x, compile_mode) for name in models), strict=True)

    warmup_times = [[_time_once(lambda net=net: net.step(x, y), device) for _ in range(warmup)] for net in nets]
    times: list[list[float]] = [[] for _ in nets]
    for _ in range(rounds):
        for net, net_times in zip(nets, times, strict=True):
            net_times.extend(_time_once(lambda net=net: net.step(x, y), device) for _ in range(repeats))

    rows = []
    for name, net, net_times, warmup_steps, calibration in zip(
        models, nets, times, warmup_times, calibrate_s, strict=True
    ):
        saved: dict[tuple[int, int], int] = {}
        net.step(x, y, saved)
        saved_and_state = _storage_bytes(net.state_tensors(), saved)
        # The step's peak over what is allocated before it (all models) plus this model's resident weights,
        # buffers and momentum; its gradients are freed first, so the peak counts them.
        net.optimizer.zero_grad(set_to_none=True)
        resident = _storage_bytes(net.state_tensors())
        peak = _peak_cuda_bytes(lambda net=net: net.step(x, y), device)
        cuda_peak = None if peak is None else peak + resident
        rows.append(
            {
                "model": name,
                "cuda_graphs": device.type == "cuda" and compile_mode in ("reduce-overhead", "max-autotune"),
                "step_s": statistics.median(net_times),
                "memory_bytes": saved_and_state if cuda_peak is None else cuda_peak,
                "cuda_peak_bytes": cuda_peak,
                "saved_and_state_bytes": saved_and_state,
                "warmup_s": sum(warmup_steps),
                "warmup_steps_s": warmup_steps,
                "calibrate_s": calibration,
                "step_times_s": net_times,
            }
        )
    for row in rows:
        row["step_vs_float"] = row["step_s"] / rows[0]["step_s"]
        row["memory_vs_float"] = row["memory_bytes"] / rows[0]["memory_bytes"]
    return rows


def format_net_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of :func:`bench_net` results, with a note on warm-up and calibration."""
    on_cuda = rows[0]["cuda_peak_bytes"] is not None
    memory = "peak memory (MiB)" if on_cuda else "memory: saved for bwd + weights, grads, momentum (MiB)"
    if on_cuda and rows[0].get("cuda_graphs"):
        memory = "peak memory (MiB; CUDA graphs allocate their pools in warm-up: not comparable)"
    lines = [
        f"| model | step (ms) | vs float | {memory} | vs float | warm-up (s) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {1e3 * r['step_s']:.1f} | {r['step_vs_float']:.2f}x | {r['memory_bytes'] / 2**20:.1f} "
            f"| {r['memory_vs_float']:.2f}x | {r['warmup_s']:.1f} |"
        )
    calibration = ", ".join(f"{r['model']} {r['calibrate_s']:.1f}" for r in rows[1:])
    lines.append(
        f"\nstep: median of {len(rows[0]['step_times_s'])} steps per model in interleaved rounds; warm-up: the first "
        f"{len(rows[0]['warmup_steps_s'])} steps of each model (kernel selection, torch.compile when compiled; "
        f"one-time costs of the process, such as kernels the CIM layer compiles, fall in the first CIM model); "
        f"calibration (s): {calibration}."
    )
    return "\n".join(lines)
