"""Speed and memory of the CIM layer and of CIM networks against float, measured side by side.

``python -m cimexp.bench`` (or ``make bench``) times, for ResNet-20's three layer shapes (batch 128, 128x128
arrays, W4A4, 2-bit cells, 4-bit ADC, column/column):

- forward + backward (input requires grad, as inside a network) of ``CIMConv2d`` and of ``nn.Conv2d``;
- forward of ``CIMConv2d`` and of :func:`cimexp.cim.program.simulate`, the literal per-array reference;
- memory autograd keeps for the backward pass (bytes of unique saved tensors), and on CUDA the peak allocation.

``python -m cimexp.bench --net`` (or ``make bench-net``) times one SGD training step (zero_grad, forward,
cross-entropy, backward, momentum step; train mode, batch 128 of 32x32 inputs) of ResNet-20 in float and with CIM
layers of the same settings at column/column, layer/column and layer/layer granularity (weight/partial sum); it
reports the median step, the training memory (CUDA: peak allocation of a step; CPU: tensors saved for the backward
pass plus weights, gradients and momentum) and the warm-up (first steps: kernel selection, and compilation with
``--compile``). ``--all`` prints both tables.

Ratios come from the same run, interleaved (round by round, every model or layer in turn), so machine load affects
both sides alike. Targets: CIM layer fwd+bwd <= 8x ``nn.Conv2d`` per shape; CIM forward >= 20x faster
than the literal simulator. Network targets: every CIM scheme's ResNet-20 step <= 3x float on a 2-core CPU, and
column/column <= 2x float on one H100; peak training memory <= 3x float.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path
from typing import Any

import torch

from cimexp.cim.quant import KERNEL_MODES, set_kernels
from cimexp.run.speed import (
    COMPILE_MODES,
    NET_MODELS,
    RESNET20_SHAPES,
    bench_net,
    bench_shape,
    format_net_table,
    format_table,
)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    tables = parser.add_mutually_exclusive_group()
    tables.add_argument("--net", action="store_true", help="ResNet-20 training steps instead of the layer table")
    tables.add_argument("--all", action="store_true", help="both the layer and the network table")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default: 3 per layer shape, 5 with --net)")
    parser.add_argument(
        "--repeats", type=int, help="timed calls per round (default: 5 per layer measurement, 2 steps per model)"
    )
    parser.add_argument("--warmup", type=int, default=2, help="untimed first steps per model (--net), reported")
    parser.add_argument(
        "--compile", choices=COMPILE_MODES, default="none", help="torch.compile mode of the networks (--net)"
    )
    parser.add_argument(
        "--models",
        default=",".join(NET_MODELS),
        help=f"comma-separated networks of --net, float first (default: {','.join(NET_MODELS)})",
    )
    parser.add_argument(
        "--kernels", choices=KERNEL_MODES, default="auto", help="how the CIM layers' kernels run (set_kernels)"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    previous = set_kernels(args.kernels)
    try:
        return _measure(parser, args)
    finally:
        set_kernels(previous)


def _measure(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    results: dict[str, Any] = {
        "device": str(device),
        "device_name": _device_name(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "kernels": args.kernels,
    }
    print(
        f"device={device} ({results['device_name']}) torch={torch.__version__} threads={results['threads']} "
        f"batch={args.batch} kernels={args.kernels}"
    )
    if not args.net:
        rounds = 3 if args.rounds is None else args.rounds
        repeats = 5 if args.repeats is None else args.repeats
        results["layers"] = [bench_shape(c, s, args.batch, device, repeats, rounds) for c, s in RESNET20_SHAPES]
        print(format_table(results["layers"]))
    if args.net or args.all:
        rounds = 5 if args.rounds is None else args.rounds
        repeats = 2 if args.repeats is None else args.repeats
        print(f"network: ResNet-20 SGD step, compile={args.compile} rounds={rounds} repeats={repeats}")
        models = tuple(args.models.split(","))
        try:
            results["net"] = bench_net(args.batch, device, rounds, repeats, args.compile, args.warmup, models)
        except ValueError as error:  # a bad --models, --batch, --rounds ...: one line, exit status 2
            parser.error(str(error))
        print(format_net_table(results["net"]))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
