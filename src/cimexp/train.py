"""Train a (CIM) network: ``cimexp-train [group=option ...] [key=value ...]`` (or ``python -m cimexp.train``).

:func:`main` is the Hydra entry point (:func:`cimexp.run.entry.hydra_entry`: checks the command line before anything
runs) over :func:`train`, a plain function of a composed config that tests call directly. The configs ship in the
package (:mod:`cimexp.run.config`), so an installed wheel runs from any directory.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from lightning.fabric.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from cimexp.cim import set_adc_errors
from cimexp.files import atomic_write_json, readable_checkpoint, run_lock
from cimexp.results import hashed_config, reusable_results
from cimexp.run.build import build_net, data_files, find_callback
from cimexp.run.callbacks import ResultsWriter
from cimexp.run.classifier import ImageClassifier
from cimexp.run.config import adc_errors, check_training_run, use_compile_cache, validate_train
from cimexp.run.entry import hydra_entry
from cimexp.run.loggers import finish_wandb
from cimexp.run.provenance import git_state, resolved_config
from cimexp.run.resume import check_resume, resolve_ckpt_path, unfinished_checkpoint
from cimexp.run.summary import cpu_time_notice, log_summary, resume_hint, summary_line, train_record
from cimexp.run.trainer import build_trainer

log = logging.getLogger("cimexp.train")


def train(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """Train and validate as configured; write checkpoints, the resolved config, git state and results.json.

    A run directory that already holds results from a finished run of the same config is not trained again (a
    re-launched sweep skips its finished jobs; "same": :func:`cimexp.results.reusable_results`, which refuses a
    finished run of another config with :class:`cimexp.results.StaleRunError`), and one with a
    ``checkpoints/last.ckpt`` but unfinished results resumes from it (a killed or requeued job continues). Both
    only when ``ckpt_path`` is unset: an explicit ``ckpt_path`` always trains, e.g. ``hydra.run.dir=<run dir>
    ckpt_path=last trainer.max_epochs=<more>`` continues a finished run.

    Args:
        cfg: a config composed from ``conf/train.yaml``; Hydra's runtime config must be set (it is under
            ``@hydra.main``; tests call ``HydraConfig().set_config``).

    Returns:
        ``(metrics, objects)``: the final logged metrics as floats (``val/acc``, ``val/acc_best``, ``train/loss``,
        ...), and the objects built (``cfg``, ``datamodule``, ``module``, ``trainer``, ``callbacks``, ``loggers``,
        ``results``). For a finished run directory: the stored ``final`` metrics, and ``cfg`` and ``results`` only.
    """
    output_dir = Path(cfg.paths.output_dir)
    with run_lock(output_dir) if rank_zero_only.rank == 0 else contextlib.nullcontext():
        return _train(cfg, output_dir)


def _train(cfg: DictConfig, output_dir: Path) -> tuple[dict[str, float], dict[str, Any]]:
    """:func:`train` inside the run directory's lock."""
    config = resolved_config(cfg)
    files = {"model.init_from": cfg.model.get("init_from")}
    data = data_files(cfg)
    hashed = hashed_config(config, files, data)
    ckpt_path = cfg.ckpt_path
    if ckpt_path is None:
        done = reusable_results(output_dir, "train", config, files, data)
        if done is not None:
            log.info("finished before, not trained again: %s/results.json", output_dir)
            return done["final"], {"cfg": cfg, "results": done}
        ckpt_path = unfinished_checkpoint(output_dir)

    check_training_run(cfg)
    if cfg.seed is not None:
        L.seed_everything(cfg.seed, workers=True)

    ckpt_path = resolve_ckpt_path(ckpt_path, output_dir)
    if ckpt_path is not None:
        # A file whose unpickling would run code is refused here, naming it; a corrupt latest falls back to the one
        # before it. A checkpoint of this run resumes only under the settings that wrote it.
        ckpt_path, checkpoint = readable_checkpoint(ckpt_path)
        if Path(ckpt_path).resolve().parent == (output_dir / "checkpoints").resolve():
            check_resume(output_dir, checkpoint, hashed, files, continued=cfg.ckpt_path is not None)
        log.info("resuming the unfinished run from %s", ckpt_path)
    git = git_state()
    if rank_zero_only.rank == 0:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(config))
        atomic_write_json(output_dir / "git.json", git)

    datamodule = instantiate(cfg.data)
    net = build_net(cfg, datamodule.num_classes)
    set_adc_errors(net, adc_errors(cfg.adc))  # on from the first step: noise-aware training
    module = ImageClassifier.from_config(cfg, net, datamodule.num_classes, config=config, hashed_config=hashed)
    trainer, callbacks, loggers = build_trainer(cfg)

    notice = cpu_time_notice(cfg, datamodule, trainer)
    if notice is not None and trainer.is_global_zero:
        log.warning(notice)
    try:
        for logger in trainer.loggers:  # not `loggers`: fast_dev_run swaps them for a no-op logger
            logger.log_hyperparams(config)
        start = time.perf_counter()
        stopped: SystemExit | None = None
        try:
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        except SystemExit as exit_:  # Ctrl-C (Lightning exits after the KeyboardInterrupt) or SIGTERM
            stopped = exit_
        wall_time_s = time.perf_counter() - start

        metrics = {key: float(value) for key, value in trainer.callback_metrics.items()}
        results = train_record(cfg, config, git, trainer, module, datamodule, metrics, wall_time_s, hashed=hashed)
        if trainer.is_global_zero:
            writer = find_callback(trainer, ResultsWriter)
            atomic_write_json(writer.path if writer else output_dir / "results.json", results)
            log_summary(trainer.loggers, results)
            log.info(summary_line(results))
            if stopped is not None:
                log.warning(resume_hint(output_dir, results))
        if stopped is not None:  # Lightning's SIGTERM exit has no code; a stopped run must not look successful
            raise SystemExit(stopped.code or 1)
    finally:
        finish_wandb(loggers)

    objects = {
        "cfg": cfg,
        "datamodule": datamodule,
        "module": module,
        "trainer": trainer,
        "callbacks": callbacks,
        "loggers": loggers,
        "results": results,
    }
    return metrics, objects


def job(cfg: DictConfig) -> float | None:
    """The Hydra job: train, and return ``cfg.optimized_metric`` for sweepers."""
    use_compile_cache(cfg.paths.get("compile_cache"))
    metrics, _ = train(cfg)
    return metrics.get(cfg.optimized_metric)


main = hydra_entry("train", job, validate_train, prog="cimexp-train")

if __name__ == "__main__":
    main()
