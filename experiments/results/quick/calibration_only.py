"""Post-training quantization check (no fine-tuning): the shipped float ResNet-20 converted to CIM layers, steps
calibrated on one 128-image training batch (with BatchNorm on its float statistics), then the BatchNorm statistics
re-estimated on 512 training images through the quantized layers; top-1 on the first 2,000 test images.
Two tables, written to calibration_only.json:

- ``grid``: every weight x partial-sum granularity pair (W4A4, 2-bit cells, 4-bit ADC);
- ``dac_adc``: bit-serial inputs, column/column and layer/layer with dac_bits in {4, 2, 1} x adc_bits in {2, ..., 5}
  (the cycles vs ADC-bits trade-off; ADC cost per image from ``python -m cimexp.cost cim.dac_bits=.. adc=..bit``).

Run from the repository root with CIMEXP_DATA pointing at the CIFAR-10 npz files (default ../shared/data/cifar10):
    python experiments/results/quick/calibration_only.py          # ~45 min, two processes
"""

import itertools
import json
import multiprocessing
import os
from functools import partial
from pathlib import Path

import numpy as np
import torch

from cimexp.cim import CIMConv2d
from cimexp.models import load_float_weights, resnet20

DATA = Path(os.environ.get("CIMEXP_DATA", "../shared/data/cifar10"))
OUT = Path("experiments/results/quick/calibration_only.json")
MEAN = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
STD = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)


def images(split: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    arrays = np.load(DATA / f"{split}.npz")
    x = torch.tensor(arrays["images"][:n]).permute(0, 3, 1, 2).float() / 255
    return (x - MEAN) / STD, torch.tensor(arrays["labels"][:n])


def calibrated_accuracy(calibration: torch.Tensor, x: torch.Tensor, y: torch.Tensor, **cim: object) -> float:
    """Top-1 (%) on ``(x, y)`` of the float checkpoint with CIMConv2d(**cim) convs: steps set from the first 128
    images of ``calibration``, BatchNorm statistics re-estimated on all of it (cumulative average)."""
    net = resnet20(num_classes=10, conv_layer=partial(CIMConv2d, **cim))
    load_float_weights(net, "checkpoints/resnet20_cifar10_float.pt")
    norms = [module for module in net.modules() if isinstance(module, torch.nn.BatchNorm2d)]
    net.train()
    for norm in norms:
        norm.eval()  # the steps see the float network's activations
    with torch.no_grad():
        net(calibration[:128])
        net.eval()
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # cumulative average over the batches
            norm.train()
        for i in range(0, len(calibration), 128):
            net(calibration[i : i + 128])
        net.eval()
        correct = sum((net(x[i : i + 500]).argmax(1) == y[i : i + 500]).sum().item() for i in range(0, len(x), 500))
    return round(100 * correct / len(x), 2)


def main(jobs: int = 2) -> None:
    """Every configuration in its own process (``jobs`` at a time, one thread each); writes :data:`OUT`."""
    x, y = images("test", 2000)
    calibration, _ = images("train", 512)
    configs: dict[tuple[str, str], dict[str, object]] = {}
    for weight, psum in itertools.product(["layer", "array", "column"], ["layer", "array", "column", "none"]):
        psum_granularity = "layer" if psum == "none" else psum
        configs["grid", f"{weight}/{psum}"] = {
            "weight_granularity": weight,
            "psum_granularity": psum_granularity,
            "psum_quant": psum != "none",
        }
    for scheme, dac_bits, adc_bits in itertools.product(["column", "layer"], [4, 2, 1], [2, 3, 4, 5]):
        configs["dac_adc", f"{scheme}/{scheme} dac={dac_bits} adc={adc_bits}"] = {
            "weight_granularity": scheme,
            "psum_granularity": scheme,
            "dac_bits": dac_bits,
            "adc_bits": adc_bits,
        }
    out: dict[str, dict[str, float]] = {"grid": {}, "dac_adc": {}}
    with multiprocessing.get_context("fork").Pool(jobs, initializer=torch.set_num_threads, initargs=(1,)) as pool:
        work = partial(_accuracy, calibration, x, y)
        for (table, key), acc in zip(configs, pool.imap(work, configs.values()), strict=True):
            out[table][key] = acc
            print(table, key, acc, flush=True)
    OUT.write_text(json.dumps(out, indent=1) + "\n")


def _accuracy(calibration: torch.Tensor, x: torch.Tensor, y: torch.Tensor, cim: dict[str, object]) -> float:
    torch.manual_seed(0)
    return calibrated_accuracy(calibration, x, y, **cim)


if __name__ == "__main__":
    main()
