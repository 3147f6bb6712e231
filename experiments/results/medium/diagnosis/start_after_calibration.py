"""Top-1 of a training run's network right after its step calibration, before any training step: is a run that
ends near chance broken from its start, or does training break it?

    python experiments/results/medium/diagnosis/start_after_calibration.py <run dir>... [--images N]

For each run directory (a finished or unfinished `cimexp-train` job), its network is built from its own
config_resolved.yaml (the float checkpoint it fine-tunes included), its steps are calibrated on the first training
batch of its data seed as the run's calibration does, and the top-1 is measured on a class-balanced subset of N
test images (default 1,000). Needs the run's data (`CIMEXP_DATA`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from cimexp.run.build import build_net
from cimexp.run.classifier import calibrate_network
from cimexp.run.config import calibration_settings
from cimexp.run.post_training import calibration_batches, top1_accuracy


def start_accuracy(run_dir: Path, images: int) -> float:
    cfg = OmegaConf.load(run_dir / "config_resolved.yaml")
    cfg.data.val_subset = images
    torch.manual_seed(cfg.seed)
    net = build_net(cfg, 10)
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    methods = calibration_settings(cfg.calibration)
    batches = calibration_batches(datamodule, 0, methods["calibration_batches"])  # epoch 0's first, as the run
    calibrate_network(net, batches, methods["calibration"], methods["calibration_batches"], 0)
    return top1_accuracy(net, datamodule.val_dataloader(), torch.device("cpu"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--images", type=int, default=1000)
    args = parser.parse_args()
    for run in args.runs:
        top1 = 100 * start_accuracy(run, args.images)
        print(f"{run.name}: top-1 after calibration {top1:.1f}% ({args.images} images)")


if __name__ == "__main__":
    main()
