"""What a training run records and says: its ``results.json`` record, the summary in the loggers, the one-line
summary, the hint after a stop, and the notice before a long CPU run."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import lightning as L
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.loggers import Logger, WandbLogger
from omegaconf import DictConfig

from cimexp.cim import VariationLevel, cim_layers, cim_summary
from cimexp.cim.cost import CostModel
from cimexp.results import make_record, run_status
from cimexp.run.build import cim_settings, example_input, find_callback, schedule_summary
from cimexp.run.callbacks import (
    EpochTimer,
    PsumTelemetry,
    QATSchedule,
    RecoveryCheckpoint,
    ResultsWriter,
)
from cimexp.run.classifier import ImageClassifier
from cimexp.run.config import adc_errors
from cimexp.run.provenance import run_name, sweep_group

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


def train_record(
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
        compile=module.compiled_mode,
        cim_summary=cim_summary(model, example_input(datamodule, model), CostModel.from_config(cfg.cost))
        if is_cim
        else None,
        psum_telemetry=telemetry.last if telemetry is not None and telemetry.last else None,
        history=history,
    )


def log_summary(loggers: list[Logger], results: dict[str, Any]) -> dict[str, Any]:
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


def resume_hint(output_dir: Path, results: dict[str, Any]) -> str:
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


def summary_line(results: dict[str, Any]) -> str:
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
