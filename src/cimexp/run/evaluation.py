"""What an evaluation run measures and records: one validation pass, the cache of clean accuracies shared by the
jobs of a sweep, the ``evaluate`` record of ``results.json`` and its one-line summary."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from cimexp.cim import CostModel, VariationLevel, cim_summary
from cimexp.results import METRICS, make_record
from cimexp.run.build import (
    TrainedCheckpoint,
    cim_settings,
    example_input,
    resolve_checkpoint,
    schedule_summary,
)
from cimexp.run.callbacks import QATSchedule
from cimexp.run.classifier import ImageClassifier
from cimexp.run.config import adc_errors
from cimexp.run.provenance import run_name, sweep_group

_CACHE_IGNORED_DATA_KEYS = ("batch_size", "eval_batch_size", "num_workers", "download", "augment", "train_subset")
"""Data settings that cannot change the clean accuracy (CIM layers in eval mode are batch-independent)."""


def validate_metrics(
    trainer: L.Trainer, module: ImageClassifier, datamodule: L.LightningDataModule
) -> dict[str, float]:
    """One validation pass: the metrics of :data:`cimexp.results.METRICS`."""
    (logged,) = trainer.validate(module, datamodule=datamodule, verbose=False)
    return {name: float(logged[name]) for name in METRICS}


def checkpoint_file(cfg: DictConfig) -> Path | None:
    """The checkpoint file ``cfg.ckpt`` names (:func:`resolve_checkpoint`); ``None`` when it names none."""
    if OmegaConf.is_missing(cfg, "ckpt") or cfg.ckpt is None:
        return None
    try:
        return resolve_checkpoint(cfg.ckpt)
    except FileNotFoundError:
        return None


def clean_cache_file(cfg: DictConfig, ckpt: Path) -> tuple[Path, dict[str, Any]] | None:
    """``(file, key)`` of the cached clean metrics of ``ckpt`` on the configured evaluation data; ``None`` when
    caching is off. The key holds the checkpoint file's identity (path, size, modification time), the data settings
    that choose the images, the trainer settings that change the arithmetic or the number of batches, and the
    metric names."""
    if cfg.get("clean_cache_dir") is None:
        return None
    stat = ckpt.stat()
    data = OmegaConf.to_container(cfg.data, resolve=True)
    key = {
        "ckpt": str(ckpt.resolve()),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "data": {k: v for k, v in data.items() if k not in _CACHE_IGNORED_DATA_KEYS},
        "trainer": {k: cfg.trainer.get(k) for k in ("accelerator", "precision", "limit_val_batches")},
        "metrics": list(METRICS),  # entries cached under other metric names are computed again
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(cfg.clean_cache_dir) / f"{ckpt.stem}-{digest}.json", key


def read_clean_cache(cache: tuple[Path, dict[str, Any]] | None) -> dict[str, float] | None:
    if cache is None:
        return None
    path, key = cache
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return stored["clean"] if stored.get("key") == key else None


def evaluate_record(
    cfg: DictConfig,
    checkpoint: TrainedCheckpoint,
    net: torch.nn.Module,
    datamodule: L.LightningDataModule,
    clean: dict[str, float],
    final: dict[str, float],
    wall_time_s: float,
    *,
    hashed: dict[str, Any],
) -> dict[str, Any]:
    """The content of results.json (an ``evaluate`` record of :mod:`cimexp.results`; ``hashed``: the run's
    :func:`cimexp.results.hashed_config`)."""
    hydra_cfg = HydraConfig.get() if HydraConfig.initialized() else None
    config = checkpoint.config
    schedule = instantiate(config["schedule"])
    if isinstance(schedule, QATSchedule) and schedule.state_key in checkpoint.callback_states:
        schedule.load_state_dict(checkpoint.callback_states[schedule.state_key])
    train_results = checkpoint.train_results
    cim = cim_settings(config, net)
    return make_record(
        "evaluate",
        "finished",
        hashed,
        run_name=run_name(),
        sweep_group=sweep_group(),
        run_dir=str(Path(cfg.paths.output_dir).resolve()),
        overrides=list(hydra_cfg.overrides.task) if hydra_cfg else [],
        ckpt=str(checkpoint.path.resolve()),
        cim=cim,
        schedule=schedule_summary(schedule),
        model=(train_results or {}).get("model") or config["model"]["_target_"].rpartition(".")[2],
        data=hydra_cfg.runtime.choices.get("data", cfg.data._target_) if hydra_cfg else cfg.data._target_,
        seed=config.get("seed"),
        variation={
            "sigma": float(cfg.variation.sigma),
            "seed": int(cfg.variation.seed),
            "level": VariationLevel.parse(cfg.variation.level).value,
        },
        adc_errors=adc_errors(cfg.adc).to_dict(),
        clean=clean,
        final=final,
        cim_summary=cim_summary(net, example_input(datamodule, net), CostModel.from_config(cfg.cost))
        if cim is not None
        else None,
        train_results=train_results,
        wall_time_s=wall_time_s,
    )


def flat_metrics(results: dict[str, Any]) -> dict[str, float]:
    return {f"{part}/{k}": v for part in ("clean", "final") for k, v in results[part].items()}


def evaluate_summary_line(results: dict[str, Any]) -> str:
    cim = results["cim"]
    setting = "float" if cim is None else f"w:{cim['weight_granularity']}/p:{cim['psum_granularity']}"
    if cim is not None and not cim["psum_quant"]:
        setting += " (no psum quant)"
    variation = results["variation"]
    return (
        f"evaluate {results['model']}/{results['data']} {setting} | "
        f"clean val/acc {100 * results['clean']['val/acc']:.2f}% | sigma {variation['sigma']:g} ({variation['level']}) "
        f"seed {variation['seed']}{_errors_text(results['adc_errors'])}: val/acc "
        f"{100 * results['final']['val/acc']:.2f}% | "
        f"{results['run_dir']}/results.json"
    )


def _errors_text(errors: dict[str, Any]) -> str:
    """`` adc noise 0.5 offset 0.2`` for the non-zero ADC errors, empty for ideal ADCs."""
    names = {"noise_lsb": "noise", "offset_lsb": "offset", "gain_sigma": "gain", "dnl_lsb": "dnl"}
    parts = [f"{short} {errors[key]:g}" for key, short in names.items() if errors[key]]
    return f" adc {' '.join(parts)}" if parts else ""
