"""Post-training calibration table (no training): ``python -m cimexp.post_training``.

A float checkpoint (``model.init_from``) is converted to CIM layers, its step sizes are calibrated on training
batches (``cimexp.cim.calibrate``; ``calibration.*`` sets the activation method, the percentile, the batches and
the optional BatchNorm re-estimation) and its top-1 accuracy is measured on the evaluation split (the test split),
for every cell of ``grid``: weight granularity x partial-sum granularity x ADC bits x weight method x partial-sum
method (``conf/post_training.yaml``)::

    python -m cimexp.post_training                                    # shipped float checkpoint, all 10,000 images
    python -m cimexp.post_training model.init_from=<ckpt> data.val_subset=2000 calibration.bn_batches=4
    python -m cimexp.post_training grid.adc_bits=[3] grid.weight_methods=[max] grid.psum_methods=[percentile]

Every finished cell is appended to ``<out_dir>/cells.csv`` (:data:`COLUMNS`) and ``<out_dir>/table.md`` is
rewritten from it, so a stopped run loses at most the cell in progress. A relaunch skips the cells that cells.csv
already holds for the same setting: a hash of the checkpoint file's content and of every setting that can change a
number (:func:`setting`). A grown grid computes only its new cells; a changed setting adds a new section.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from cimexp.cim import Calibration, Granularity, StepInit
from cimexp.cim.options import WEIGHT_STEP_INITS, check_bits
from cimexp.cim.quant import KERNEL_MODES
from cimexp.cim.vocabulary import FLOAT
from cimexp.files import exclusive
from cimexp.report.post_training import (
    CELL_KEY,
    LOCK_FILE,
    append_cell,
    cell_keys,
    read_cells,
    write_table,
)
from cimexp.results import file_sha256
from cimexp.run.build import build_net
from cimexp.run.classifier import calibrate_network
from cimexp.run.config import calibration_settings, is_cim_factory, layer_factory, layer_settings
from cimexp.run.entry import hydra_entry

log = logging.getLogger("cimexp.post_training")
_GRID_CIMCELL_KEYS = ("weight_granularity", "psum_granularity", "adc_bits")
"""Keys of the ``cim`` node that every cell sets from the grid."""
_SETTING_IGNORED_DATACELL_KEYS = ("data_dir", "eval_batch_size", "num_workers", "download")
"""Data settings that cannot change a number (CIM layers in eval mode are batch-independent)."""


def validate_config(cfg: DictConfig) -> None:
    """Check every setting before any data is loaded or network built.

    Raises:
        ValueError: a bad value (the message names it and the valid choices), or a float ``cim`` factory.
        FileNotFoundError: ``model.init_from`` points nowhere.
    """
    grid = cfg.grid
    for key in ("weight", "psum"):
        values = _nonempty_list(grid, key)
        for value in values:
            Granularity.parse(value, f"grid.{key} entry")
    for bits in _nonempty_list(grid, "adc_bits"):
        check_bits("grid.adc_bits entry", bits)
    calibration_settings(cfg.calibration)
    for key, allowed in (("weight_methods", WEIGHT_STEP_INITS), ("psum_methods", tuple(StepInit))):
        for method in _nonempty_list(grid, key):
            if method not in [m.value for m in allowed]:
                choices = ", ".join(m.value for m in allowed)
                raise ValueError(f"invalid grid.{key} entry {method!r}; valid choices: {choices}")
    kernels = cfg.model.get("kernels", "auto")
    if kernels not in KERNEL_MODES:
        raise ValueError(f"invalid model.kernels={kernels!r}; valid choices: {', '.join(KERNEL_MODES)}")
    try:
        torch.device(cfg.device)
    except RuntimeError as error:
        raise ValueError(f"invalid device={cfg.device!r}; valid: cpu, cuda, cuda:<index>") from error
    if not is_cim_factory(cfg.cim):
        raise ValueError(
            f"the post-training table needs CIM layers; cim={cfg.cim.get('_target_')!r} builds none (use cim=default)"
        )
    for bits in grid.adc_bits:
        try:
            layer_factory(_cell_config(cfg, "column", "column", bits))(8, 8, 3, padding=1)
        except (ValueError, TypeError) as error:
            raise ValueError(f"invalid CIM layer settings (the `cim` config node, adc_bits={bits}): {error}") from error
    init_from = cfg.model.get("init_from")
    if init_from is None or not Path(init_from).is_file():
        raise FileNotFoundError(
            f"model.init_from={init_from!r} does not exist. Point it at a float checkpoint (a Lightning .ckpt of "
            "`python -m cimexp.train cim=none ...` or a state_dict), or set $CIMEXPFLOAT_CKPT."
        )


def _nonempty_list(node: DictConfig, key: str) -> list[Any]:
    values = node.get(key)
    if not OmegaConf.is_list(values) or len(values) == 0:
        raise ValueError(f"invalid grid.{key}={values!r}; valid values: a non-empty list, e.g. grid.{key}=[...]")
    return list(values)


def setting(cfg: DictConfig) -> dict[str, Any]:
    """Everything of ``cfg`` that can change a cell's number, apart from the grid coordinates: the float
    checkpoint's content hash, the model (without how it runs), the CIM layer settings, the data (without
    paths, evaluation batch size and loader settings), the activation method, percentile and batches of
    ``calibration``, and the seed. Cells whose settings hash alike are the same measurement."""
    model = OmegaConf.to_container(cfg.model, resolve=True)
    cim = layer_settings(cfg)
    data = OmegaConf.to_container(cfg.data, resolve=True)
    calibration = OmegaConf.to_container(cfg.calibration, resolve=True)
    return {
        "ckpt_sha256": file_sha256(model.pop("init_from")),
        "model": {k: v for k, v in model.items() if k not in ("compile", "compile_mode", "kernels")},
        "cim": {k: v for k, v in cim.items() if k not in _GRID_CIMCELL_KEYS},
        "data": {k: v for k, v in data.items() if k not in _SETTING_IGNORED_DATACELL_KEYS},
        "calibration": {k: v for k, v in calibration.items() if k not in ("weight", "psum")},
        "seed": cfg.seed,
    }


def _setting_hash(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def _cell_config(cfg: DictConfig, weight: str, psum: str, adc_bits: int) -> DictConfig:
    """A copy of ``cfg`` whose CIM layers have these granularities and ADC bits."""
    cell = copy.deepcopy(cfg)
    with open_dict(cell):
        cell.granularity.weight = weight
        cell.granularity.psum = psum
        cell.adc.bits = adc_bits
    return cell


def post_training(cfg: DictConfig) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Compute the missing cells of ``cfg.grid`` (see the module docstring); update cells.csv and table.md.

    Args:
        cfg: a config composed from ``conf/post_training.yaml``.

    Returns:
        ``(rows, info)``: this setting's rows of cells.csv in grid order (float first), and ``{"computed": cells
        computed by this call, "csv": path, "table": path}``.
    """
    validate_config(cfg)
    torch.manual_seed(cfg.seed)
    out_dir = Path(cfg.out_dir)
    csv_path, table_path = out_dir / "cells.csv", out_dir / "table.md"
    read_cells(csv_path)  # a cells.csv of another version fails here, before any work
    settings_hash = _setting_hash(setting(cfg))
    methods = calibration_settings(cfg.calibration)
    calibration: Calibration = methods["calibration"]
    device = torch.device(cfg.device)

    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    n_batches = max(methods["calibration_batches"], methods["bn_batches"])
    batches = [images.to(device) for images, _ in itertools.islice(datamodule.train_dataloader(), n_batches)]
    n_images = [sum(len(b) for b in batches[:n]) for n in (methods["calibration_batches"], methods["bn_batches"])]
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
    cells = list(_cells(cfg))
    for i, (adc_bits, weight, psum, weight_method, psum_method) in enumerate(cells):
        key = (settings_hash, adc_bits, weight, psum, weight_method, psum_method)
        if key in cell_keys(read_cells(csv_path)):  # computed before, or meanwhile by a concurrent run
            continue
        start = time.perf_counter()
        if weight == FLOAT:
            net = _float_net(cfg, datamodule.num_classes).to(device)
        else:
            net = build_net(_cell_config(cfg, weight, psum, int(adc_bits)), datamodule.num_classes).to(device)
            method = Calibration(weight_method, calibration.act, psum_method, calibration.percentile)
            calibrate_network(net, batches, method, methods["calibration_batches"], methods["bn_batches"])
        top1 = top1_accuracy(net, datamodule.val_dataloader(), device)
        row = {
            **common,
            **dict(zip(CELL_KEY[1:], key[1:], strict=True)),
            "top1": f"{100 * top1:.2f}",
            "seconds": f"{time.perf_counter() - start:.1f}",
        }
        append_cell(out_dir, row)
        computed += 1
        scheme = "float" if weight == FLOAT else f"adc {adc_bits} w:{weight}/p:{psum} {weight_method}/{psum_method}"
        log.info("post-training %s: top-1 %s%% (%s s) [%d/%d]", scheme, row["top1"], row["seconds"], i + 1, len(cells))
    with exclusive(out_dir / LOCK_FILE):
        rows = read_cells(csv_path)
        write_table(table_path, rows)
    log.info("post-training: %d cells computed, %d found; %s", computed, len(cells) - computed, table_path)
    done = cell_keys(rows)
    info = {"computed": computed, "csv": csv_path, "table": table_path}
    return [done[(settings_hash, *cell)] for cell in cells], info


