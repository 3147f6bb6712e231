"""Train a (CIM) network: ``cimexp-train [group=option ...] [key=value ...]`` (or ``python -m cimexp.train``).

:func:`main` is the Hydra entry point (:func:`cimexp.cli.hydra_entry`: checks the command line before anything
runs) over :func:`train`, a plain function of a composed config that tests call directly. The configs ship in the
package (:mod:`cimexp.config`), so an installed wheel runs from any directory.
"""

from __future__ import annotations

import contextlib
import logging
import shlex
import time
from pathlib import Path
from typing import Any

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.loggers import Logger, WandbLogger
from omegaconf import DictConfig, OmegaConf

from cimexp.build import build_net, cim_settings, example_input, find_callback, instantiate_all, schedule_summary
from cimexp.callbacks import EpochTimer, PsumTelemetry, QATSchedule, RecoveryCheckpoint, ResultsWriter, RunProgressBar
from cimexp.cim import VariationLevel, cim_layers, cim_summary, set_adc_errors
from cimexp.cim.cost import CostModel
from cimexp.cli import hydra_entry
from cimexp.config import adc_errors, calibration_settings, check_accelerator, validate_train
from cimexp.files import KeepPreviousCheckpointIO, atomic_write_json, readable_checkpoint, run_lock
from cimexp.module import HASHED_CONFIG_KEY, ImageClassifier
from cimexp.results import hashed_config, make_record, refuse_changed_resume, reusable_results, run_status
from cimexp.utils import (
    finish_wandb,
    git_state,
    resolve_ckpt_path,
    resolved_config,
    run_name,
    sweep_group,
    unfinished_checkpoint,
)

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
    data_files = _data_files(cfg)
    hashed = hashed_config(config, files, data_files)
    ckpt_path = cfg.ckpt_path
    if ckpt_path is None:
        done = reusable_results(output_dir, "train", config, files, data_files)
        if done is not None:
            log.info("finished before, not trained again: %s/results.json", output_dir)
            return done["final"], {"cfg": cfg, "results": done}
        ckpt_path = unfinished_checkpoint(output_dir)

    validate_train(cfg)
    check_accelerator(cfg.trainer)
    if cfg.seed is not None:
        L.seed_everything(cfg.seed, workers=True)

    ckpt_path = resolve_ckpt_path(ckpt_path, output_dir)
    if ckpt_path is not None:
        # A file whose unpickling would run code is refused here, naming it; a corrupt latest falls back to the one
        # before it. A checkpoint of this run resumes only under the settings that wrote it.
        ckpt_path, checkpoint = readable_checkpoint(ckpt_path)
        if Path(ckpt_path).resolve().parent == (output_dir / "checkpoints").resolve():
            _check_resume(output_dir, checkpoint, hashed, files, continued=cfg.ckpt_path is not None)
        log.info("resuming the unfinished run from %s", ckpt_path)
    git = git_state()
    if rank_zero_only.rank == 0:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(config))
        atomic_write_json(output_dir / "git.json", git)

    datamodule = instantiate(cfg.data)
    net = build_net(cfg, datamodule.num_classes)
    set_adc_errors(net, adc_errors(cfg.adc))  # on from the first step: noise-aware training
    module = ImageClassifier(
        net,
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        num_classes=datamodule.num_classes,
        label_smoothing=cfg.loss.label_smoothing,
        no_weight_decay=cfg.no_weight_decay,
        **calibration_settings(cfg.calibration),
        config=config,
        compile_mode=cfg.model.compile_mode if cfg.model.get("compile") else None,
        hashed_config=hashed,
    )
    callbacks = [*instantiate_all(cfg.get("callbacks")), instantiate(cfg.schedule)]
    if cfg.trainer.get("enable_progress_bar", True):
        callbacks.append(RunProgressBar())
    loggers: list[Logger] = instantiate_all(cfg.get("logger"))
    plugins = [*(instantiate(cfg.trainer.get("plugins")) or []), KeepPreviousCheckpointIO()]
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=plugins)

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
        results = _results(cfg, config, git, trainer, module, datamodule, metrics, wall_time_s, hashed=hashed)
        if trainer.is_global_zero:
            writer = find_callback(trainer, ResultsWriter)
            atomic_write_json(writer.path if writer else output_dir / "results.json", results)
            _log_summary(trainer.loggers, results)
            log.info(_summary_line(results))
            if stopped is not None:
                log.warning(_resume_hint(output_dir, results))
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


REFERENCE_CPU_STEP_S = 0.93
"""Seconds of one column/column ResNet-20 training step at batch 128 on the project's 2-core CPU (AMD EPYC, torch
2.14; experiments/results/bench/cpu_2core.md): the pace :func:`cpu_time_notice` estimates a CPU run with."""
LONG_CPU_RUN_STEPS = 20_000
"""A CPU run of more optimizer steps than this (about 5 h at the reference pace) is announced with its estimate."""


