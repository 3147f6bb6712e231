"""Evaluate a trained network, clean and under memory-cell variation: ``python -m cimexp.evaluate ckpt=<path>``.

``main`` is a thin Hydra entry point (``conf/evaluate.yaml``) over :func:`evaluate`, a plain function of a composed
config. It loads a training checkpoint of this platform, rebuilds the network from the resolved training config
stored in the checkpoint (``ImageClassifier`` saves it as the ``config`` hyperparameter), validates it on the
evaluation split (= the test split, as in the paper) without variation ("clean") and inside
``cell_variation(model, sigma, seed, level)`` with the configured ADC non-idealities ``adc.*`` ("final"), and writes
``results.json`` into its own run directory::

    python -m cimexp.evaluate ckpt=logs/train/runs/<run>/checkpoints/last.ckpt variation.sigma=0.1 variation.seed=0
    python -m cimexp.evaluate -m ckpt=<run dir> variation.sigma=0,0.1,0.2 variation.seed=0,1,2
    python -m cimexp.evaluate -m sweep=variation/quick       # the paper's Fig. 10 (experiments/sweep/variation/)
    python -m cimexp.evaluate -m ckpt=<run dir> adc.noise_lsb=0,0.5,1   # ADC noise at evaluation time
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf

from cimexp.cim import CostModel, VariationLevel, cell_variation, cim_summary, set_adc_errors
from cimexp.files import atomic_write_json
from cimexp.results import METRICS, hashed_config, make_record, reusable_results
from cimexp.run.build import (
    TrainedCheckpoint,
    build_trained_net,
    cim_settings,
    example_input,
    load_checkpoint,
    resolve_checkpoint,
    schedule_summary,
)
from cimexp.run.callbacks import QATSchedule
from cimexp.run.classifier import ImageClassifier
from cimexp.run.config import adc_errors, validate_evaluate
from cimexp.run.entry import hydra_entry
from cimexp.run.loggers import finish_wandb
from cimexp.run.provenance import git_state, resolved_config, run_name, sweep_group

log = logging.getLogger("cimexp.evaluate")

_CACHE_IGNORED_DATA_KEYS = ("batch_size", "eval_batch_size", "num_workers", "download", "augment", "train_subset")
"""Data settings that cannot change the clean accuracy (CIM layers in eval mode are batch-independent)."""


def evaluate(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """Evaluate ``cfg.ckpt`` clean and under cell variation; write results.json, the resolved config and git state.

    A run directory that already holds finished evaluation results of the same config (the checkpoint file by its
    content) is not evaluated again (re-launched sweeps skip their finished jobs); one of another config is refused
    (:func:`cimexp.results.reusable_results`). The clean accuracy is read from ``cfg.clean_cache_dir`` when an
    earlier job computed it for the same checkpoint file and evaluation data.

    Args:
        cfg: a config composed from ``conf/evaluate.yaml``; Hydra's runtime config must be set.

    Returns:
        ``(metrics, objects)``: ``clean/<metric>`` and ``final/<metric>`` (under variation) for the metrics of
        :data:`METRICS`, and the objects built (``cfg``, ``results``, and unless skipped ``checkpoint``,
        ``datamodule``, ``module``, ``trainer``, ``loggers``).
    """
    output_dir = Path(cfg.paths.output_dir)
    config = resolved_config(cfg)
    files = {"ckpt": _checkpoint_file(cfg)}
    hashed = hashed_config(config, files)
    done = reusable_results(output_dir, "evaluate", config, files)
    if done is not None:
        log.info("finished before, not evaluated again: %s/results.json", output_dir)
        return _flat_metrics(done), {"cfg": cfg, "results": done}

    validate_evaluate(cfg)
    start = time.perf_counter()
    checkpoint = load_checkpoint(cfg.ckpt)
    train_status = (checkpoint.train_results or {}).get("status", "finished")
    if train_status != "finished":
        log.warning("evaluating a checkpoint of an unfinished training run (status %r)", train_status)
    datamodule = instantiate(cfg.data)
    trained_on = checkpoint.config["data"]["_target_"]
    if trained_on != cfg.data._target_:
        raise ValueError(
            f"{str(checkpoint.path)!r} was trained on {trained_on} but data={cfg.data._target_}; "
            "evaluate on the training dataset (e.g. data=cifar100 for a CIFAR-100 checkpoint)"
        )
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(config))
    atomic_write_json(output_dir / "git.json", git_state())

    net = build_trained_net(checkpoint, datamodule.num_classes)
    module = ImageClassifier(net, optimizer=None, num_classes=datamodule.num_classes)
    trainer: L.Trainer = instantiate(cfg.trainer, logger=False, callbacks=[])
    loggers: list[Logger] = list(instantiate(cfg.logger, _convert_="all").values()) if cfg.get("logger") else []
    sigma, variation_seed = float(cfg.variation.sigma), int(cfg.variation.seed)
    try:
        cache = _clean_cache_file(cfg, checkpoint.path)
        clean = _read_cache(cache)
        if clean is None:
            clean = _validate(trainer, module, datamodule)
            if cache is not None:
                atomic_write_json(cache[0], {"key": cache[1], "clean": clean})
        errors = adc_errors(cfg.adc)
        if sigma == 0 and errors.ideal:  # the clean chip: nothing to evaluate again
            final = dict(clean)
        else:
            set_adc_errors(net, errors)
            torch.manual_seed(int(cfg.adc.seed))  # the per-conversion ADC noise of this evaluation
            with cell_variation(net, sigma, variation_seed, cfg.variation.level):
                final = _validate(trainer, module, datamodule)
            set_adc_errors(net, None)

        results = _results(cfg, checkpoint, net, datamodule, clean, final, time.perf_counter() - start, hashed=hashed)
        atomic_write_json(output_dir / "results.json", results)
        metrics = _flat_metrics(results)
        for logger in loggers:
            logger.log_hyperparams(config)
            logger.log_metrics(metrics)
            logger.save()
        log.info(_summary_line(results))
    finally:
        finish_wandb(loggers)

    objects = {
        "cfg": cfg,
        "checkpoint": checkpoint,
        "datamodule": datamodule,
        "module": module,
        "trainer": trainer,
        "loggers": loggers,
        "results": results,
    }
    return metrics, objects


def _validate(trainer: L.Trainer, module: ImageClassifier, datamodule: L.LightningDataModule) -> dict[str, float]:
    """One validation pass: the metrics of :data:`cimexp.results.METRICS`."""
    (logged,) = trainer.validate(module, datamodule=datamodule, verbose=False)
    return {name: float(logged[name]) for name in METRICS}


def _checkpoint_file(cfg: DictConfig) -> Path | None:
    """The checkpoint file ``cfg.ckpt`` names (:func:`resolve_checkpoint`); ``None`` when it names none."""
    if OmegaConf.is_missing(cfg, "ckpt") or cfg.ckpt is None:
        return None
    try:
        return resolve_checkpoint(cfg.ckpt)
    except FileNotFoundError:
        return None


def _clean_cache_file(cfg: DictConfig, ckpt: Path) -> tuple[Path, dict[str, Any]] | None:
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


def _read_cache(cache: tuple[Path, dict[str, Any]] | None) -> dict[str, float] | None:
    if cache is None:
        return None
    path, key = cache
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return stored["clean"] if stored.get("key") == key else None


def _results(
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


def _flat_metrics(results: dict[str, Any]) -> dict[str, float]:
    return {f"{part}/{k}": v for part in ("clean", "final") for k, v in results[part].items()}


def _summary_line(results: dict[str, Any]) -> str:
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


def job(cfg: DictConfig) -> float | None:
    """The Hydra job: evaluate, and return ``cfg.optimized_metric`` (default ``final/val/acc``) for sweepers."""
    metrics, _ = evaluate(cfg)
    return metrics.get(cfg.optimized_metric)


main = hydra_entry("evaluate", job, validate_evaluate, prog="cimexp-evaluate")

if __name__ == "__main__":
    main()
