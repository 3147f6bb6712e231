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

import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf

from cimexp.cim import cell_variation, set_adc_errors
from cimexp.files import atomic_write_json
from cimexp.results import hashed_config, reusable_results
from cimexp.run.build import (
    build_trained_net,
    load_checkpoint,
)
from cimexp.run.classifier import ImageClassifier
from cimexp.run.config import adc_errors, use_compile_cache, validate_evaluate, validate_once
from cimexp.run.entry import hydra_entry
from cimexp.run.evaluation import (
    checkpoint_file,
    clean_cache_file,
    evaluate_record,
    evaluate_summary_line,
    flat_metrics,
    read_clean_cache,
    validate_metrics,
)
from cimexp.run.loggers import finish_wandb
from cimexp.run.provenance import git_state, resolved_config

log = logging.getLogger("cimexp.evaluate")


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
    files = {"ckpt": checkpoint_file(cfg)}
    hashed = hashed_config(config, files)
    done = reusable_results(output_dir, "evaluate", config, files)
    if done is not None:
        log.info("finished before, not evaluated again: %s/results.json", output_dir)
        return flat_metrics(done), {"cfg": cfg, "results": done}

    validate_once(validate_evaluate, cfg)
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
        cache = clean_cache_file(cfg, checkpoint.path)
        clean = read_clean_cache(cache)
        if clean is None:
            clean = validate_metrics(trainer, module, datamodule)
            if cache is not None:
                atomic_write_json(cache[0], {"key": cache[1], "clean": clean})
        errors = adc_errors(cfg.adc)
        if sigma == 0 and errors.ideal:  # the clean chip: nothing to evaluate again
            final = dict(clean)
        else:
            set_adc_errors(net, errors)
            torch.manual_seed(int(cfg.adc.seed))  # the per-conversion ADC noise of this evaluation
            with cell_variation(net, sigma, variation_seed, cfg.variation.level):
                final = validate_metrics(trainer, module, datamodule)
            set_adc_errors(net, None)

        results = evaluate_record(
            cfg, checkpoint, net, datamodule, clean, final, time.perf_counter() - start, hashed=hashed
        )
        atomic_write_json(output_dir / "results.json", results)
        metrics = flat_metrics(results)
        for logger in loggers:
            logger.log_hyperparams(config)
            logger.log_metrics(metrics)
            logger.save()
        log.info(evaluate_summary_line(results))
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


def job(cfg: DictConfig) -> float | None:
    """The Hydra job: evaluate, and return ``cfg.optimized_metric`` (default ``final/val/acc``) for sweepers."""
    use_compile_cache(cfg.paths.get("compile_cache"))
    metrics, _ = evaluate(cfg)
    return metrics.get(cfg.optimized_metric)


main = hydra_entry("evaluate", job, validate_evaluate, prog="cimexp-evaluate")

if __name__ == "__main__":
    main()
