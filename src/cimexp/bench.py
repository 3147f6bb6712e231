"""Speed of the CIM layer against ``nn.Conv2d`` and the literal simulator, measured side by side.

``python -m cimexp.bench`` (or ``make bench``) times, for ResNet-20's three layer shapes (batch 128, 128x128
arrays, W4A4, 2-bit cells, 4-bit ADC, column/column):

- forward + backward (input requires grad, as inside a network) of ``CIMConv2d`` and of ``nn.Conv2d``;
- forward of ``CIMConv2d`` and of :func:`cimexp.cim.program.simulate`, the literal per-array reference;
- memory autograd keeps for the backward pass (bytes of unique saved tensors), and on CUDA the peak allocation.

Ratios come from the same run, interleaved, so machine load affects both sides alike. Targets (issue 2):
CIM fwd+bwd <= 8x ``nn.Conv2d``; CIM forward >= 20x faster than the literal simulator.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from cimexp.cim import CIMConv2d, calibrate, simulate

RESNET20_SHAPES = ((16, 32), (32, 16), (64, 8))
"""(channels, spatial size) of ResNet-20's 3x3 convolutions in its three stages."""


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_time(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 4) -> float:
    # oneDNN builds its kernels on the first calls of each shape (seconds for a grouped backward): warm up.
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def saved_tensor_bytes(fn: Callable[[], torch.Tensor]) -> int:
    """Bytes of the distinct tensors autograd saves for the backward pass of ``fn()`` (training memory)."""
    seen: dict[tuple[int, int], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        seen[(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def _peak_cuda_bytes(fn: Callable[[], object], device: torch.device) -> int | None:
    if device.type != "cuda":
        return None
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    _sync(device)
    return torch.cuda.max_memory_allocated(device) - base


def bench_shape(channels: int, size: int, batch: int, device: torch.device, repeats: int) -> dict[str, float]:
    """Measure one ``channels x size x size`` 3x3 layer shape; returns times (s), ratios and memory (bytes)."""
    torch.manual_seed(0)
    conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False).to(device)
    cim = CIMConv2d.from_conv(
        conv,
        w_bits=4,
        a_bits=4,
        cell_bits=2,
        adc_bits=4,
        array_size=128,
        weight_granularity="column",
        psum_granularity="column",
    )
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
    rounds = {"cim_fwd_bwd": [], "conv_fwd_bwd": [], "cim_fwd": [], "literal_fwd": []}
    for _ in range(3):
        rounds["cim_fwd_bwd"].append(_median_time(fwd_bwd(cim), device, repeats))
        rounds["conv_fwd_bwd"].append(_median_time(fwd_bwd(conv), device, repeats))
        rounds["cim_fwd"].append(_median_time(forward(cim), device, repeats))
        rounds["literal_fwd"].append(_median_time(lambda: simulate(program, x_cpu), device, 1, warmup=0))
    t = {name: statistics.median(values) for name, values in rounds.items()}
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


def main(argv: list[str] | None = None) -> list[dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    print(f"device={device} torch={torch.__version__} threads={torch.get_num_threads()} batch={args.batch}")
    rows = [bench_shape(c, s, args.batch, device, args.repeats) for c, s in RESNET20_SHAPES]
    print(format_table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