def _cells(cfg: DictConfig) -> Iterator[tuple[str, str, str, str, str]]:
    """Grid coordinates ``(adc_bits, weight, psum, weight_method, psum_method)`` as strings (as in cells.csv),
    float first, then ADC bits by ADC bits in the order of ``grid``."""
    grid = cfg.grid
    yield "", FLOAT, FLOAT, "", ""
    for adc_bits, weight, psum, weight_method, psum_method in itertools.product(
        grid.adc_bits, grid.weight, grid.psum, grid.weight_methods, grid.psum_methods
    ):
        yield (
            str(adc_bits),
            Granularity.parse(weight).name.lower(),
            Granularity.parse(psum).name.lower(),
            Calibration(weight=weight_method).weight.value,
            Calibration(psum=psum_method).psum.value,
        )


def _float_net(cfg: DictConfig, num_classes: int) -> nn.Module:
    """The float network of the checkpoint (plain ``nn.Conv2d`` layers), the reference row."""
    float_cfg = copy.deepcopy(cfg)
    with open_dict(float_cfg):
        float_cfg.cim = OmegaConf.create({"_target_": "torch.nn.Conv2d", "_partial_": True})
    return build_net(float_cfg, num_classes)


@torch.no_grad()
def top1_accuracy(net: nn.Module, loader: torch.utils.data.DataLoader, device: torch.device) -> float:
    """Top-1 accuracy (a fraction) of ``net`` in eval mode over ``loader``'s ``(images, labels)`` batches."""
    net.eval()
    correct = total = 0
    for images, labels in loader:
        logits = net(images.to(device))
        correct += int((logits.argmax(1) == labels.to(device)).sum())
        total += len(labels)
    return correct / total


def job(cfg: DictConfig) -> None:
    """The Hydra job: fill in the post-training table."""
    post_training(cfg)


main = hydra_entry("post_training", job, validate_config, prog="cimexp-post-training")

if __name__ == "__main__":
    main()