def cpu_time_notice(cfg: DictConfig, datamodule: L.LightningDataModule, trainer: L.Trainer) -> str | None:
    """One line for a long run on a CPU (the paper's 200-epoch recipe): its steps, the time they take at the
    reference pace, and the faster alternatives; ``None`` for a GPU run or a short one. The run starts anyway."""
    if trainer.strategy.root_device.type != "cpu":
        return None
    train_size = datamodule.train_subset or datamodule.split_sizes[0]
    if train_size is None:
        return None
    epochs = cfg.trainer.get("max_epochs")
    steps = -(-train_size // datamodule.batch_size) * epochs if epochs and epochs > 0 else None
    max_steps = cfg.trainer.get("max_steps")
    if max_steps is not None and max_steps > 0:
        steps = max_steps if steps is None else min(steps, max_steps)
    if steps is None or steps <= LONG_CPU_RUN_STEPS:
        return None
    hours = steps * REFERENCE_CPU_STEP_S * (datamodule.batch_size / 128) / 3600
    return (
        f"this run is {steps:,} training steps on the CPU: about {hours:.0f} h at the {REFERENCE_CPU_STEP_S} s a "
        "step of a 2-core CPU (the progress bar's run_eta gives this machine's pace); faster: experiment=quick "
        "(a 100-step fine-tune, minutes), experiment=medium (one full-data epoch), or trainer=gpu on a GPU"
    )


CONTINUATION_KEYS = ("trainer.max_epochs", "trainer.max_steps")
"""What an explicit ``ckpt_path=last`` may change when it continues a run of this directory: its length."""


def _check_resume(
    output_dir: Path, checkpoint: dict[str, Any], hashed: dict[str, Any], files: dict[str, Any], continued: bool
) -> None:
    """Refuse to resume a checkpoint of this run directory under other settings than the ones that wrote it
    (:func:`cimexp.results.refuse_changed_resume`); ``continued`` (an explicit ``ckpt_path``) may lengthen the
    run (:data:`CONTINUATION_KEYS`). A checkpoint written before checkpoints held their hashed config is compared by
    its resolved config (its files by path)."""
    old = checkpoint.get(HASHED_CONFIG_KEY)
    if old is None:
        stored = (checkpoint.get("hyper_parameters") or {}).get("config")
        if not isinstance(stored, dict):
            return  # not a checkpoint of cimexp's: nothing to compare with
        old = hashed_config(stored, {key: file for key, file in files.items() if key in hashed})
    new = dict(hashed)
    if continued:
        old = {key: value for key, value in old.items() if key not in CONTINUATION_KEYS}
        new = {key: value for key, value in new.items() if key not in CONTINUATION_KEYS}
    refuse_changed_resume(output_dir, old, new)


def _data_files(cfg: DictConfig) -> list[Path]:
    """The data set's files (``ImageDataModule.data_files``), identified by content in results.json; ``[]`` when
    the data settings cannot build a module (validation reports that) or name no files."""
    try:
        return instantiate(cfg.data, _partial_=True)().data_files()
    except (ValueError, TypeError):
        return []


def _results(
    cfg: DictConfig,
    config: dict[str, Any],
    git: dict[str, Any],
    trainer: L.Trainer,
    module: ImageClassifier,
    datamodule: L.LightningDataModule,
    metrics: dict[str, float],
    wall_time_s: float,
    *,
    hashed: dict[str, Any],
) -> dict[str, Any]:
    """The content of results.json (a ``train`` record of :mod:`cimexp.results`; ``hashed``: the run's
    :func:`cimexp.results.hashed_config`)."""
    hydra_cfg = HydraConfig.get() if HydraConfig.initialized() else None
    choices = {k: v for k, v in (hydra_cfg.runtime.choices if hydra_cfg else {}).items() if "hydra" not in k}
    timer = find_callback(trainer, EpochTimer)
    schedule = find_callback(trainer, QATSchedule)
    checkpoint = next((cb for cb in trainer.checkpoint_callbacks if getattr(cb, "monitor", None)), None)
    writer = find_callback(trainer, ResultsWriter)
    telemetry = find_callback(trainer, PsumTelemetry)
    history = writer.history if writer is not None else []
    best = max(history, key=lambda r: r.get("val/acc", float("-inf")), default=None)
    model = module.model
    is_cim = any(True for _ in cim_layers(model))
    return make_record(
        "train",
        run_status(trainer.interrupted, metrics),
        hashed,
        run_name=run_name(),
        sweep_group=sweep_group(),
        run_dir=str(Path(cfg.paths.output_dir).resolve()),
        overrides=list(hydra_cfg.overrides.task) if hydra_cfg else [],
        choices=choices,
        git=git,
        model=choices.get("model", config["model"]["_target_"]),
        data=choices.get("data", config["data"]["_target_"]),
        cim=cim_settings(config, model),
        schedule=schedule_summary(schedule),
        adc_errors=adc_errors(cfg.adc).to_dict(),
        variation={
            "train_sigma": float(cfg.variation.train_sigma),
            "level": VariationLevel.parse(cfg.variation.level).value,
        },
        seed=cfg.seed,
        epochs=trainer.current_epoch,
        global_step=trainer.global_step,
        wall_time_s=wall_time_s,
        train_time_s=timer.train_cum_s if timer is not None else None,
        final=metrics,
        best={
            "val/acc": module.val_acc_best,
            "epoch": best["epoch"] if best else None,
            "cum_train_time_s": best.get("cum_train_time_s") if best else None,
        },
        checkpoints={
            "best": (checkpoint.best_model_path or None) if checkpoint else None,
            "last": _last_checkpoint(find_callback(trainer, RecoveryCheckpoint), Path(cfg.paths.output_dir)),
        },
        cim_summary=cim_summary(model, example_input(datamodule, model), CostModel.from_config(cfg.cost))
        if is_cim
        else None,
        psum_telemetry=telemetry.last if telemetry is not None and telemetry.last else None,
        history=history,
    )


def _log_summary(loggers: list[Logger], results: dict[str, Any]) -> dict[str, Any]:
    """Put the final/best metrics, times and CIM cost totals into the W&B run summary, and the cost totals
    (``cim/adc_energy_pj``, ...) into every logger; returns the summary."""
    summary = {f"final/{k}": v for k, v in results["final"].items()}
    summary.update({f"best/{k}": v for k, v in results["best"].items() if v is not None})
    summary.update({k: results[k] for k in ("epochs", "wall_time_s", "train_time_s") if results[k] is not None})
    if results["cim_summary"] is not None:
        totals = {f"cim/{k}": v for k, v in results["cim_summary"]["total"].items()}
        summary.update(totals)
        numeric = {k: v for k, v in totals.items() if isinstance(v, int | float)}
        for logger in loggers:
            logger.log_metrics(numeric, step=results["global_step"])
            logger.save()
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.experiment.summary.update(summary)
    return summary


def _last_checkpoint(recovery: RecoveryCheckpoint | None, output_dir: Path) -> str | None:
    """The resume checkpoint on disk, ``checkpoints/last.ckpt``: written at every epoch's end
    (``callbacks.last_checkpoint``), inside long epochs and when the run was stopped
    (:class:`RecoveryCheckpoint`)."""
    path = recovery.path if recovery is not None else output_dir / "checkpoints" / "last.ckpt"
    return str(path) if Path(path).is_file() else None


def _resume_hint(output_dir: Path, results: dict[str, Any]) -> str:
    """What a stopped run prints: where it stopped and the command that resumes it."""
    overrides = [o for o in results["overrides"] if not o.startswith(("hydra.run.dir=", "ckpt_path="))]
    # The run directory holds '=' and ',': Hydra needs it quoted, inside the shell's quotes.
    command = " ".join(["python -m cimexp.train", *map(shlex.quote, overrides), f"\"hydra.run.dir='{output_dir}'\""])
    last = results["checkpoints"]["last"]
    if last is not None:
        start = f"it resumes from its checkpoint {last}"
    else:
        start = "it has no checkpoint yet (stopped before its first batch ended), so this starts it again"
    return (
        f"stopped at step {results['global_step']} (in epoch {results['epochs']}); results.json says "
        f'"interrupted". Launched again into the same directory, {start}:\n  {command}'
    )


def _summary_line(results: dict[str, Any]) -> str:
    cim = results["cim"]
    if cim is None:
        setting = "float"
    else:
        setting = (
            f"W{cim['w_bits']}A{cim['a_bits']} cell{cim['cell_bits']} adc{cim['adc_bits']} "
            f"array{cim['array_size']} w:{cim['weight_granularity']}/p:{cim['psum_granularity']}"
            f"{'' if cim['psum_quant'] else ' (no psum quant)'} {results['schedule']['name']}"
        )
    final_acc = results["final"].get("val/acc")
    train_time = results["train_time_s"]
    if results["status"] == "interrupted":  # stopped inside an epoch: no validation yet, the epoch timer at 0
        return (
            f"{results['model']}/{results['data']} {setting} | stopped after {results['global_step']} steps, in "
            f"epoch {results['epochs'] + 1}, {results['wall_time_s']:.1f} s | {results['run_dir']}/results.json"
        )
    return (
        f"{results['model']}/{results['data']} {setting} | epochs {results['epochs']} | "
        f"val/acc {_pct(final_acc)} best {_pct(results['best']['val/acc'])} | "
        f"train {train_time if train_time is None else round(train_time, 1)} s, "
        f"wall {results['wall_time_s']:.1f} s | {results['run_dir']}/results.json"
    )


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def job(cfg: DictConfig) -> float | None:
    """The Hydra job: train, and return ``cfg.optimized_metric`` for sweepers."""
    metrics, _ = train(cfg)
    return metrics.get(cfg.optimized_metric)


main = hydra_entry("train", job, validate_train, prog="cimexp-train")

if __name__ == "__main__":
    main()
