"""Post-training calibration table (no training): ``python -m cimexp.post_training``.

A float checkpoint (``model.init_from``) is converted to CIM layers, its step sizes are calibrated on training
batches (``cimexp.cim.calibrate``; ``calibration.*`` sets the activation method, the percentile, the batches and
the optional BatchNorm re-estimation) and its top-1 accuracy is measured on the evaluation split (the test split),
for every point of ``grid``: weight granularity x partial-sum granularity x ADC bits x weight method x partial-sum
method x calibration draw (``conf/post_training.yaml``; draw ``d`` calibrates on the first batches of training epoch
``d``, so several draws give each point a mean and a confidence interval)::

    python -m cimexp.post_training                                    # shipped float checkpoint, all 10,000 images
    python -m cimexp.post_training model.init_from=<ckpt> data.val_subset=2000 calibration.bn_batches=4
    python -m cimexp.post_training grid.adc_bits=[3] grid.weight_methods=[max] grid.psum_methods=[percentile]
    python -m cimexp.post_training grid.draws=[0,1,2]                 # three calibration draws: means and CIs

Every finished point is appended to ``<out_dir>/points.csv`` (:data:`COLUMNS`) and ``<out_dir>/table.md`` is
rewritten from it, so a stopped run loses at most the point in progress. A relaunch skips the points that points.csv
already holds for the same setting: a hash of the checkpoint file's content and of every setting that can change a
number (:func:`cimexp.run.post_training.setting`). A grown grid computes only its new points; a changed setting
adds a new section.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from cimexp.cim import Calibration
from cimexp.cim.vocabulary import FLOAT
from cimexp.files import exclusive
from cimexp.report.post_training import (
    LEGACY_FILE,
    LOCK_FILE,
    POINT_KEY,
    append_point,
    point_keys,
    read_points,
    write_table,
)
from cimexp.run.build import build_net
from cimexp.run.classifier import calibrate_network
from cimexp.run.config import calibration_settings, use_compile_cache, validate_once
from cimexp.run.entry import hydra_entry
from cimexp.run.post_training import (
    calibration_batches,
    float_net,
    grid_points,
    point_config,
    setting,
    setting_hash,
    top1_accuracy,
    validate_post_training,
)

log = logging.getLogger("cimexp.post_training")


def post_training(cfg: DictConfig) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Compute the missing points of ``cfg.grid`` (see the module docstring); update points.csv and table.md.

    Args:
        cfg: a config composed from ``conf/post_training.yaml``.

    Returns:
        ``(rows, info)``: this setting's rows of points.csv in grid order (float first), and ``{"computed": points
        computed by this call, "csv": path, "table": path}``.
    """
    validate_once(validate_post_training, cfg)
    torch.manual_seed(cfg.seed)
    out_dir = Path(cfg.out_dir)
    csv_path, table_path = out_dir / "points.csv", out_dir / "table.md"
    if (out_dir / LEGACY_FILE).is_file() and not csv_path.exists():  # written by 0.1
        os.replace(out_dir / LEGACY_FILE, csv_path)
        log.warning("post-training: %s renamed %s (its name before 0.2)", out_dir / LEGACY_FILE, csv_path.name)
    read_points(csv_path)  # a points.csv of another version fails here, before any work
    settings_hash = setting_hash(setting(cfg))
    methods = calibration_settings(cfg.calibration)
    calibration: Calibration = methods["calibration"]
    device = torch.device(cfg.device)

    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    n_batches = max(methods["calibration_batches"], methods["bn_batches"])
    batches: dict[str, list[torch.Tensor]] = {}  # per draw, drawn when first needed

    def draw_batches(draw: str) -> list[torch.Tensor]:
        if draw not in batches:
            batches[draw] = [b.to(device) for b in calibration_batches(datamodule, int(draw), n_batches)]
        return batches[draw]

    first = draw_batches(str(cfg.grid.draws[0]))
    n_images = [sum(len(b) for b in first[:n]) for n in (methods["calibration_batches"], methods["bn_batches"])]
    common = {
        "setting": settings_hash,
        "ckpt": Path(cfg.model.init_from).name,
        "data": getattr(datamodule, "name", type(datamodule).__name__),
        "val_images": str(len(datamodule.val_set)),
        "w_bits": str(cfg.quant.w_bits),
        "a_bits": str(cfg.quant.a_bits),
        "cell_bits": str(cfg.cell.bits),
        "array_size": str(cfg.array.size),
        "act_method": calibration.act.value,
        "percentile": f"{calibration.percentile:g}",
        "calibration_images": str(n_images[0]),
        "bn_images": str(n_images[1]),
    }

    computed = 0
    points = list(grid_points(cfg))
    for i, (adc_bits, weight, psum, weight_method, psum_method, draw) in enumerate(points):
        key = (settings_hash, adc_bits, weight, psum, weight_method, psum_method, draw)
        if key in point_keys(read_points(csv_path)):  # computed before, or meanwhile by a concurrent run
            continue
        start = time.perf_counter()
        if weight == FLOAT:
            net = float_net(cfg, datamodule.num_classes).to(device)
        else:
            net = build_net(point_config(cfg, weight, psum, int(adc_bits)), datamodule.num_classes).to(device)
            method = Calibration(weight_method, calibration.act, psum_method, calibration.percentile)
            calibrate_network(net, draw_batches(draw), method, methods["calibration_batches"], methods["bn_batches"])
        top1 = top1_accuracy(net, datamodule.val_dataloader(), device)
        row = {
            **common,
            **dict(zip(POINT_KEY[1:], key[1:], strict=True)),
            "top1": f"{100 * top1:.2f}",
            "seconds": f"{time.perf_counter() - start:.1f}",
        }
        append_point(out_dir, row)
        computed += 1
        scheme = (
            "float"
            if weight == FLOAT
            else f"adc {adc_bits} w:{weight}/p:{psum} {weight_method}/{psum_method} draw {draw}"
        )
        log.info("post-training %s: top-1 %s%% (%s s) [%d/%d]", scheme, row["top1"], row["seconds"], i + 1, len(points))
    with exclusive(out_dir / LOCK_FILE):
        rows = read_points(csv_path)
        write_table(table_path, rows)
    log.info("post-training: %d points computed, %d found; %s", computed, len(points) - computed, table_path)
    done = point_keys(rows)
    info = {"computed": computed, "csv": csv_path, "table": table_path}
    return [done[(settings_hash, *point)] for point in points], info


def job(cfg: DictConfig) -> None:
    """The Hydra job: fill in the post-training table."""
    use_compile_cache(cfg.paths.get("compile_cache"))
    post_training(cfg)


main = hydra_entry("post_training", job, validate_post_training, prog="cimexp-post-training")

if __name__ == "__main__":
    main()
