"""What ``cimexp-post-training`` computes a point of its table from: the settings check, the setting a point's
number depends on (and its hash, the key under which points.csv stores it), the grid's points in order, a point's
config, and the top-1 accuracy of a network.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from cimexp.cim import Calibration, Granularity, StepInit
from cimexp.cim.options import WEIGHT_STEP_INITS, check_bits
from cimexp.cim.quant import KERNEL_MODES
from cimexp.cim.vocabulary import FLOAT
from cimexp.results import file_sha256
from cimexp.run.build import build_net
from cimexp.run.config import calibration_settings, is_cim_factory, layer_factory, layer_settings

_GRID_CIMPOINT_KEYS = ("weight_granularity", "psum_granularity", "adc_bits")
"""Keys of the ``cim`` node that every point sets from the grid."""
_SETTING_IGNORED_DATAPOINT_KEYS = ("data_dir", "eval_batch_size", "num_workers", "download")
"""Data settings that cannot change a number (CIM layers in eval mode are batch-independent)."""


def validate_post_training(cfg: DictConfig) -> None:
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
    draws = _nonempty_list(grid, "draws")
    for draw in draws:
        if isinstance(draw, bool) or not isinstance(draw, int) or draw < 0:
            raise ValueError(f"invalid grid.draws entry {draw!r}; valid values: integers >= 0, e.g. grid.draws=[0,1,2]")
    if len(set(draws)) != len(draws):
        raise ValueError(f"invalid grid.draws={draws}: a draw is listed twice; valid values: distinct integers >= 0")
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
    if not layer_settings(cfg).get("psum_quant", True):
        raise ValueError(
            "invalid granularity.psum_quant=false: every point of the table quantizes its partial sums at its "
            "grid.psum granularity with grid.adc_bits ADCs; valid: true (no *_nopsq granularity option)"
        )
    for bits in grid.adc_bits:
        try:
            layer_factory(point_config(cfg, "column", "column", bits))(8, 8, 3, padding=1)
        except (ValueError, TypeError) as error:
            raise ValueError(f"invalid CIM layer settings (the `cim` config node, adc_bits={bits}): {error}") from error
    init_from = cfg.model.get("init_from")
    if init_from is None or not Path(init_from).is_file():
        raise FileNotFoundError(
            f"model.init_from={init_from!r} does not exist. Point it at a float checkpoint (a Lightning .ckpt of "
            "`python -m cimexp.train cim=none ...` or a state_dict), or set $CIMEXP_FLOAT_CKPT."
        )


def _nonempty_list(node: DictConfig, key: str) -> list[Any]:
    values = node.get(key)
    if not OmegaConf.is_list(values) or len(values) == 0:
        raise ValueError(f"invalid grid.{key}={values!r}; valid values: a non-empty list, e.g. grid.{key}=[...]")
    return list(values)


def setting(cfg: DictConfig) -> dict[str, Any]:
    """Everything of ``cfg`` that can change a point's number, apart from the grid coordinates: the float
    checkpoint's content hash, the model (without how it runs), the CIM layer settings, the data (without
    paths, evaluation batch size and loader settings), the activation method, percentile and batches of
    ``calibration``, and the seed (the calibration draw is a coordinate of the point, not part of its setting). Points
    whose settings hash alike are the same measurement."""
    model = OmegaConf.to_container(cfg.model, resolve=True)
    cim = layer_settings(cfg)
    data = OmegaConf.to_container(cfg.data, resolve=True)
    calibration = OmegaConf.to_container(cfg.calibration, resolve=True)
    return {
        "ckpt_sha256": file_sha256(model.pop("init_from")),
        "model": {k: v for k, v in model.items() if k not in ("compile", "compile_mode", "kernels")},
        "cim": {k: v for k, v in cim.items() if k not in _GRID_CIMPOINT_KEYS},
        "data": {k: v for k, v in data.items() if k not in _SETTING_IGNORED_DATAPOINT_KEYS},
        "calibration": {k: v for k, v in calibration.items() if k not in ("weight", "psum")},
        "seed": cfg.seed,
    }


def setting_hash(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def point_config(cfg: DictConfig, weight: str, psum: str, adc_bits: int) -> DictConfig:
    """A copy of ``cfg`` whose CIM layers have these granularities and ADC bits."""
    point = copy.deepcopy(cfg)
    with open_dict(point):
        point.granularity.weight = weight
        point.granularity.psum = psum
        point.adc.bits = adc_bits
    return point


def grid_points(cfg: DictConfig) -> Iterator[tuple[str, str, str, str, str, str]]:
    """Grid coordinates ``(adc_bits, weight, psum, weight_method, psum_method, draw)`` as strings (as in
    points.csv): float first (no draw), then draw by draw (a stopped run has whole tables of its first draws) and
    ADC bits by ADC bits in the order of ``grid``."""
    grid = cfg.grid
    yield "", FLOAT, FLOAT, "", "", ""
    for draw, adc_bits, weight, psum, weight_method, psum_method in itertools.product(
        grid.draws, grid.adc_bits, grid.weight, grid.psum, grid.weight_methods, grid.psum_methods
    ):
        yield (
            str(adc_bits),
            Granularity.parse(weight).name.lower(),
            Granularity.parse(psum).name.lower(),
            Calibration(weight=weight_method).weight.value,
            Calibration(psum=psum_method).psum.value,
            str(draw),
        )


def calibration_batches(datamodule: Any, draw: int, count: int) -> list[torch.Tensor]:
    """The images of calibration draw ``draw``: the first ``count`` batches of the training loader's epoch ``draw``
    (its shuffle and augmentation are pure functions of the data seed and the epoch, so a draw is reproducible and
    draws differ; the evaluation images do not depend on it). Draw 0 is what cimexp 0.2 calibrated on."""
    loader = datamodule.train_dataloader()
    loader.sampler.set_epoch(draw)
    return [images for images, _ in itertools.islice(loader, count)]


def float_net(cfg: DictConfig, num_classes: int) -> nn.Module:
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
